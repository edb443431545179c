#!/usr/bin/env python3
"""Reference outputs for crates/weft-vision, written to tests/golden/vision/.

Run with the reference environment (transformers 5.x, torch, torchvision, Pillow):

    /work/venv-hf/bin/python scripts/gen_vision_preprocess_golden.py

(`pip install pillow` and `pip install --no-deps torchvision` there if missing: without
torchvision, transformers falls back to its PIL backend and the torchvision half cannot be made.)

It writes small deterministic test images (PNG, JPEG with an EXIF orientation, GIF, WebP) and,
for them:

- `decode.json`: what transformers feeds its processors: `load_image` (EXIF transpose, then
  `convert("RGB")`, which drops alpha) and the processors' own `convert_to_rgb` (alpha
  composited onto white) — size, sha256 and, for small images, the RGB bytes.
- `resize.json`: `PIL.Image.resize` and torchvision's `resize` (uint8, antialias, the path the
  transformers torchvision backend takes) for bicubic and bilinear: sha256 and small outputs.
- `qwen2vl.json`, `gemma3.json`: both backends of `Qwen2VLImageProcessor` and
  `Gemma3ImageProcessor` — shapes, `image_grid_thw`, full `pixel_values` for the smallest case and
  summaries (per-row sums, position-weighted sums, the first row, strided samples) for the rest;
  `smart_resize` on a table of sizes; the classes' defaults; which class `AutoImageProcessor`
  picks.

Everything is deterministic: images come from a seeded numpy generator.
"""

import base64
import hashlib
import io
import json
import os
import sys
import tempfile

import numpy as np
import PIL
import torch
import transformers
from PIL import Image, ImageOps

from transformers import AutoImageProcessor
from transformers.image_transforms import convert_to_rgb
from transformers.models.gemma3.image_processing_gemma3 import Gemma3ImageProcessor
from transformers.models.gemma3.image_processing_pil_gemma3 import Gemma3ImageProcessorPil
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil
from transformers.models.qwen2_vl.image_processing_qwen2_vl import (
    Qwen2VLImageProcessor,
    smart_resize,
)

import torchvision
from torchvision.transforms.v2 import functional as tvF

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "tests", "golden", "vision")

# Resized images are stored whole up to this many bytes; larger ones get a sha256 only.
FULL_BYTES = 6 * 1024


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def pattern(height: int, width: int, seed: int) -> np.ndarray:
    """Smooth waves, a hard-edged square (bicubic overshoots there, so clipping is exercised)
    and 4x4-block noise (rounding differences show up; blocks keep the PNG small)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float64)
    img = np.empty((height, width, 3), dtype=np.float64)
    for c in range(3):
        fy, fx, ph = rng.uniform(0.02, 0.15), rng.uniform(0.02, 0.15), rng.uniform(0, 6.3)
        img[..., c] = 128 + 90 * np.sin(fy * y + ph) * np.cos(fx * x - ph)
    noise = rng.integers(-24, 25, ((height + 3) // 4, (width + 3) // 4, 3))
    img += np.repeat(np.repeat(noise, 4, axis=0), 4, axis=1)[:height, :width]
    y0, x0 = height // 4, width // 3
    img[y0 : y0 + height // 3, x0 : x0 + width // 4] = [250, 5, 250]
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def big_pattern(height: int, width: int, seed: int) -> np.ndarray:
    """`pattern` at a quarter of the size, enlarged 4x (nearest) and put on a ramp: PNG's row
    filters compress it well, and it still has edges and noise at every scale the tests resize to."""
    small = pattern((height + 3) // 4, (width + 3) // 4, seed).astype(np.int64)
    big = np.repeat(np.repeat(small, 4, axis=0), 4, axis=1)[:height, :width]
    y, x = np.mgrid[0:height, 0:width]
    ramp = ((x + 2 * y) // 8 % 32)[..., None] - 16
    return np.clip(big + ramp, 0, 255).astype(np.uint8)


def make_images() -> dict:
    os.makedirs(OUT, exist_ok=True)
    files = {}

    def save(name, im, **kw):
        path = os.path.join(OUT, name)
        im.save(path, **kw)
        files[name] = path

    save("tiny_61x30.png", Image.fromarray(pattern(30, 61, 1)))
    save("grad_100x60.png", Image.fromarray(pattern(60, 100, 2)))
    save("tall_333x500.png", Image.fromarray(big_pattern(500, 333, 3)), optimize=True)
    save("wide_640x480.png", Image.fromarray(big_pattern(480, 640, 4)), optimize=True)

    gray = pattern(90, 70, 5)[..., 1]
    save("gray_70x90.png", Image.fromarray(gray))

    rgba = np.dstack([pattern(48, 64, 6), np.tile(np.linspace(0, 255, 64).astype(np.uint8), (48, 1))])
    rgba[:8, :, 3] = 255
    rgba[8:12, :, 3] = 0
    save("rgba_64x48.png", Image.fromarray(rgba))

    # Stored 120 wide and 80 high; orientation 6 ("rotate 90 CW to view") makes it 80x120.
    exif = Image.Exif()
    exif[0x0112] = 6
    save("orient6_120x80.jpg", Image.fromarray(pattern(80, 120, 7)), quality=90, exif=exif.tobytes())

    pal = Image.fromarray(pattern(40, 50, 8)).quantize(colors=32, dither=Image.Dither.NONE)
    pal.paste(31, (0, 0, 6, 6))  # index 31 is the transparent one
    save("palette_50x40.gif", pal, transparency=31)

    save("lossless_48x32.webp", Image.fromarray(pattern(32, 48, 9)), lossless=True)
    save("lossy_48x32.webp", Image.fromarray(pattern(32, 48, 10)), quality=80)
    return files


def decoded(path: str, composite: bool) -> np.ndarray:
    """`load_image` (composite=False) or `Image.open` + the processors' `convert_to_rgb`."""
    im = Image.open(path)
    im = ImageOps.exif_transpose(im)
    if composite:
        return convert_to_rgb(im, return_numpy=True)
    return np.array(im.convert("RGB"))


