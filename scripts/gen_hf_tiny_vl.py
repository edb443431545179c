#!/usr/bin/env python3
"""Tiny random Qwen2.5-VL checkpoint plus transformers reference outputs.

The vision-language counterpart of scripts/gen_hf_tiny.py (whose tokenizer it reuses): one
Qwen2_5_VLForConditionalGeneration directory exactly as transformers' save_pretrained writes
it, the processor files (tokenizer, image processor, chat template), a few small test images,
and golden.json with what transformers computes from those very files: the preprocessed
pixels, the vision tower output (with per-block traces and the window-attention bookkeeping),
the multimodal 3-D RoPE position ids, log-probabilities and greedy continuations. Nothing is
downloaded: the tokenizer is trained here on a fixed text, the weights are random under
fixed seeds, and the images are drawn from seeded numpy arrays.

Usage (development time only; CI uses the committed files). It needs torch, torchvision,
transformers, safetensors, tokenizers and pillow, e.g. in a virtual environment outside
the repository:
    /work/venv-hf/bin/pip install torch torchvision transformers safetensors tokenizers pillow
    /work/venv-hf/bin/python scripts/gen_hf_tiny_vl.py            # (re)generate, then check
    /work/venv-hf/bin/python scripts/gen_hf_tiny_vl.py --check    # only check existing files

Writes tests/data/hf-tiny-vl/:
    config.json, generation_config.json, model.safetensors
              Qwen2_5_VLForConditionalGeneration, float32, untied lm_head. Text: hidden 64,
              2 layers, 4 heads / 2 KV heads (head_dim 16), q/k/v biases, M-RoPE sections
              [2, 3, 3] (temporal, height, width pairs), theta 1e6. Vision: 4 blocks of
              width 32, 2 heads, patch 14, temporal patch 2, 2x2 spatial merge into 64-wide
              tokens, window 56 px (2x2 merged tokens) in blocks 0 and 2, full attention in
              blocks 1 and 3. Tensors are saved under the Hub names (model.layers.*,
              model.embed_tokens, model.norm, visual.*, lm_head), not the module names.
    tokenizer.json, tokenizer_config.json
              gen_hf_tiny.py's byte-level BPE plus Qwen2-VL's special tokens at the same
              relative ids as in Qwen2.5-VL (<|endoftext|> 397 ... <|video_pad|> 410).
    chat_template.jinja, processor_config.json
              what Qwen2_5_VLProcessor.save_pretrained writes (transformers 5 nests the
              image / video processor settings in processor_config.json).
    preprocessor_config.json
              the image processor settings as Hub Qwen2.5-VL checkpoints ship them (min_pixels
              / max_pixels as well as size.shortest_edge / longest_edge); same values.
    images/*.png  three seeded RGB images: 56x56 (used as is), 100x60 (smart_resize makes it
              56x112, so it exercises the bicubic resize) and 252x196 (used as is; its 7x9
              merged grid does not divide into 2x2 windows, so it exercises partial windows).
    golden.json   see the "reference" entry in it.

Everything is computed in float32 with eager attention. The check (run after generating, or
alone with --check) reloads the directory with AutoProcessor / AutoModelForImageTextToText and
compares against golden.json.
"""
import argparse
import hashlib
import json
import os
import shutil
import sys

import numpy as np
import PIL
import safetensors
import tokenizers
import torch
import torchvision
import transformers
from PIL import Image
from safetensors import safe_open
from transformers import (
    AutoModelForImageTextToText,
    AutoProcessor,
    Qwen2_5_VLConfig,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2_5_VLProcessor,
    Qwen2Tokenizer,
    Qwen2VLImageProcessor,
    Qwen2VLImageProcessorPil,
    Qwen2VLVideoProcessor,
)
from transformers.vision_utils import (
    get_vision_cu_seqlens,
    get_vision_position_ids,
    get_vision_window_index,
)

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import gen_hf_tiny as base  # noqa: E402  (the shared tokenizer and reference helpers)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(REPO, "tests", "data", "hf-tiny-vl")

# ---------------------------------------------------------------------------------------------
# Tokenizer and processor
# ---------------------------------------------------------------------------------------------

