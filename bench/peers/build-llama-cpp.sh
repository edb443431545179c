#!/usr/bin/env bash
# Builds the llama.cpp peer used for reference outputs and side-by-side benchmarks: the
# llama.cpp source shipped in the llama-cpp-python source package (pinned below), CPU only,
# -march=native without AMX (the pinned ggml's AMX kernels crash, invalid-opcode and
# protection traps, on a Xeon VM whose AMX runs a small test program; weft has none either).
# Prints the folder holding llama-server, llama-perplexity, llama-tokenize, llama-completion,
# llama-bench, llama-mtmd-cli (images) and llama-quantize on its last line. First build: ~15
# minutes on 2 cores; a checkout that lacks some of these programs only builds those.
# Usage: bench/peers/build-llama-cpp.sh [DEST]   (default ~/.cache/weft-peers/llama.cpp-$VERSION)
set -euo pipefail
VERSION=0.3.36
dest=${1:-$HOME/.cache/weft-peers/llama.cpp-$VERSION}
targets="llama-bench llama-server llama-perplexity llama-tokenize llama-completion llama-mtmd-cli llama-quantize"
missing=""
for t in $targets; do [ -x "$dest/build/bin/$t" ] || missing="$missing $t"; done
if [ -z "$missing" ]; then echo "$dest/build/bin"; exit 0; fi
command -v cmake >/dev/null || python3 -m pip install -q cmake
if [ -f "$dest/build/CMakeCache.txt" ]; then
  cmake --build "$dest/build" -j"$(nproc)" --target $missing >"$dest/build.log" 2>&1 \
    || { tail -n 30 "$dest/build.log" >&2; exit 1; }
  echo "$dest/build/bin"
  exit 0
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
python3 -m pip download -q --no-deps --no-binary llama-cpp-python -d "$tmp" "llama-cpp-python==$VERSION"
tar -xzf "$tmp/llama_cpp_python-$VERSION.tar.gz" -C "$tmp"
mkdir -p "$(dirname "$dest")"
rm -rf "$dest"
mv "$tmp/llama_cpp_python-$VERSION/vendor/llama.cpp" "$dest"
cd "$dest"
no_amx="-mno-amx-tile -mno-amx-int8 -mno-amx-bf16"
cmake -B build -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=ON -DGGML_CUDA=OFF -DLLAMA_OPENSSL=OFF \
  -DCMAKE_C_FLAGS="$no_amx" -DCMAKE_CXX_FLAGS="$no_amx" \
  -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF >build-configure.log 2>&1 \
  || { tail -n 30 build-configure.log >&2; exit 1; }
cmake --build build -j"$(nproc)" --target $targets >build.log 2>&1 \
  || { tail -n 30 build.log >&2; exit 1; }
echo "$dest/build/bin"
