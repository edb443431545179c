#!/usr/bin/env python3
"""Golden files for weft's block dequantizers (crates/weft-kernels/tests/quant_golden.rs).

For each weight type this writes tests/golden/quant/<TYPE>.json holding a few random blocks
(raw bytes as hex) and their dequantization by the `gguf` Python package's reference
dequantizer (`gguf.quants.dequantize`, which mirrors ggml's dequantize_row_*), as the u32 bit
patterns of the f32 outputs. The Rust test checks `dequantize_row` against them bit for bit.

Quant fields are random bytes; the f16 scale fields are random finite values in [-2, 2], plus a
few special ones (0, -0, subnormal, 1) so that no output is NaN or Inf.

Rerun (deterministic; needs numpy and gguf, e.g. `pip install numpy gguf`):

    python3 scripts/gen_quant_golden.py
"""

import json
import pathlib

import numpy as np
from gguf import GGMLQuantizationType as T
from gguf.constants import GGML_QUANT_SIZES
from gguf.quants import dequantize

OUT = pathlib.Path(__file__).resolve().parent.parent / "tests" / "golden" / "quant"

# type -> (number of blocks, byte offsets of the f16 scale fields in a block)
TYPES = {
    "F32": (96, None),
    "F16": (96, None),
    "BF16": (96, None),
    "Q4_0": (8, [0]),
    "Q4_1": (8, [0, 2]),
    "Q5_0": (8, [0]),
    "Q5_1": (8, [0, 2]),
    "Q8_0": (8, [0]),
    "Q2_K": (4, [80, 82]),
    "Q3_K": (4, [108]),
    "Q4_K": (4, [0, 2]),
    "Q5_K": (4, [0, 2]),
    "Q6_K": (4, [208]),
}

SPECIAL_F16 = np.array([0.0, -0.0, 6.0e-8, 1.0, -2.0], dtype=np.float16)


def scale_values(rng: np.random.Generator, count: int) -> np.ndarray:
    v = rng.uniform(-2.0, 2.0, size=count).astype(np.float16)
    # Sprinkle in the special values.
    k = min(count // 3, len(SPECIAL_F16))
    if k:
        idx = rng.choice(count, size=k, replace=False)
        v[idx] = SPECIAL_F16[:k]
    return v


def make_blocks(name: str, rng: np.random.Generator) -> np.ndarray:
    n_blocks, fields = TYPES[name]
    qtype = T[name]
    block_len, block_bytes = GGML_QUANT_SIZES[qtype]
    if name == "F32":
        v = rng.uniform(-1e3, 1e3, size=n_blocks).astype(np.float32)
        v[:4] = [0.0, -0.0, 1e-40, 3.4e38]  # zero, negative zero, subnormal, large
        return v.view(np.uint8)
    if name == "F16":
        bits = rng.integers(0, 1 << 16, size=n_blocks, dtype=np.uint16)
        bits[(bits & 0x7C00) == 0x7C00] &= 0xBFFF  # no Inf / NaN exponents
        bits[:3] = [0x0001, 0x83FF, 0x7BFF]  # subnormals and the largest finite value
        return bits.view(np.uint8)
    if name == "BF16":
        bits = rng.integers(0, 1 << 16, size=n_blocks, dtype=np.uint16)
        bits[(bits & 0x7F80) == 0x7F80] &= 0xBFFF
        bits[:2] = [0x0001, 0x8000]
        return bits.view(np.uint8)
    raw = rng.integers(0, 256, size=(n_blocks, block_bytes), dtype=np.uint8)
    for off in fields:
        raw[:, off : off + 2] = scale_values(rng, n_blocks).view(np.uint8).reshape(n_blocks, 2)
    return raw.reshape(-1)


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(20240611)
    total = 0
    for name in TYPES:
        raw = make_blocks(name, rng)
        qtype = T[name]
        out = np.asarray(dequantize(raw, qtype), dtype=np.float32).reshape(-1)
        assert np.all(np.isfinite(out)), name
        block_len, block_bytes = GGML_QUANT_SIZES[qtype]
        assert out.size == raw.size // block_bytes * block_len
        doc = {
            "type": name,
            "ggml_id": int(qtype),
            "n_elements": int(out.size),
            "raw_hex": raw.tobytes().hex(),
            "f32_bits": [int(b) for b in out.view(np.uint32)],
        }
        path = OUT / f"{name}.json"
        text = json.dumps(doc, separators=(",", ":")) + "\n"
        path.write_text(text)
        total += len(text)
        print(f"{path.relative_to(OUT.parent.parent.parent)}: {out.size} values")
    print(f"total {total} bytes")


if __name__ == "__main__":
    main()