# Qwen2-VL's special tokens after <|endoftext|>, <|im_start|>, <|im_end|> (gen_hf_tiny's, ids
# 397..399), in Qwen2-VL's order, so each has the same offset from <|endoftext|> as in the real
# vocabulary (151643 + k there, 397 + k here).
VL_SPECIAL_TOKENS = [
    "<|object_ref_start|>",
    "<|object_ref_end|>",
    "<|box_start|>",
    "<|box_end|>",
    "<|quad_start|>",
    "<|quad_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
]

# Qwen2-VL / Qwen2.5-VL-Instruct's chat template, verbatim: a default system message when the
# first message is not one, and <|vision_start|><|image_pad|><|vision_end|> per image part
# (the processor then repeats <|image_pad|> once per merged image token).
CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}"
    "{% if add_vision_id %}Picture {{ image_count.value }}: {% endif %}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}"
    "{% set video_count.value = video_count.value + 1 %}"
    "{% if add_vision_id %}Video {{ video_count.value }}: {% endif %}"
    "<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

# Qwen's defaults except max_pixels (12845056 there): min 56*56, max 14*14*4*64 = 64 merged
# tokens. Images are resized (bicubic) so both sides are multiples of patch * merge = 28 and
# the area is within [min_pixels, max_pixels].
MIN_PIXELS = 56 * 56
MAX_PIXELS = 14 * 14 * 4 * 64


def build_tokenizer():
    tok = base.build_tokenizer()  # 397 BPE tokens + <|endoftext|> <|im_start|> <|im_end|>
    tok.add_special_tokens(VL_SPECIAL_TOKENS)
    return tok


def build_processor(tok):
    hf_tok = Qwen2Tokenizer(
        tokenizer_object=tok,
        bos_token=None,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token=None,
        clean_up_tokenization_spaces=False,
        model_max_length=512,
    )
    image_processor = Qwen2VLImageProcessor(
        min_pixels=MIN_PIXELS,
        max_pixels=MAX_PIXELS,
        patch_size=14,
        temporal_patch_size=2,
        merge_size=2,
    )
    return Qwen2_5_VLProcessor(
        image_processor=image_processor,
        tokenizer=hf_tok,
        video_processor=Qwen2VLVideoProcessor(),
        chat_template=CHAT_TEMPLATE,
    )


def hub_preprocessor_config(image_processor):
    """preprocessor_config.json as Hub Qwen2.5-VL checkpoints have it (both spellings)."""
    cfg = image_processor.to_dict()
    cfg = {k: v for k, v in cfg.items() if not k.startswith("_")}
    cfg["min_pixels"] = cfg["size"]["shortest_edge"]
    cfg["max_pixels"] = cfg["size"]["longest_edge"]
    cfg["processor_class"] = "Qwen2_5_VLProcessor"
    return dict(sorted(cfg.items()))


# ---------------------------------------------------------------------------------------------
# Model
# ---------------------------------------------------------------------------------------------

SEED = 4004
FINAL_NORM = 8.0  # multiplies the final text norm so that greedy choices are rarely near-ties
WEIGHT_GAIN = 1.6  # matrices ~ N(0, (gain / sqrt(fan_in))^2); gen_hf_tiny's 0.2 at fan_in 64
EMBED_STD = 1.0  # token embeddings; comparable to the scale of the merged image tokens


def build_config(special):
    text = dict(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=None,  # filled in below
        max_position_embeddings=512,
        rms_norm_eps=1e-6,
        hidden_act="silu",
        # mrope_section counts rotary frequency pairs: head_dim 16 has 8, split temporal 2,
        # height 3, width 3 (Qwen2.5-VL: [16, 24, 24] of 64).
        rope_parameters={"rope_type": "default", "rope_theta": 1000000.0,
                         "mrope_section": [2, 3, 3]},
        use_sliding_window=False,
        bos_token_id=None,
        eos_token_id=special["<|im_end|>"],
        pad_token_id=None,  # no padding_idx, so no embedding row is special
        initializer_range=0.2,
    )
    vision = dict(
        depth=4,
        hidden_size=32,
        intermediate_size=64,
        num_heads=2,
        in_channels=3,
        patch_size=14,
        spatial_merge_size=2,
        temporal_patch_size=2,
        # Qwen2.5-VL's value, which llama.cpp also assumes for mmproj files (they do not store it):
        # 112 / 14 / 2 = 4 merged tokens (8x8 patches) per window side.
        window_size=112,
        fullatt_block_indexes=[1, 3],
        out_hidden_size=64,
        hidden_act="silu",
        tokens_per_second=2,  # as Qwen2.5-VL's config (only used for videos)
        initializer_range=0.2,
    )
    return text, vision


