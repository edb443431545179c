#!/usr/bin/env bash
# Runs test_openai.py with the official `openai` package, installed into a virtual
# environment under target/ (created on first use). Needs target/release/weft and
# $WEFT_TEST_MODELS (both set up by scripts/test.sh); the server also holds whisper-base
# (--audio-model) so that the transcription route is checked too.
set -euo pipefail
cd "$(dirname "$0")/../.."
venv=target/openai-venv
python="$venv/bin/python"
if ! "$python" -c "import openai" 2>/dev/null; then
  if python3 -m venv "$venv" 2>/dev/null; then
    "$python" -m pip install --quiet "openai>=1.40"
  else
    # No venv module (Debian without python3-venv): install for the user instead.
    python="python3"
    python3 -m pip install --quiet --user "openai>=1.40" ||
      python3 -m pip install --quiet --user --break-system-packages "openai>=1.40"
  fi
fi
"$python" tests/openai_client/test_openai.py target/release/weft \
  "$WEFT_TEST_MODELS/SmolLM2-135M-Instruct.Q4_1.gguf" "$WEFT_TEST_MODELS/whisper-base"
