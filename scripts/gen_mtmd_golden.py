#!/usr/bin/env python3
"""What llama.cpp's llama-mtmd-cli replies, greedily, on the tiny GGUF + mmproj files that
scripts/gen_tiny_vl_gguf.py converts (tests/data/hf-tiny-gemma3-vl-gguf,
tests/data/hf-tiny-vl-gguf), for weft's tests to compare with.

llama.cpp lays an image out its own way: no BOS and no blank lines around a Gemma 3 image,
no default system prompt for Qwen2.5-VL, and its own resizing (it gives the 56x56 test image
3x3 Qwen tokens where transformers gives 2x2; the 252x196 image needs no resizing in either).
So each golden records that layout as text (`{image}` where the image's tokens go), the
number of prompt tokens llama.cpp evaluated (from its log) and the bytes it printed; weft's
tests build the same layout, check the token count and compare the greedy bytes.

Development time only (needs the llama.cpp peer that bench/peers/build-llama-cpp.sh builds):
    python3 scripts/gen_mtmd_golden.py
Writes llama_mtmd.json into both directories.
"""

import json
import os
import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROMPT = "Describe the image."
TOKENS = 16
# Per file pair: its directory, the image, and what llama-mtmd-cli evaluates (its log's
# add_text lines, between which the image goes).
MODELS = [
    (
        "tests/data/hf-tiny-gemma3-vl-gguf",
        "tests/data/hf-tiny-vl/images/small_56x56.png",
        ["<start_of_turn>user\n<start_of_image>", "<end_of_image>" + PROMPT
         + "<end_of_turn>\n<start_of_turn>model\n"],
    ),
    (
        "tests/data/hf-tiny-vl-gguf",
        "tests/data/hf-tiny-vl/images/large_252x196.png",
        ["<|im_start|>user\n<|vision_start|>", "<|vision_end|>" + PROMPT
         + "<|im_end|>\n<|im_start|>assistant\n"],
    ),
]


def run(cli: Path, files: Path, image: str, verbose: bool) -> subprocess.CompletedProcess:
    args = [
        str(cli),
        "-m", str(files / "model-f32.gguf"),
        "--mmproj", str(files / "mmproj-f32.gguf"),
        "--image", str(ROOT / image),
        "-p", PROMPT,
        "--temp", "0",
        "-n", str(TOKENS),
        "-t", "2",
    ]
    return subprocess.run(args + ["-v"] * verbose, capture_output=True, check=True)


def main() -> None:
    peers = Path(os.environ.get("LLAMA_CPP_DIR", Path.home() / ".cache/weft-peers/llama.cpp-0.3.36"))
    cli = peers / "build/bin/llama-mtmd-cli"
    for directory, image, (before, after) in MODELS:
        files = ROOT / directory
        # The log (-v) says how the prompt was laid out and evaluated; the reply is taken
        # from runs without it. Its stdout sometimes ends early (the process exits before
        # all of it is written): the longest of a few runs is kept, the others must be its
        # prefixes.
        # Now and then (rc 0) it stops right after decoding the image: such a run is retried.
        for _ in range(5):
            log = run(cli, files, image, True).stderr.decode("utf-8", "replace")
            if "prompt eval time" in log:
                break
        else:
            raise SystemExit(f"{directory}: llama-mtmd-cli never finished generating")
        texts = "".join(re.findall(r"add_text: (.*?)(?=\n\S*\d+\.\d+\.\d+ [A-Z] )", log, re.S))
        if texts.replace("\n", "") != (before + after).replace("\n", ""):
            raise SystemExit(f"{directory}: llama-mtmd-cli laid the prompt out as {texts!r}")
        prompt_tokens = int(re.search(r"prompt eval time = .*?/\s*(\d+) tokens", log).group(1))
        generated = int(re.search(r"\beval time = .*?/\s*(\d+) runs", log).group(1)) + 1
        if generated != TOKENS:
            raise SystemExit(f"{directory}: llama-mtmd-cli generated {generated} tokens")
        outs = [run(cli, files, image, False).stdout for _ in range(4)]
        out = max(outs, key=len)
        if not all(out.startswith(o) for o in outs):
            raise SystemExit(f"{directory}: llama-mtmd-cli printed different replies {outs!r}")
        golden = {
            "generator": "scripts/gen_mtmd_golden.py",
            "llama_cpp": peers.name,
            "image": image,
            "layout": before + "{image}" + after,
            "prompt_tokens": prompt_tokens,
            "max_tokens": TOKENS,
            # Everything it printed: a newline, the reply, newlines (so a reply's own
            # trailing newlines cannot be told from the CLI's).
            "stdout_bytes": list(out),
        }
        (files / "llama_mtmd.json").write_text(json.dumps(golden, indent=1) + "\n")
        print(f"{directory}: {prompt_tokens} prompt tokens, printed {out!r}")


if __name__ == "__main__":
    main()