def f32_b64(values) -> str:
    return b64(np.ascontiguousarray(values, dtype="<f4").tobytes())


def f64_b64(values) -> str:
    return b64(np.ascontiguousarray(values, dtype="<f8").tobytes())


def image_entry(arr: np.ndarray, full: bool) -> dict:
    data = arr.tobytes()
    entry = {"width": int(arr.shape[1]), "height": int(arr.shape[0]), "sha256": sha(data)}
    if full:
        entry["rgb_b64"] = b64(data)
    return entry


# Lossy formats: their decoders may round differently, so the test measures the difference and
# needs every byte; lossless ones must match exactly and a hash is enough.
LOSSY = (".jpg", "lossy_48x32.webp")


def decode_golden(files: dict) -> dict:
    out = {}
    for name, path in sorted(files.items()):
        full = name.endswith(LOSSY)
        out[name] = {
            "load_image": image_entry(decoded(path, False), full),
            "convert_to_rgb": image_entry(decoded(path, True), full),
        }
    return out


def pil_resize(arr, height, width, resample):
    return np.array(Image.fromarray(arr).resize((width, height), resample=resample))


def tv_resize(arr, height, width, mode):
    t = torch.from_numpy(arr).permute(2, 0, 1).contiguous()
    r = tvF.resize(t, [height, width], interpolation=mode, antialias=True)
    return r.permute(1, 2, 0).contiguous().numpy()


RESIZES = {
    "tiny_61x30.png": [(28, 56), (32, 32)],
    "grad_100x60.png": [(56, 112), (224, 224), (37, 150), (60, 50), (30, 100), (120, 100)],
    "tall_333x500.png": [(224, 224), (392, 252), (100, 300), (500, 111)],
    "wide_640x480.png": [(224, 224), (196, 280), (470, 100), (481, 641)],
}


