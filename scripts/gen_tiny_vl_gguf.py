#!/usr/bin/env python3
"""Converts the tiny random vision-language checkpoints into the two files llama.cpp users
have: the language model as GGUF and the vision tower as an mmproj GGUF, written by
llama.cpp's own converter (convert_hf_to_gguf.py, with and without --mmproj) from the pinned
llama.cpp checkout that bench/peers/build-llama-cpp.sh makes. Both in f32, so that weft on
them must compute what it computes on the Hugging Face directory.

    tests/data/hf-tiny-vl         (Qwen2.5-VL)   -> tests/data/hf-tiny-vl-gguf/
    tests/data/hf-tiny-gemma3-vl  (Gemma 3)      -> tests/data/hf-tiny-gemma3-vl-gguf/
    tests/data/hf-tiny-omni       (Qwen2.5-Omni) -> tests/data/hf-tiny-omni-gguf/
each as model-f32.gguf + mmproj-f32.gguf (Omni's mmproj holds both towers).

Development time only (needs torch, transformers, numpy, sentencepiece and the llama.cpp
checkout); `cargo test` reads the committed outputs.

    LLAMA_CPP_DIR=~/.cache/weft-peers/llama.cpp-0.3.36 python3 scripts/gen_tiny_vl_gguf.py

Adaptations, all made here at run time (the llama.cpp checkout is not modified):

- Both: the converter recognizes a BPE tokenizer by hashing how it tokenizes a fixed text,
  and the tiny checkpoints' tokenizer (gen_hf_tiny.py's: Qwen2's pre-tokenizer over a few
  hundred tokens trained for the test) has no entry in its table; it is told the
  pre-tokenizer is "qwen2", which is what the tokenizer's own pre-tokenizer is. (The Gemma 3
  converter takes this byte-level BPE path, tokenizer.ggml.model "gpt2", by itself because
  the directory has no SentencePiece tokenizer.model.)
- Qwen2.5-Omni: the converter knows the released checkpoints' architecture name,
  Qwen2_5OmniModel; transformers' save_pretrained writes the class name
  (Qwen2_5OmniForConditionalGeneration). The conversion reads a copy of the directory whose
  config.json names the released one.
- Gemma 3 only, two more, neither of which changes the Qwen conversion:
  * Layer types. llama.cpp's Gemma 3 loader assumes every 6th layer is a full-attention one
    unless the GGUF says otherwise, and the converter does not say; the tiny model alternates
    (sliding, full, sliding, full), so gemma3.attention.sliding_window_pattern is written as
    the per-layer array (true = sliding) from config.json's layer_types.
  * The projector matrix. The converter forces mm.input_projection.weight to F16 whatever
    --outtype says (llama.cpp issue 13025); here it stays F32 like every other tensor, so the
    mmproj file holds exactly the checkpoint's values. Real Gemma 3 mmproj files have it in
    F16.
"""

import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CONVERSIONS = [
    # (source directory, output directory)
    (ROOT / "tests/data/hf-tiny-vl", ROOT / "tests/data/hf-tiny-vl-gguf"),
    (ROOT / "tests/data/hf-tiny-gemma3-vl", ROOT / "tests/data/hf-tiny-gemma3-vl-gguf"),
    (ROOT / "tests/data/hf-tiny-omni", ROOT / "tests/data/hf-tiny-omni-gguf"),
]


def released_layout(source: Path, scratch: Path) -> Path:
    """`source`, or for Qwen2.5-Omni a copy (links) whose config.json names the released
    architecture."""
    config = json.loads((source / "config.json").read_text())
    if config["architectures"][0] != "Qwen2_5OmniForConditionalGeneration":
        return source
    copy = scratch / source.name
    copy.mkdir()
    for f in source.iterdir():
        if f.is_file() and f.name != "config.json":
            (copy / f.name).symlink_to(f)
    config["architectures"] = ["Qwen2_5OmniModel"]
    (copy / "config.json").write_text(json.dumps(config, indent=2))
    return copy


def adapt_gemma3(gguf, gemma) -> None:
    """The Gemma 3 adaptations described in the module docstring."""
    vision = gemma.Gemma3VisionModel
    force_quant = vision.tensor_force_quant

    def tensor_force_quant(self, name, new_name, bid, n_dims):
        if "input_projection" in name and self.ftype == gguf.LlamaFileType.ALL_F32:
            return gguf.GGMLQuantizationType.F32
        return force_quant(self, name, new_name, bid, n_dims)

    vision.tensor_force_quant = tensor_force_quant

    text = gemma.Gemma3Model
    set_gguf_parameters = text.set_gguf_parameters

    def set_text_gguf_parameters(self):
        set_gguf_parameters(self)
        layer_types = self.hparams.get("layer_types")
        if layer_types is not None and self.hparams.get("sliding_window"):
            self.gguf_writer.add_sliding_window_pattern(
                [t == "sliding_attention" for t in layer_types])

    text.set_gguf_parameters = set_text_gguf_parameters


def main() -> None:
    llama = Path(
        os.environ.get("LLAMA_CPP_DIR", Path.home() / ".cache/weft-peers/llama.cpp-0.3.36")
    )
    sys.path[:0] = [str(llama), str(llama / "gguf-py")]
    import convert_hf_to_gguf  # noqa: E402  (from the llama.cpp checkout)
    import gguf  # noqa: E402
    from conversion import base, gemma  # noqa: E402

    base.TextModel.get_vocab_base_pre = lambda self, tokenizer: "qwen2"
    adapt_gemma3(gguf, gemma)
    scratch = Path(tempfile.mkdtemp())
    for source, out in CONVERSIONS:
        source = released_layout(source, scratch)
        arch = json.loads((source / "config.json").read_text())["architectures"][0]
        assert arch in ("Qwen2_5_VLForConditionalGeneration", "Gemma3ForConditionalGeneration",
                        "Qwen2_5OmniModel"), arch
        out.mkdir(exist_ok=True)
        for extra, name in [([], "model-f32.gguf"), (["--mmproj"], "mmproj-f32.gguf")]:
            sys.argv = [
                "convert_hf_to_gguf.py",
                str(source),
                "--outtype",
                "f32",
                "--outfile",
                str(out / name),
                *extra,
            ]
            convert_hf_to_gguf.main()
        # The converter names an mmproj file itself when --outfile is a directory only; make
        # sure both landed where the tests look.
        for name in ["model-f32.gguf", "mmproj-f32.gguf"]:
            assert (out / name).is_file(), out / name
    shutil.rmtree(scratch)


if __name__ == "__main__":
    main()