def make_config(vocab, special):
    text, vision = build_config(special)
    text["vocab_size"] = vocab
    return Qwen2_5_VLConfig(
        text_config=text,
        vision_config=vision,
        image_token_id=special["<|image_pad|>"],
        video_token_id=special["<|video_pad|>"],
        vision_start_token_id=special["<|vision_start|>"],
        vision_end_token_id=special["<|vision_end|>"],
        tie_word_embeddings=False,
    )


NORM_SUFFIXES = ("norm.weight", "norm1.weight", "norm2.weight", "ln_q.weight")


def randomize_(model):
    """Every parameter drawn explicitly, in named_parameters order, from one seeded generator.

    RMSNorm weights 1 + 0.3 N(0,1) (the final text norm then times FINAL_NORM), biases
    0.5 N(0,1), token embeddings EMBED_STD N(0,1), every other matrix (linear, conv) with std
    WEIGHT_GAIN / sqrt(fan_in). Large enough that attention is far from uniform and each
    block visibly moves the residual stream, in the tower as in the text model.
    """
    g = torch.Generator().manual_seed(SEED)
    with torch.no_grad():
        for name, p in model.named_parameters():
            r = torch.randn(p.shape, generator=g)
            if name.endswith(NORM_SUFFIXES):
                p.copy_(1.0 + 0.3 * r)
                if name == "model.language_model.norm.weight":
                    p.mul_(FINAL_NORM)
            elif name.endswith(".bias"):
                p.copy_(0.5 * r)
            elif name.endswith("embed_tokens.weight"):
                p.copy_(EMBED_STD * r)
            else:
                fan_in = p[0].numel()
                p.copy_(WEIGHT_GAIN / fan_in**0.5 * r)


# ---------------------------------------------------------------------------------------------
# Images
# ---------------------------------------------------------------------------------------------

IMAGES = [
    # name, file, width, height, seed
    ("small", "small_56x56.png", 56, 56, 11),
    ("wide", "wide_100x60.png", 100, 60, 12),
    ("large", "large_252x196.png", 252, 196, 13),
]


def draw_image(width, height, seed):
    """Gradients, a disc, a bar and mild noise: every patch differs, nothing is periodic."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float64)
    r = 255.0 * x / max(width - 1, 1)
    g = 255.0 * y / max(height - 1, 1)
    b = 128.0 + 90.0 * np.sin(2 * np.pi * (x / 23.0 + y / 31.0))
    img = np.stack([r, g, b], axis=-1)
    cx, cy = rng.uniform(0.25, 0.75) * width, rng.uniform(0.25, 0.75) * height
    rad = rng.uniform(0.15, 0.3) * min(width, height)
    disc = (x - cx) ** 2 + (y - cy) ** 2 < rad**2
    img[disc] = rng.uniform(0, 255, size=3)
    x0 = int(rng.integers(0, width // 2))
    y0 = int(rng.integers(0, height // 2))
    img[y0 : y0 + max(height // 6, 2), x0 : x0 + max(width // 3, 2)] = rng.uniform(0, 255, size=3)
    img += rng.normal(0.0, 10.0, size=img.shape)
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def image_path(file):
    return os.path.join(OUT, "images", file)


def load_image(file):
    return Image.open(image_path(file)).convert("RGB")


def pixels_sha256(img):
    return hashlib.sha256(np.asarray(img, dtype=np.uint8).tobytes()).hexdigest()


# ---------------------------------------------------------------------------------------------
# Cases
# ---------------------------------------------------------------------------------------------

CASES = [
    {
        "name": "text",
        "images": [],
        "messages": [{"role": "user", "content": [
            {"type": "text", "text": "What is the capital of France?"}]}],
    },
    {
        "name": "one_image",
        "images": ["wide"],
        "messages": [{"role": "user", "content": [
            {"type": "image", "image": "wide"},
            {"type": "text", "text": "Describe the image."}]}],
    },
    {
        "name": "two_images",
        "images": ["small", "large"],
        "messages": [{"role": "user", "content": [
            {"type": "image", "image": "small"},
            {"type": "text", "text": "and"},
            {"type": "image", "image": "large"},
            {"type": "text", "text": "What is different between these pictures?"}]}],
    },
]
N_GREEDY = 16
ROUND = 6


def rounded(t):
    """Nested lists of floats rounded to ROUND decimals."""
    a = t.detach().to(torch.float64).numpy()
    return np.round(a, ROUND).tolist()


def messages_for(case):
    """The case's messages with image names replaced by loaded PIL images (as users pass)."""
    files = {name: file for name, file, *_ in IMAGES}
    out = []
    for m in case["messages"]:
        content = []
        for part in m["content"]:
            if part["type"] == "image":
                content.append({"type": "image", "image": load_image(files[part["image"]])})
            else:
                content.append(dict(part))
        out.append({"role": m["role"], "content": content})
    return out