def resize_golden(files: dict) -> list:
    out = []
    for name, sizes in RESIZES.items():
        src = decoded(files[name], True)
        for height, width in sizes:
            for filt, pil_f, tv_f in [
                ("bicubic", Image.Resampling.BICUBIC, tvF.InterpolationMode.BICUBIC),
                ("bilinear", Image.Resampling.BILINEAR, tvF.InterpolationMode.BILINEAR),
            ]:
                pil = pil_resize(src, height, width, pil_f)
                tv = tv_resize(src, height, width, tv_f)
                out.append(
                    {
                        "image": name,
                        "height": height,
                        "width": width,
                        "filter": filt,
                        "pil": image_entry(pil, pil.nbytes <= FULL_BYTES),
                        "torchvision": image_entry(tv, tv.nbytes <= FULL_BYTES),
                        "pil_vs_torchvision_max_diff": int(np.abs(pil.astype(int) - tv.astype(int)).max()),
                    }
                )
    return out


def summary(values: np.ndarray, full: bool) -> dict:
    """Rows of a 2-D float32 array: enough to catch order and rounding errors without storing all."""
    v = np.ascontiguousarray(values, dtype=np.float32)
    rows = v.reshape(v.shape[0], -1).astype(np.float64)
    weights = (np.arange(rows.shape[1]) % 13 + 1).astype(np.float64)
    flat = v.reshape(-1)
    idx = (np.arange(256, dtype=np.int64) * 7919) % flat.size
    out = {
        "shape": list(v.shape),
        "row_sums_f64le_b64": f64_b64(rows.sum(axis=1)),
        "row_weighted_sums_f64le_b64": f64_b64((rows * weights).sum(axis=1)),
        "first_row_f32le_b64": f32_b64(v.reshape(v.shape[0], -1)[0]),
        "sample_index": idx.tolist(),
        "sample_value_f32le_b64": f32_b64(flat[idx]),
    }
    if full:
        out["values_f32le_b64"] = f32_b64(flat)
    return out


QWEN_CASES = [
    # (image, size override, store full values[, other settings])
    ("tiny_61x30.png", {"shortest_edge": 784, "longest_edge": 28 * 28 * 80}, True),
    ("tiny_61x30.png", {"shortest_edge": 784, "longest_edge": 28 * 28 * 80}, False, {"do_rescale": False}),
    ("tiny_61x30.png", {"shortest_edge": 784, "longest_edge": 28 * 28 * 80}, False, {"do_normalize": False}),
    ("grad_100x60.png", {"shortest_edge": 56 * 56, "longest_edge": 28 * 28 * 80}, False),
    ("tall_333x500.png", {"shortest_edge": 56 * 56, "longest_edge": 28 * 28 * 80}, False),
    ("wide_640x480.png", {"shortest_edge": 56 * 56, "longest_edge": 28 * 28 * 80}, False),
    ("orient6_120x80.jpg", {"shortest_edge": 56 * 56, "longest_edge": 28 * 28 * 80}, False),
    ("rgba_64x48.png", {"shortest_edge": 56 * 56, "longest_edge": 28 * 28 * 80}, False),
]

GEMMA_CASES = [
    ("tiny_61x30.png", {"height": 32, "width": 32}, True),
    ("tiny_61x30.png", {"height": 16, "width": 24}, True, {"do_normalize": False}),
    ("tiny_61x30.png", {"height": 16, "width": 24}, True, {"do_rescale": False, "resample": 3}),
    ("grad_100x60.png", {"height": 224, "width": 224}, False),
    ("tall_333x500.png", {"height": 224, "width": 224}, False),
    ("wide_640x480.png", {"height": 224, "width": 224}, False),
    ("orient6_120x80.jpg", {"height": 224, "width": 224}, False),
]

SMART_RESIZE = [
    # (height, width, factor, min_pixels, max_pixels)
    (60, 100, 28, 3136, 1003520),
    (42, 70, 28, 3136, 1003520),  # 1.5 and 2.5 factors: Python rounds half to even
    (70, 42, 28, 784, 1003520),
    (14, 14, 28, 3136, 1003520),  # min branch
    (30, 61, 28, 784, 62720),
    (480, 640, 28, 3136, 62720),  # max branch
    (500, 333, 28, 3136, 62720),
    (4000, 3000, 28, 3136, 12845056),
    (3024, 4032, 28, 3136, 1003520),
    (1000, 10, 28, 3136, 1003520),
    (10, 1999, 28, 3136, 1003520),  # aspect ratio 199.9: allowed
    (10, 2001, 28, 3136, 1003520),  # aspect ratio > 200: an error
    (1, 1, 28, 3136, 1003520),
    (28, 28, 28, 56 * 56, 28 * 28),  # max branch floors to the factor
    (100000, 100000, 28, 3136, 12845056),
    (57, 57, 28, 3136, 1003520),
    (54, 82, 28, 3136, 1003520),
    (97, 203, 32, 1024, 16384),  # another factor
]


