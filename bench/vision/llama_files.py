"""The files llama.cpp users run, made from a Hugging Face directory by llama.cpp's own tools:
the language model as GGUF (convert_hf_to_gguf.py to an intermediate type, llama-quantize to
Q4_K_M) and the towers as an f16 mmproj (convert_hf_to_gguf.py --mmproj). Shared by the
make_*.py scripts here; each output that exists already is kept."""

import subprocess
import sys
from pathlib import Path


def convert_and_quantize(hf: Path, out: Path, llama: Path, intermediate: str = "f16",
                         keep_intermediate: bool = True) -> None:
    """Writes out/model-Q4_K_M.gguf (through out/model-{intermediate}.gguf, removed unless
    `keep_intermediate`) and out/mmproj-f16.gguf from `hf` with the checkout `llama`."""
    sys.path[:0] = [str(llama), str(llama / "gguf-py")]
    import convert_hf_to_gguf
    from conversion import base
    # The tiny test tokenizers are Qwen2's pre-tokenizer over their own vocabulary (see
    # scripts/gen_tiny_vl_gguf.py).
    base.TextModel.get_vocab_base_pre = lambda self, tokenizer: "qwen2"
    q4 = out / "model-Q4_K_M.gguf"
    first = out / f"model-{intermediate.upper() if intermediate != 'f16' else 'f16'}.gguf"
    for extra, outtype, target in [([], intermediate, first), (["--mmproj"], "f16", out / "mmproj-f16.gguf")]:
        if target.exists() or (target == first and q4.exists()):
            continue
        sys.argv = ["convert_hf_to_gguf.py", str(hf), "--outtype", outtype, "--outfile", str(target), *extra]
        convert_hf_to_gguf.main()
    if not q4.exists():
        requantize = ["--allow-requantize"] if intermediate != "f16" else []
        subprocess.run([str(llama / "build/bin/llama-quantize"), *requantize, str(first), str(q4),
                        "Q4_K_M", "2"], check=True)
    if not keep_intermediate:
        first.unlink(missing_ok=True)