def processor_inputs(processor, case):
    inputs = processor.apply_chat_template(
        messages_for(case),
        add_generation_prompt=True,
        tokenize=True,
        return_dict=True,
        return_tensors="pt",
    )
    return inputs


def pixel_summary(pv, full=False):
    pv64 = pv.to(torch.float64)
    s = {
        "shape": list(pv.shape),
        "sum": round(float(pv64.sum()), 4),
        "abs_sum": round(float(pv64.abs().sum()), 4),
        "sum_sq": round(float((pv64 * pv64).sum()), 4),
        "row_sums": [round(float(x), 4) for x in pv64.sum(-1)],
        "first_row_head": rounded(pv[0, :16]),
        "last_row_head": rounded(pv[-1, :16]),
    }
    if full:
        s["values"] = rounded(pv)
    return s


def window_info(grid_thw, vcfg):
    window_index, cu_window_seqlens = get_vision_window_index(
        grid_thw, vcfg.spatial_merge_size, vcfg.window_size, vcfg.patch_size)
    cu_seqlens = get_vision_cu_seqlens(grid_thw)
    pos = get_vision_position_ids(grid_thw, vcfg.spatial_merge_size)
    return {
        "window_index": window_index.tolist(),
        "cu_window_seqlens": cu_window_seqlens.tolist(),
        "cu_seqlens": cu_seqlens.tolist(),
        "rotary_hw": pos.tolist(),
    }