def qwen_golden(files: dict) -> dict:
    cases = []
    for name, size, full, *rest in QWEN_CASES:
        settings = rest[0] if rest else {}
        src = Image.fromarray(decoded(files[name], True))
        entry = {"image": name, "size": size, "settings": settings}
        for key, cls in [("torchvision", Qwen2VLImageProcessor), ("pil", Qwen2VLImageProcessorPil)]:
            proc = cls(size=dict(size), **settings)
            res = proc(images=[src], return_tensors="np")
            pv, grid = res["pixel_values"], res["image_grid_thw"]
            entry[key] = {"grid_thw": grid[0].tolist(), "pixel_values": summary(pv, full)}
        cases.append(entry)

    table = []
    for h, w, factor, lo, hi in SMART_RESIZE:
        try:
            rh, rw = smart_resize(h, w, factor=factor, min_pixels=lo, max_pixels=hi)
            table.append({"in": [h, w, factor, lo, hi], "out": [int(rh), int(rw)]})
        except ValueError as e:
            table.append({"in": [h, w, factor, lo, hi], "error": str(e)})

    d = Qwen2VLImageProcessor()
    defaults = {
        "size": dict(d.size),
        "patch_size": d.patch_size,
        "temporal_patch_size": d.temporal_patch_size,
        "merge_size": d.merge_size,
        "image_mean": list(d.image_mean),
        "image_std": list(d.image_std),
        "rescale_factor": d.rescale_factor,
        "resample": int(d.resample),
    }
    configs = config_golden(Qwen2VLImageProcessor, QWEN_CONFIGS)
    return {"cases": cases, "smart_resize": table, "defaults": defaults, "configs": configs}


def gemma_golden(files: dict) -> dict:
    cases = []
    for name, size, full, *rest in GEMMA_CASES:
        settings = rest[0] if rest else {}
        src = Image.fromarray(decoded(files[name], True))
        entry = {"image": name, "size": size, "settings": settings}
        for key, cls in [("torchvision", Gemma3ImageProcessor), ("pil", Gemma3ImageProcessorPil)]:
            proc = cls(size=dict(size), **settings)
            res = proc(images=[src], return_tensors="np")
            pv = res["pixel_values"][0]  # [3, H, W]
            entry[key] = {"pixel_values": summary(pv.reshape(-1, pv.shape[-1]), full), "chw": list(pv.shape)}
        cases.append(entry)
    d = Gemma3ImageProcessor()
    defaults = {
        "size": dict(d.size),
        "image_mean": list(d.image_mean),
        "image_std": list(d.image_std),
        "rescale_factor": d.rescale_factor,
        "resample": int(d.resample),
    }
    configs = config_golden(Gemma3ImageProcessor, GEMMA_CONFIGS)
    return {"cases": cases, "defaults": defaults, "configs": configs}


# preprocessor_config.json files in the shapes the checkpoints publish, and how the processor
# classes resolve them (the Rust side parses the same text).
QWEN_CONFIGS = [
    {  # Qwen2.5-VL
        "min_pixels": 3136,
        "max_pixels": 12845056,
        "patch_size": 14,
        "temporal_patch_size": 2,
        "merge_size": 2,
        "image_mean": [0.48145466, 0.4578275, 0.40821073],
        "image_std": [0.26862954, 0.26130258, 0.27577711],
        "image_processor_type": "Qwen2VLImageProcessor",
        "processor_class": "Qwen2_5_VLProcessor",
    },
    {  # Qwen2-VL: size in the old keys, plus the top-level ones
        "do_convert_rgb": True,
        "do_normalize": True,
        "do_rescale": True,
        "do_resize": True,
        "image_mean": [0.48145466, 0.4578275, 0.40821073],
        "image_processor_type": "Qwen2VLImageProcessor",
        "image_std": [0.26862954, 0.26130258, 0.27577711],
        "max_pixels": 12845056,
        "merge_size": 2,
        "min_pixels": 3136,
        "patch_size": 14,
        "processor_class": "Qwen2VLProcessor",
        "resample": 3,
        "rescale_factor": 0.00392156862745098,
        "size": {"max_pixels": 12845056, "min_pixels": 3136},
        "temporal_patch_size": 2,
    },
    {"size": {"shortest_edge": 1000, "longest_edge": 200000}, "image_mean": 0.5, "image_std": 0.25},
    {},
]

