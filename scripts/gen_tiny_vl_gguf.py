#!/usr/bin/env python3
"""Converts the tiny random Qwen2.5-VL checkpoint of tests/data/hf-tiny-vl into the two files
llama.cpp users have: the language model as GGUF and the vision tower as an mmproj GGUF,
written by llama.cpp's own converter (convert_hf_to_gguf.py, with and without --mmproj) from
the pinned llama.cpp checkout that bench/peers/build-llama-cpp.sh makes. Both in f32, so that
weft on them must compute what it computes on the Hugging Face directory.

Development time only (needs torch, transformers, numpy, sentencepiece and the llama.cpp
checkout); `cargo test` reads the committed outputs in tests/data/hf-tiny-vl-gguf/.

    LLAMA_CPP_DIR=~/.cache/weft-peers/llama.cpp-0.3.36 python3 scripts/gen_tiny_vl_gguf.py

One adaptation: the converter recognizes a BPE tokenizer by hashing how it tokenizes a fixed
text, and the tiny checkpoint's tokenizer (Qwen2's pre-tokenizer over a 411-token vocabulary
trained for the test) has no entry in its table; it is told the pre-tokenizer is "qwen2",
which is what the tokenizer's own pre-tokenizer is.
"""

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SOURCE = ROOT / "tests/data/hf-tiny-vl"
OUT = ROOT / "tests/data/hf-tiny-vl-gguf"


def main() -> None:
    llama = Path(
        os.environ.get("LLAMA_CPP_DIR", Path.home() / ".cache/weft-peers/llama.cpp-0.3.36")
    )
    sys.path[:0] = [str(llama), str(llama / "gguf-py")]
    import convert_hf_to_gguf  # noqa: E402  (from the llama.cpp checkout)
    from conversion import base  # noqa: E402

    base.TextModel.get_vocab_base_pre = lambda self, tokenizer: "qwen2"
    OUT.mkdir(exist_ok=True)
    for extra, name in [([], "model-f32.gguf"), (["--mmproj"], "mmproj-f32.gguf")]:
        sys.argv = [
            "convert_hf_to_gguf.py",
            str(SOURCE),
            "--outtype",
            "f32",
            "--outfile",
            str(OUT / name),
            *extra,
        ]
        convert_hf_to_gguf.main()
    # The converter names an mmproj file itself when --outfile is a directory only; make
    # sure both landed where the tests look.
    for name in ["model-f32.gguf", "mmproj-f32.gguf"]:
        assert (OUT / name).is_file(), name


if __name__ == "__main__":
    main()
