#!/usr/bin/env python3
"""What llama.cpp's llama-mtmd-cli replies, greedily, on the tiny Gemma 3 GGUF + mmproj files
(tests/data/hf-tiny-gemma3-vl-gguf, made by scripts/gen_tiny_vl_gguf.py), for weft's test to
compare with.

llama.cpp lays an image out differently from transformers' Gemma3Processor: no BOS (the file
says add_bos false and its template output loses the template's own), and no blank lines
around the image (`<start_of_image>`, the image's tokens, `<end_of_image>` straight after the
text). So the golden records that layout as text, the number of prompt tokens llama.cpp
evaluated (read from its log) and the bytes it printed; weft's test builds the same layout,
checks the token count and compares the greedy bytes.

Development time only (needs the llama.cpp peer that bench/peers/build-llama-cpp.sh builds):
    python3 scripts/gen_mtmd_golden.py
Writes tests/data/hf-tiny-gemma3-vl-gguf/llama_mtmd.json.
"""

import json
import os
import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FILES = ROOT / "tests/data/hf-tiny-gemma3-vl-gguf"
IMAGE = "tests/data/hf-tiny-vl/images/small_56x56.png"
PROMPT = "Describe the image."
TOKENS = 16
# What llama-mtmd-cli evaluates (its log's add_text / add_media lines), {image} standing for
# the image's tokens.
LAYOUT = (
    "<start_of_turn>user\n<start_of_image>{image}<end_of_image>"
    + PROMPT
    + "<end_of_turn>\n<start_of_turn>model\n"
)


def main() -> None:
    peers = Path(os.environ.get("LLAMA_CPP_DIR", Path.home() / ".cache/weft-peers/llama.cpp-0.3.36"))
    cli = peers / "build/bin/llama-mtmd-cli"
    run = subprocess.run(
        [
            str(cli),
            "-m", str(FILES / "model-f32.gguf"),
            "--mmproj", str(FILES / "mmproj-f32.gguf"),
            "--image", str(ROOT / IMAGE),
            "-p", PROMPT,
            "--temp", "0",
            "-n", str(TOKENS),
            "-t", "2",
            "-v",
        ],
        capture_output=True,
        check=True,
    )
    log = run.stderr.decode("utf-8", "replace")
    texts = re.findall(r"add_text: (.*?)(?=\n\S*\d+\.\d+\.\d+ [A-Z] )", log, re.S)
    expected = ["<start_of_turn>user\n", "<start_of_image>", "<end_of_image>",
                PROMPT + "<end_of_turn>\n<start_of_turn>model\n"]
    if [t.rstrip("\n") for t in texts] != [t.rstrip("\n") for t in expected]:
        raise SystemExit(f"llama-mtmd-cli laid the prompt out as {texts!r}, not as LAYOUT says")
    prompt_tokens = int(re.search(r"prompt eval time = .*?/\s*(\d+) tokens", log).group(1))
    generated = int(re.search(r"\beval time = .*?/\s*(\d+) runs", log).group(1)) + 1
    out = run.stdout
    if generated != TOKENS:
        raise SystemExit(f"llama-mtmd-cli generated {generated} tokens, not {TOKENS}")
    golden = {
        "generator": "scripts/gen_mtmd_golden.py",
        "llama_cpp": peers.name,
        "image": IMAGE,
        "layout": LAYOUT,
        "prompt_tokens": prompt_tokens,
        "max_tokens": TOKENS,
        # Everything it printed: a newline, the reply, newlines (so a reply's own trailing
        # newlines cannot be told from the CLI's).
        "stdout_bytes": list(out),
    }
    (FILES / "llama_mtmd.json").write_text(json.dumps(golden, indent=1) + "\n")
    print(f"{prompt_tokens} prompt tokens, printed {out!r}")


if __name__ == "__main__":
    main()