GEMMA_CONFIGS = [
    {  # Gemma 3 (4B and larger)
        "do_convert_rgb": None,
        "do_normalize": True,
        "do_pan_and_scan": None,
        "do_rescale": True,
        "do_resize": True,
        "image_mean": [0.5, 0.5, 0.5],
        "image_processor_type": "Gemma3ImageProcessor",
        "image_seq_length": 256,
        "image_std": [0.5, 0.5, 0.5],
        "pan_and_scan_max_num_crops": None,
        "pan_and_scan_min_crop_size": None,
        "pan_and_scan_min_ratio_to_activate": None,
        "processor_class": "Gemma3Processor",
        "resample": 2,
        "rescale_factor": 0.00392156862745098,
        "size": {"height": 896, "width": 896},
    },
    {"resample": 3, "size": {"height": 64, "width": 48}, "do_normalize": False},
    {},
]


def resolved(proc) -> dict:
    size = {k: v for k, v in dict(proc.size).items() if v is not None}
    out = {
        "size": size,
        "do_resize": proc.do_resize,
        "do_rescale": proc.do_rescale,
        "do_normalize": proc.do_normalize,
        "rescale_factor": proc.rescale_factor,
        "image_mean": list(proc.image_mean) if isinstance(proc.image_mean, (list, tuple)) else [proc.image_mean] * 3,
        "image_std": list(proc.image_std) if isinstance(proc.image_std, (list, tuple)) else [proc.image_std] * 3,
        "resample": int(proc.resample),
    }
    for key in ("patch_size", "temporal_patch_size", "merge_size"):
        if hasattr(proc, key):
            out[key] = getattr(proc, key)
    return out


def config_golden(cls, configs) -> list:
    out = []
    for config in configs:
        with tempfile.TemporaryDirectory() as d:
            with open(os.path.join(d, "preprocessor_config.json"), "w") as f:
                json.dump(config, f)
            proc = cls.from_pretrained(d)
        out.append({"json": json.dumps(config), "resolved": resolved(proc)})
    return out


def auto_classes() -> dict:
    """Which class AutoImageProcessor gives for the two checkpoints' `image_processor_type`."""
    out = {}
    for model, cls in [("qwen2_5_vl", "Qwen2VLImageProcessor"), ("gemma3", "Gemma3ImageProcessor")]:
        with tempfile.TemporaryDirectory() as d:
            with open(os.path.join(d, "preprocessor_config.json"), "w") as f:
                json.dump({"image_processor_type": cls}, f)
            out[model] = type(AutoImageProcessor.from_pretrained(d)).__name__
    return out


def main() -> None:
    files = make_images()
    meta = {
        "transformers": transformers.__version__,
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "pillow": PIL.__version__,
        "numpy": np.__version__,
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "auto_image_processor": auto_classes(),
    }
    golden = {
        "decode.json": {"meta": meta, "images": decode_golden(files)},
        "resize.json": {"meta": meta, "cases": resize_golden(files)},
        "qwen2vl.json": {"meta": meta, **qwen_golden(files)},
        "gemma3.json": {"meta": meta, **gemma_golden(files)},
    }
    for name, value in golden.items():
        with open(os.path.join(OUT, name), "w") as f:
            json.dump(value, f, separators=(",", ":"))
            f.write("\n")
    total = sum(os.path.getsize(os.path.join(OUT, n)) for n in os.listdir(OUT))
    print(f"wrote {len(os.listdir(OUT))} files, {total} bytes, to {OUT}", file=sys.stderr)
    print(json.dumps(meta, indent=1), file=sys.stderr)


if __name__ == "__main__":
    main()