@torch.no_grad()
def tower(model, pixel_values, grid_thw, trace=False):
    """Vision tower output (merged tokens, processor order); optionally per-block traces.

    The traces are in the processor's patch order (the tower works in window order inside:
    permuted by window_index at 2x2-merge-group granularity; undone here).
    """
    visual = model.model.visual
    captured = []
    hooks = []
    if trace:
        hooks.append(visual.patch_embed.register_forward_hook(
            lambda m, i, o: captured.append(("patch_embed", o))))
        for k, blk in enumerate(visual.blocks):
            hooks.append(blk.register_forward_hook(
                lambda m, i, o, k=k: captured.append((f"block{k}", o))))
    try:
        out = visual(pixel_values.to(torch.float32), grid_thw=grid_thw)
    finally:
        for h in hooks:
            h.remove()
    merged = out.pooler_output
    result = {"merged": merged}
    if trace:
        vcfg = model.config.vision_config
        window_index, _ = get_vision_window_index(
            grid_thw, vcfg.spatial_merge_size, vcfg.window_size, vcfg.patch_size)
        unit = vcfg.spatial_merge_size ** 2
        inverse = torch.argsort(window_index)
        for name, t in captured:
            if name == "patch_embed":  # computed before the window permutation
                result[name] = t
            else:
                n, d = t.shape
                result[name] = t.reshape(n // unit, unit, d)[inverse].reshape(n, d)
    return result


@torch.no_grad()
def reference(model, inputs):
    """Positions, log-softmax at a few places, greedy continuation with step margins."""
    model.eval()
    model.model.rope_deltas = None
    input_ids = inputs["input_ids"]
    ids = input_ids[0].tolist()
    has_images = "pixel_values" in inputs
    position_ids, rope_deltas = model.model.get_rope_index(
        input_ids,
        mm_token_type_ids=inputs["mm_token_type_ids"],
        image_grid_thw=inputs.get("image_grid_thw"),
        attention_mask=inputs["attention_mask"],
    )
    logits = model(**inputs, use_cache=False).logits[0]
    model.model.rope_deltas = None
    out = model.generate(
        **inputs,
        do_sample=False,
        max_new_tokens=N_GREEDY,
        eos_token_id=None,  # never stop early: always N_GREEDY tokens
        pad_token_id=None,
        output_logits=True,
        return_dict_in_generate=True,
    )
    greedy = out.sequences[0, len(ids):].tolist()
    assert len(greedy) == N_GREEDY, greedy
    margins = [base.top2_margin(step[0]) for step in out.logits]
    # Cross-check the cached generate path against a full recompute without cache.
    model.model.rope_deltas = None
    seq = torch.tensor([ids + greedy])
    full_inputs = dict(inputs)
    full_inputs["input_ids"] = seq
    full_inputs["attention_mask"] = torch.ones_like(seq)
    full_inputs["mm_token_type_ids"] = torch.cat(
        [inputs["mm_token_type_ids"], torch.zeros((1, N_GREEDY), dtype=inputs["mm_token_type_ids"].dtype)], 1)
    full = model(**full_inputs, use_cache=False).logits[0]
    recomputed = full[len(ids) - 1 : -1].argmax(-1).tolist()
    if recomputed != greedy:
        print(f"  warning: cached / uncached greedy differ: {greedy} vs {recomputed}",
              file=sys.stderr)
    ref = {
        "position_ids": position_ids[:, 0, :].tolist(),
        "rope_deltas": int(rope_deltas.reshape(-1)[0]),
        "logprobs_first": base.log_softmax_list(logits[0]),
        "logprobs_last": base.log_softmax_list(logits[-1]),
        "greedy_tokens": greedy,
        "greedy_margins": [round(m, 6) for m in margins],
    }
    if has_images:
        vision_end = model.config.vision_end_token_id
        first_end = ids.index(vision_end)
        ref["vision_end_position"] = first_end
        ref["logprobs_vision_end"] = base.log_softmax_list(logits[first_end])
    model.model.rope_deltas = None
    return ref


# ---------------------------------------------------------------------------------------------
# Generate
# ---------------------------------------------------------------------------------------------

def write_images():
    os.makedirs(os.path.join(OUT, "images"), exist_ok=True)
    for name, file, w, h, seed in IMAGES:
        Image.fromarray(draw_image(w, h, seed), mode="RGB").save(image_path(file), optimize=True)


def image_records(model, processor):
    """Per image: preprocessing, tower output, traces, windows."""
    ip = processor.image_processor
    pil_ip = Qwen2VLImageProcessorPil(**{k: v for k, v in ip.to_dict().items()
                                         if k in ("size", "patch_size", "temporal_patch_size",
                                                  "merge_size", "image_mean", "image_std",
                                                  "resample")})
    records = {}
    for name, file, w, h, _ in IMAGES:
        img = load_image(file)
        feats = ip(images=[img], return_tensors="pt")
        pv, thw = feats["pixel_values"], feats["image_grid_thw"]
        t, gh, gw = thw[0].tolist()
        resized_hw = [gh * ip.patch_size, gw * ip.patch_size]
        rec = {
            "file": "images/" + file,
            "width": w,
            "height": h,
            "rgb_sha256": pixels_sha256(img),
            "resized_height_width": resized_hw,
            "resized": resized_hw != [h, w],
            "image_grid_thw": thw[0].tolist(),
            "num_merged_tokens": int(t * gh * gw // ip.merge_size**2),
        }
        small = name == "small"
        rec["pixel_values"] = pixel_summary(pv, full=small)
        if rec["resized"]:
            # The uint8 image the torchvision backend resizes to (bicubic, antialias), so a
            # reimplementation can check its resize separately from the rest.
            chw = torch.from_numpy(np.array(img)).permute(2, 0, 1).contiguous()
            resized = ip.resize(chw[None], size=ip.size, resample=ip.resample,
                                factor=ip.patch_size * ip.merge_size)[0]
            assert list(resized.shape[-2:]) == resized_hw, resized.shape
            again = ip(images=[resized.permute(1, 2, 0).numpy()], return_tensors="pt")
            assert torch.equal(again["pixel_values"], pv), "resize + rest != processor"
            rec["resized_rgb_hwc"] = resized.permute(1, 2, 0).reshape(-1).tolist()
            pil_pv = pil_ip(images=[img], return_tensors="pt")["pixel_values"]
            rec["pil_backend_max_abs_diff"] = round(float((pil_pv - pv).abs().max()), 6)
        tw = tower(model, pv, thw, trace=True)
        rec["tower_output"] = rounded(tw["merged"])
        rec["tower_trace"] = {k: rounded(v) for k, v in tw.items() if k != "merged"}
        rec["windows"] = window_info(thw, model.config.vision_config)
        records[name] = rec
        print(f"  image {name}: {w}x{h} -> {resized_hw[1]}x{resized_hw[0]}, grid {thw[0].tolist()}, "
              f"{rec['num_merged_tokens']} tokens, {len(rec['windows']['cu_window_seqlens']) - 1} "
              f"windows, tower std {float(tw['merged'].std()):.3f}")
    return records


def dump_json(obj, indent=0):
    """JSON with one key per line but every list of scalars (or of such lists) on one line."""
    def flat(x):
        return not isinstance(x, (dict, list)) or (
            isinstance(x, list) and all(not isinstance(e, dict) and flat(e) for e in x))

    pad = " " * (indent + 1)
    if isinstance(obj, dict) and obj:
        items = [f"{pad}{json.dumps(k)}: {dump_json(v, indent + 1)}" for k, v in obj.items()]
        return "{\n" + ",\n".join(items) + "\n" + " " * indent + "}"
    if isinstance(obj, list) and obj and not flat(obj):
        items = [pad + dump_json(v, indent + 1) for v in obj]
        return "[\n" + ",\n".join(items) + "\n" + " " * indent + "]"
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":"))


