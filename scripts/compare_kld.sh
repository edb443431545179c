#!/usr/bin/env bash
# KL divergence between weft's and llama.cpp's next-token distributions on the same GGUF and
# text (ctx 512, llama-perplexity's method), one model after the other: llama-perplexity saves
# its log-probabilities (--kl-divergence-base), then weft scores the same tokens and compares
# (--kl-divergence); then the reverse, weft's base read by llama-perplexity. Prints mean KLD
# and "same top p" (positions where both rank the same token first) for each direction.
# Base files are large (n_vocab x 2 bytes per scored token: about 2 GB for Gemma 3 on the
# default text); they live in a temporary folder removed at exit ($TMPDIR, default /tmp).
# Usage: scripts/compare_kld.sh [TEXT]   (default tests/data/gpl-3.0.txt)
# Needs the llama.cpp peer (bench/peers/build-llama-cpp.sh builds it) and the packaged models.
set -euo pipefail
cd "$(dirname "$0")/.."
text=${1:-tests/data/gpl-3.0.txt}
bin=$(bench/peers/build-llama-cpp.sh | tail -n 1)
cargo build --release -q -p weft
tmp=$(mktemp -d "${TMPDIR:-/tmp}/weft-kld.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
summary() { # LOG: "mean KLD ± err, same top p ± err %"
  kld=$(grep '^Mean    KLD:' "$1" | sed 's/^Mean    KLD: *//')
  top=$(grep '^Same top p:' "$1" | sed 's/^Same top p: *//')
  echo "KLD $kld, same top p $top" | tr -s ' '
}
for model in smollm2-135m gemma3-270m qwen2.5-coder-0.5b; do
  path=$(./target/release/weft pull "$model")
  "$bin/llama-perplexity" -m "$path" -f "$text" -c 512 -t 2 --kl-divergence-base "$tmp/base" \
    >"$tmp/llama-writes.log" 2>&1
  ./target/release/weft perplexity "$path" "$text" -t 2 --kl-divergence-base "$tmp/base" \
    --kl-divergence >"$tmp/weft-reads.log" 2>"$tmp/weft-reads.err"
  grep -h warning "$tmp/weft-reads.err" >&2 || true
  echo "$model: weft vs llama.cpp's base: $(summary "$tmp/weft-reads.log")"
  ./target/release/weft perplexity "$path" "$text" -c 512 -t 2 --kl-divergence-base "$tmp/base" \
    >/dev/null 2>&1
  "$bin/llama-perplexity" -m "$path" -c 512 -t 2 --kl-divergence-base "$tmp/base" \
    --kl-divergence >"$tmp/llama-reads.log" 2>&1
  echo "$model: llama.cpp vs weft's base: $(summary "$tmp/llama-reads.log")"
done