def generate():
    if os.path.isdir(OUT):
        shutil.rmtree(OUT)
    os.makedirs(OUT)
    write_images()

    tok = build_tokenizer()
    vocab = tok.get_vocab_size(with_added_tokens=True)
    special = {t: tok.token_to_id(t) for t in base.SPECIAL_TOKENS + VL_SPECIAL_TOKENS}
    processor = build_processor(tok)
    processor.save_pretrained(OUT)
    with open(os.path.join(OUT, "preprocessor_config.json"), "w") as f:
        json.dump(hub_preprocessor_config(processor.image_processor), f, indent=2)
        f.write("\n")

    config = make_config(vocab, special)
    torch.manual_seed(SEED)
    model = Qwen2_5_VLForConditionalGeneration(config)
    randomize_(model)
    model.save_pretrained(OUT)

    # A fresh instance holding the saved weights (non-persistent buffers recomputed).
    state = {k: v.clone() for k, v in model.state_dict().items()}
    model = Qwen2_5_VLForConditionalGeneration(config)
    model.load_state_dict(state, strict=True)
    model.set_attn_implementation("eager")
    model.generation_config.eos_token_id = None
    model.eval()

    images = image_records(model, processor)

    # The tower on two images at once must equal the two runs one at a time (attention never
    # crosses images: cu_seqlens / cu_window_seqlens restart per image).
    feats = processor.image_processor(images=[load_image(IMAGES[0][1]), load_image(IMAGES[2][1])],
                                      return_tensors="pt")
    both = tower(model, feats["pixel_values"], feats["image_grid_thw"])["merged"]
    sep = torch.tensor(images["small"]["tower_output"] + images["large"]["tower_output"])
    assert (both - sep).abs().max() < 1e-5, (both - sep).abs().max()
    batch_windows = window_info(feats["image_grid_thw"], model.config.vision_config)
    del batch_windows["rotary_hw"]

    cases = []
    for case in CASES:
        inputs = processor_inputs(processor, case)
        text = processor.apply_chat_template(case["messages"], add_generation_prompt=True,
                                             tokenize=False)
        ids = inputs["input_ids"][0].tolist()
        if case["images"]:
            grid = inputs["image_grid_thw"].tolist()
            assert grid == [images[n]["image_grid_thw"] for n in case["images"]], grid
        else:
            assert ids == tok.encode(text, add_special_tokens=False).ids
        ref = reference(model, inputs)
        cases.append({"name": case["name"], "images": case["images"], "messages": case["messages"],
                      "text": text, "input_ids": ids,
                      "image_grid_thw": inputs["image_grid_thw"].tolist() if case["images"] else [],
                      **ref})
        print(f"  {case['name']}: {len(ids)} ids, rope_delta {ref['rope_deltas']}, greedy "
              f"{ref['greedy_tokens']}, min margin {min(ref['greedy_margins']):.3f}")

    vcfg = model.config.vision_config
    golden = {
        "generator": "scripts/gen_hf_tiny_vl.py",
        "versions": {
            "transformers": transformers.__version__,
            "torch": torch.__version__,
            "torchvision": torchvision.__version__,
            "tokenizers": tokenizers.__version__,
            "safetensors": safetensors.__version__,
            "pillow": PIL.__version__,
            "numpy": np.__version__,
        },
        "model": {
            "class": "Qwen2_5_VLForConditionalGeneration",
            "model_type": config.model_type,
            "saved_dtype": "float32",
            "seed": SEED,
            "final_norm": FINAL_NORM,
        },
        "tokenizer": {
            "vocab_size": vocab,
            "special_tokens": special,
            "eos_token": "<|im_end|>",
            "pad_token": "<|endoftext|>",
        },
        "image_processor": {
            "class": type(processor.image_processor).__name__,
            "backend": "torchvision",
            "min_pixels": MIN_PIXELS,
            "max_pixels": MAX_PIXELS,
            "patch_size": 14,
            "merge_size": 2,
            "temporal_patch_size": 2,
            "resample": "bicubic (torchvision, antialias=True, on uint8 CHW tensors)",
            "image_mean": list(processor.image_processor.image_mean),
            "image_std": list(processor.image_processor.image_std),
            "normalize": "float32 (x - 255 * mean) / (255 * std) on the uint8 values "
                         "(rescale fused into normalize)",
        },
        "reference": (
            "float32, eager attention, from the saved weights. images[name]: pixel_values "
            "(the image processor's output for that image alone: [patches, 3 * 2 * 14 * 14] "
            "rows in 2x2-merge-group order, each row channel-major then temporal (the frame "
            "repeated) then 14x14 row-major; summary statistics, per-row sums, and for 'small' "
            "all values), resized_rgb_hwc (for images smart_resize changed: the resized uint8 "
            "image, row-major HWC), pil_backend_max_abs_diff (how far the PIL backend "
            "Qwen2VLImageProcessorPil lands from the default torchvision one), tower_output "
            "(model.model.visual(pixel_values, grid_thw).pooler_output: [merged tokens, 64] "
            "in row-major merged-grid order), tower_trace (patch_embed output and each "
            "block's output, [patches, 32], in processor patch order; the tower itself runs "
            "in window order), windows (window_index: merged-token permutation into window "
            "order; cu_window_seqlens / cu_seqlens in patches; rotary_hw: per patch the (h, w) "
            "patch coordinates that the 2-D vision RoPE uses). cases[]: the chat template "
            "text, input_ids after the processor expanded <|image_pad|>, position_ids (3 x N: "
            "temporal, height, width, from model.model.get_rope_index), rope_deltas (generated "
            "token at sequence index i gets position i + rope_deltas on all three axes), "
            "log-softmax over the vocabulary at position 0, at the first <|vision_end|> "
            "(image cases) and at the last prompt position, 16 greedy tokens "
            "(generate(do_sample=False), no EOS stop) and the top-1 minus top-2 logit margin "
            "at each greedy step."
        ),
        "vision": {
            "window_merged_tokens": vcfg.window_size // vcfg.patch_size // vcfg.spatial_merge_size,
            "fullatt_block_indexes": list(vcfg.fullatt_block_indexes),
            "two_image_batch": {"images": ["small", "large"], **batch_windows},
        },
        "images": images,
        "cases": cases,
    }
    with open(os.path.join(OUT, "golden.json"), "w") as f:
        f.write(dump_json(golden))
        f.write("\n")


# ---------------------------------------------------------------------------------------------
# Check
# ---------------------------------------------------------------------------------------------

def max_diff(a, b):
    return float((torch.tensor(a, dtype=torch.float64) - torch.tensor(b, dtype=torch.float64))
                 .abs().max())


def check(atol=2e-4):
    """Reload everything from disk and compare with golden.json."""
    with open(os.path.join(OUT, "golden.json")) as f:
        golden = json.load(f)
    ok = True

    def fail(msg):
        nonlocal ok
        print("  " + msg, file=sys.stderr)
        ok = False

    processor = AutoProcessor.from_pretrained(OUT)
    model = AutoModelForImageTextToText.from_pretrained(
        OUT, dtype=torch.float32, attn_implementation="eager")
    model.generation_config.eos_token_id = None
    model.eval()
    if type(model) is not Qwen2_5_VLForConditionalGeneration:
        fail(f"loaded {type(model).__name__}")
    with safe_open(os.path.join(OUT, "model.safetensors"), framework="pt") as f:
        dtypes = {str(f.get_slice(k).get_dtype()) for k in f.keys()}
    if dtypes != {"F32"}:
        fail(f"tensors stored as {dtypes}")

    # The Hub-style preprocessor_config.json describes the same image processor.
    with open(os.path.join(OUT, "preprocessor_config.json")) as f:
        hub = json.load(f)
    from_hub = Qwen2VLImageProcessor(**{k: v for k, v in hub.items()
                                        if k not in ("image_processor_type", "processor_class")})
    if from_hub.to_dict() != processor.image_processor.to_dict():
        fail("preprocessor_config.json and processor_config.json disagree")

    ip = processor.image_processor
    worst_px = worst_tower = 0.0
    for name, file, w, h, _ in IMAGES:
        rec = golden["images"][name]
        img = load_image(file)
        if pixels_sha256(img) != rec["rgb_sha256"]:
            fail(f"{file}: pixels differ from the generated image")
        feats = ip(images=[img], return_tensors="pt")
        pv, thw = feats["pixel_values"], feats["image_grid_thw"]
        if thw[0].tolist() != rec["image_grid_thw"]:
            fail(f"{name}: grid {thw[0].tolist()} != {rec['image_grid_thw']}")
            continue
        got = pixel_summary(pv, full="values" in rec["pixel_values"])
        for key in ("sum", "abs_sum", "sum_sq"):
            rel = abs(got[key] - rec["pixel_values"][key]) / max(1.0, abs(rec["pixel_values"][key]))
            if rel > 1e-6:
                fail(f"{name}: pixel_values {key} {got[key]} != {rec['pixel_values'][key]}")
        d = max_diff(got["row_sums"], rec["pixel_values"]["row_sums"])
        if "values" in got:
            d = max(d, max_diff(got["values"], rec["pixel_values"]["values"]))
        worst_px = max(worst_px, d)
        if d > 1e-3:
            fail(f"{name}: pixel_values differ by {d}")
        tw = tower(model, pv, thw, trace=True)
        d = max_diff(rounded(tw["merged"]), rec["tower_output"])
        for k, v in rec["tower_trace"].items():
            d = max(d, max_diff(rounded(tw[k]), v))
        worst_tower = max(worst_tower, d)
        if d > atol:
            fail(f"{name}: tower output / trace differ by {d}")
        win = window_info(thw, model.config.vision_config)
        if win != rec["windows"]:
            fail(f"{name}: window bookkeeping differs")

    worst = 0.0
    for case in golden["cases"]:
        spec = next(c for c in CASES if c["name"] == case["name"])
        inputs = processor_inputs(processor, spec)
        ids = inputs["input_ids"][0].tolist()
        if ids != case["input_ids"]:
            fail(f"{case['name']}: input ids differ")
            continue
        ref = reference(model, inputs)
        for key in ("position_ids", "rope_deltas", "greedy_tokens"):
            if ref[key] != case[key]:
                fail(f"{case['name']}: {key} differ")
        for key in ("logprobs_first", "logprobs_last", "logprobs_vision_end"):
            if key in case:
                diff = max_diff(ref[key], case[key])
                worst = max(worst, diff)
                if diff > atol:
                    fail(f"{case['name']}: {key} differs by {diff}")
    print(f"check: reloaded as {type(model).__name__} + {type(processor).__name__} "
          f"({type(processor.tokenizer).__name__}, {type(ip).__name__}); max |pixel diff| "
          f"{worst_px:.2e}, max |tower diff| {worst_tower:.2e}, max |logprob diff| {worst:.2e}")
    return ok


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--check", action="store_true", help="only check the existing files")
    args = parser.parse_args()
    torch.set_num_threads(1)  # bit-stable float32 reductions across runs
    if not args.check:
        generate()
        total = 0
        for path, size in base.file_sizes(OUT):
            print(f"{size:>9}  {path}")
            total += size
        print(f"{total:>9}  total")
    if not check():
        sys.exit("check FAILED")
    print("check OK")


if __name__ == "__main__":
    main()
