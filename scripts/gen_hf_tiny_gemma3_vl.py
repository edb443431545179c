#!/usr/bin/env python3
"""Tiny random Gemma 3 vision-language checkpoint plus transformers reference outputs.

The Gemma 3 counterpart of scripts/gen_hf_tiny_vl.py (Qwen2.5-VL): one
Gemma3ForConditionalGeneration directory exactly as transformers' save_pretrained writes it
(SigLIP vision tower, Gemma 3 multimodal projector, gemma3_text language model), the processor
files (tokenizer, image processor, chat template), and golden.json with what transformers
computes from those very files: the preprocessed pixels, the vision tower and projector
outputs, the processor's expanded token ids and token_type_ids, the attention masks (image
tokens attend bidirectionally within their image), log-probabilities and greedy continuations,
with and without the bidirectional image mask. Nothing is downloaded: the tokenizer is
gen_hf_tiny.py's byte-level BPE trained here on a fixed text, the weights are random under a
fixed seed, and the images are the ones scripts/gen_hf_tiny_vl.py drew (read from
tests/data/hf-tiny-vl/images/, not copied).

Usage (development time only; CI uses the committed files). It needs torch, torchvision,
transformers, safetensors, tokenizers and pillow, e.g. in a virtual environment outside
the repository:
    /work/venv-hf/bin/pip install torch torchvision transformers safetensors tokenizers pillow
    /work/venv-hf/bin/python scripts/gen_hf_tiny_gemma3_vl.py            # (re)generate, then check
    /work/venv-hf/bin/python scripts/gen_hf_tiny_gemma3_vl.py --check    # only check existing files
scripts/gen_tiny_vl_gguf.py then converts the directory to GGUF + mmproj with llama.cpp.

Writes tests/data/hf-tiny-gemma3-vl/:
    config.json, generation_config.json, model.safetensors
              Gemma3ForConditionalGeneration, float32, tied embeddings (no lm_head.weight).
              Text (gemma3_text): hidden 64, 4 layers (sliding, full, sliding, full), 4 heads /
              2 KV heads, head_dim 16, query_pre_attn_scalar 16, sliding_window 8 (smaller
              than an image's 16 tokens), RoPE base 1e4 on sliding layers and 1e6 with linear
              scaling factor 8 on full layers (Gemma 3 4B's pattern), no softcapping,
              gelu_pytorch_tanh, (1 + w) RMSNorms incl. q_norm / k_norm, embeddings scaled by
              sqrt(64) = 8. Vision (siglip_vision_model): 64x64 images, 8x8 patches (64
              patches), hidden 32, 2 layers, 2 heads, MLP 64, no head. Projector: 2x2 average
              pool to 4x4 = 16 tokens, (1 + w) RMSNorm, 32 -> 64 matrix. Tensors are saved
              under the Hub checkpoints' names, which is also what transformers 5 writes for
              a model it loaded from such a checkpoint: language_model.model.*,
              vision_tower.vision_model.*, multi_modal_projector.* (see save_model: a
              freshly built model would be saved without the ".vision_model" level).
    tokenizer.json, tokenizer_config.json
              gen_hf_tiny.py's byte-level BPE (397 tokens) with Gemma 3's special tokens
              appended instead of Qwen's: <pad> 397, <eos> 398, <bos> 399,
              <start_of_turn> 400, <end_of_turn> 401, <start_of_image> 402,
              <end_of_image> 403, <image_soft_token> 404. The tokenizer adds no BOS itself
              (add_bos_token false, no post-processor template): the chat template writes it.
              boi_token / eoi_token / image_token as Gemma3Processor needs them (top level
              and in extra_special_tokens, as Hub Gemma 3 checkpoints have them).
    chat_template.jinja, processor_config.json
              what Gemma3Processor.save_pretrained writes (Gemma 3's chat template verbatim;
              processor_config.json nests the image processor settings and image_seq_length 16).
    preprocessor_config.json
              the image processor settings as Hub Gemma 3 checkpoints ship them (with
              image_seq_length and the pan-and-scan keys as null); same values.
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
from safetensors.torch import load_file, save_file
from transformers import (
    AutoModelForImageTextToText,
    AutoProcessor,
    Gemma3Config,
    Gemma3ForConditionalGeneration,
    Gemma3ImageProcessor,
    Gemma3ImageProcessorPil,
    Gemma3Processor,
    TokenizersBackend,
)

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import gen_hf_tiny as base  # noqa: E402  (the shared tokenizer and reference helpers)
import gen_hf_tiny_vl as qwen_vl  # noqa: E402  (the test images and the JSON writer)
import gen_chat_template_golden  # noqa: E402  (Gemma 3's chat template)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(REPO, "tests", "data", "hf-tiny-gemma3-vl")
IMAGE_DIR = os.path.join(REPO, "tests", "data", "hf-tiny-vl", "images")

# ---------------------------------------------------------------------------------------------
# Tokenizer and processor
# ---------------------------------------------------------------------------------------------

# Gemma 3's special tokens, in the order of their ids in the real vocabulary (<pad> 0, <eos> 1,
# <bos> 2, <start_of_turn> 105, <end_of_turn> 106, <start_of_image> 255999, <end_of_image>
# 256000, <image_soft_token> 262144), appended after the 397 trained BPE tokens.
SPECIAL_TOKENS = [
    "<pad>",
    "<eos>",
    "<bos>",
    "<start_of_turn>",
    "<end_of_turn>",
    "<start_of_image>",
    "<end_of_image>",
    "<image_soft_token>",
]
BOI, EOI, IMAGE_TOKEN = "<start_of_image>", "<end_of_image>", "<image_soft_token>"

# Gemma 3 (google/gemma-3-*-it)'s chat template, as gen_chat_template_golden.py writes it
# out: BOS first, a system message folded into the first user turn followed by a blank line,
# text parts trimmed, <start_of_image> per image part (the processor expands it), the
# assistant role written as "model".
CHAT_TEMPLATE = gen_chat_template_golden.GEMMA3

IMAGE_SIZE = 64
PATCH_SIZE = 8
MM_TOKENS_PER_IMAGE = 16


def build_tokenizer():
    """gen_hf_tiny's tokenizer (same training, same 397 BPE tokens) with Gemma's specials."""
    saved = base.SPECIAL_TOKENS
    base.SPECIAL_TOKENS = SPECIAL_TOKENS  # build_tokenizer appends base.SPECIAL_TOKENS
    try:
        tok = base.build_tokenizer()
    finally:
        base.SPECIAL_TOKENS = saved
    assert tok.get_vocab_size(with_added_tokens=True) == base.BPE_VOCAB_SIZE + len(SPECIAL_TOKENS)
    return tok


def build_processor(tok):
    hf_tok = TokenizersBackend(
        tokenizer_object=tok,
        bos_token="<bos>",
        eos_token="<eos>",
        pad_token="<pad>",
        unk_token=None,
        add_bos_token=False,
        add_eos_token=False,
        clean_up_tokenization_spaces=False,
        model_max_length=512,
        extra_special_tokens={"boi_token": BOI, "eoi_token": EOI, "image_token": IMAGE_TOKEN},
    )
    # do_pan_and_scan stays unset (None), as on the Hub: Gemma3Processor's default (off) applies.
    image_processor = Gemma3ImageProcessor(size={"height": IMAGE_SIZE, "width": IMAGE_SIZE})
    return Gemma3Processor(
        image_processor=image_processor,
        tokenizer=hf_tok,
        chat_template=CHAT_TEMPLATE,
        image_seq_length=MM_TOKENS_PER_IMAGE,
    )


def fix_tokenizer_config(directory):
    """tokenizer_config.json with the Hub Gemma 3 spellings save_pretrained leaves out.

    transformers 5 writes boi_token / eoi_token / image_token at the top level and an empty
    extra_special_tokens list; Hub Gemma 3 checkpoints also list them in extra_special_tokens
    (a dict) and say add_bos_token / add_eos_token explicitly. Both load the same.
    """
    path = os.path.join(directory, "tokenizer_config.json")
    with open(path) as f:
        cfg = json.load(f)
    cfg["extra_special_tokens"] = {"boi_token": BOI, "eoi_token": EOI, "image_token": IMAGE_TOKEN}
    cfg["add_bos_token"] = False
    cfg["add_eos_token"] = False
    with open(path, "w") as f:
        json.dump(dict(sorted(cfg.items())), f, indent=2)
        f.write("\n")


def hub_preprocessor_config(image_processor):
    """preprocessor_config.json as Hub Gemma 3 checkpoints have it (same settings)."""
    cfg = image_processor.to_dict()
    cfg = {k: v for k, v in cfg.items() if not k.startswith("_")}
    cfg["resample"] = int(cfg["resample"])
    cfg["image_seq_length"] = MM_TOKENS_PER_IMAGE
    cfg["processor_class"] = "Gemma3Processor"
    # The Hub files have these as null (Gemma3Processor's defaults then apply: RGB
    # conversion on, pan-and-scan off).
    for key in ("do_convert_rgb", "do_pan_and_scan", "pan_and_scan_max_num_crops",
                "pan_and_scan_min_crop_size", "pan_and_scan_min_ratio_to_activate"):
        cfg[key] = None
    return dict(sorted(cfg.items()))


# ---------------------------------------------------------------------------------------------
# Model
# ---------------------------------------------------------------------------------------------

# Chosen (seed included) so that greedy continuations are varied, their top-1 / top-2 margins
# are not tiny, and the bidirectional image mask changes them.
SEED = 5000
WEIGHT_GAIN = 2.0  # text / vision matrices ~ N(0, (gain / sqrt(fan_in))^2)
EMBED_STD = 0.125  # token embeddings; times sqrt(hidden) = 8 in the model, so ~N(0, 1)
PROJ_GAIN = 2.0  # the 32 -> 64 projector matrix: image tokens about twice the text embeddings
POST_NORM = 2.0  # added to the (1 + w) post-attention / post-feedforward norms' w, so that
#                  the layers outweigh the embedding (else the tied model repeats its input)
FINAL_NORM = 3.0  # the final norm's w is centred here: (1 + w) ~ 4, logits spanning ~25 nats as a
#                   real model's (a larger gain would also amplify f16 rounding into the logits)
VISION_BIAS_STD = 0.2
POS_EMBED_STD = 0.5


def make_config(vocab, special):
    text = dict(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        vocab_size=vocab,
        max_position_embeddings=512,
        rms_norm_eps=1e-6,
        hidden_activation="gelu_pytorch_tanh",
        # Smaller than an image's 16 tokens, so the sliding mask of an image token is
        # AND(window, OR(causal, same image)) and both parts matter.
        sliding_window=8,
        # transformers 5 keys on layer_types; config.json keeps the old integer pattern as
        # "_sliding_window_pattern" / "sliding_window_pattern", so pass the matching 2.
        layer_types=["sliding_attention", "full_attention", "sliding_attention", "full_attention"],
        sliding_window_pattern=2,
        query_pre_attn_scalar=16,
        # Gemma 3 4B's RoPE: base 1e4 on sliding layers; base 1e6 with linear scaling
        # (positions / 8) on full-attention layers.
        rope_parameters={
            "full_attention": {"rope_type": "linear", "factor": 8.0, "rope_theta": 1000000.0},
            "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
        },
        attn_logit_softcapping=None,
        final_logit_softcapping=None,
        tie_word_embeddings=True,
        bos_token_id=special["<bos>"],
        eos_token_id=[special["<eos>"], special["<end_of_turn>"]],
        pad_token_id=special["<pad>"],
        initializer_range=0.02,
    )
    vision = dict(
        model_type="siglip_vision_model",
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_channels=3,
        image_size=IMAGE_SIZE,
        patch_size=PATCH_SIZE,
        layer_norm_eps=1e-6,
        hidden_act="gelu_pytorch_tanh",
        vision_use_head=False,
    )
    return Gemma3Config(
        text_config=text,
        vision_config=vision,
        mm_tokens_per_image=MM_TOKENS_PER_IMAGE,
        boi_token_index=special[BOI],
        eoi_token_index=special[EOI],
        image_token_index=special[IMAGE_TOKEN],
        tie_word_embeddings=True,
    )


def randomize_(model):
    """Every parameter drawn explicitly, in named_parameters order, from one seeded generator.

    Gemma's (1 + w) RMSNorms (text norms, q_norm / k_norm, the projector's mm_soft_emb_norm):
    w = 0.3 N(0,1), plus POST_NORM on post-attention / post-feedforward norms and FINAL_NORM
    on the final norm. SigLIP's LayerNorms: weight 1 + 0.3 N(0,1), bias 0.2 N(0,1). Vision
    biases VISION_BIAS_STD N(0,1), position embeddings POS_EMBED_STD N(0,1), token embeddings
    EMBED_STD N(0,1), the projector matrix [32, 64] PROJ_GAIN / sqrt(32) N(0,1), every other
    matrix (linear, conv) WEIGHT_GAIN / sqrt(fan_in) N(0,1).
    """
    g = torch.Generator().manual_seed(SEED)
    with torch.no_grad():
        for name, p in model.named_parameters():
            r = torch.randn(p.shape, generator=g)
            vision = ".vision_tower." in name
            if name.endswith("norm.weight") and not vision:  # Gemma3RMSNorm, (1 + w)
                p.copy_(0.3 * r)
                if name == "model.language_model.norm.weight":
                    p.add_(FINAL_NORM)
                elif ".post_attention_" in name or ".post_feedforward_" in name:
                    p.add_(POST_NORM)
            elif vision and ("layer_norm" in name or "layernorm" in name):
                p.copy_(1.0 + 0.3 * r if name.endswith(".weight") else 0.2 * r)
            elif name.endswith(".bias"):
                p.copy_(VISION_BIAS_STD * r)
            elif name.endswith("position_embedding.weight"):
                p.copy_(POS_EMBED_STD * r)
            elif name.endswith("embed_tokens.weight"):
                p.copy_(EMBED_STD * r)
            elif name.endswith("mm_input_projection_weight"):  # [in 32, out 64]
                p.copy_(PROJ_GAIN / p.shape[0] ** 0.5 * r)
            else:
                fan_in = p[0].numel()
                p.copy_(WEIGHT_GAIN / fan_in**0.5 * r)


HUB_VISION_PREFIX = "vision_tower.vision_model."


def save_model(model, directory):
    """save_pretrained, with the vision tower under the Hub checkpoints' tensor names.

    transformers 5 keeps SigLIP without its old "vision_model" level and converts the Hub's
    vision_tower.vision_model.* names on loading; a model it loaded that way is saved under
    those names again, but a freshly built one is saved as vision_tower.embeddings.* etc.,
    which no Hub checkpoint (nor llama.cpp's converter) uses. So: save, rename the vision
    tensors to the Hub names, load that, and save the loaded model; what lands in `directory`
    is what save_pretrained writes for a Gemma 3 model loaded from the Hub.
    """
    tmp = directory.rstrip("/") + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    path = os.path.join(tmp, "model.safetensors")
    tensors = load_file(path)
    tensors = {(HUB_VISION_PREFIX + k[len("vision_tower."):]
                if k.startswith("vision_tower.") and not k.startswith(HUB_VISION_PREFIX) else k): v
               for k, v in tensors.items()}
    save_file(tensors, path, metadata={"format": "pt"})
    reloaded = Gemma3ForConditionalGeneration.from_pretrained(tmp, dtype=torch.float32)
    reloaded_state = reloaded.state_dict()
    for k, v in model.state_dict().items():
        assert torch.equal(reloaded_state[k], v), k
    reloaded.save_pretrained(directory)
    shutil.rmtree(tmp)
    with safe_open(os.path.join(directory, "model.safetensors"), framework="pt") as f:
        keys = list(f.keys())
    assert sum(k.startswith(HUB_VISION_PREFIX) for k in keys) == sum(
        k.startswith("vision_tower.") for k in keys) > 0, keys


# ---------------------------------------------------------------------------------------------
# Images and cases
# ---------------------------------------------------------------------------------------------

# name, file (in tests/data/hf-tiny-vl/images), width, height: scripts/gen_hf_tiny_vl.py's.
IMAGES = [(name, file, w, h) for name, file, w, h, _ in qwen_vl.IMAGES]


def load_image(file):
    return Image.open(os.path.join(IMAGE_DIR, file)).convert("RGB")


def pixels_sha256(img):
    return hashlib.sha256(np.asarray(img, dtype=np.uint8).tobytes()).hexdigest()


CASES = [
    {
        "name": "text",
        "images": [],
        "messages": [{"role": "user", "content": [
            {"type": "text", "text": "What is the capital of France?"}]}],
    },
    {
        "name": "one_image",
        "images": ["small"],
        "messages": [{"role": "user", "content": [
            {"type": "image", "image": "small"},
            {"type": "text", "text": "Describe the image."}]}],
    },
    {
        "name": "two_images",
        "images": ["wide", "large"],
        "messages": [{"role": "user", "content": [
            {"type": "image", "image": "wide"},
            {"type": "text", "text": "and"},
            {"type": "image", "image": "large"},
            {"type": "text", "text": "What is different between these pictures?"}]}],
    },
    {
        "name": "system_image",
        "images": ["large"],
        "messages": [
            {"role": "system", "content": [{"type": "text", "text": "You are a helpful assistant."}]},
            {"role": "user", "content": [
                {"type": "text", "text": "Look at this picture:"},
                {"type": "image", "image": "large"},
                {"type": "text", "text": "What colors do you see?"}]},
        ],
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
    return processor.apply_chat_template(
        messages_for(case),
        add_generation_prompt=True,
        tokenize=True,
        return_dict=True,
        return_tensors="pt",
    )


# ---------------------------------------------------------------------------------------------
# References
# ---------------------------------------------------------------------------------------------

@torch.no_grad()
def vision_trace(model, pixel_values):
    """Vision tower and projector on [n, 3, 64, 64] pixels, with per-stage traces."""
    tower = model.model.vision_tower
    proj = model.model.multi_modal_projector
    captured = {}
    hooks = [tower.embeddings.register_forward_hook(
        lambda m, i, o: captured.__setitem__("embeddings", o))]
    for k, layer in enumerate(tower.encoder.layers):
        hooks.append(layer.register_forward_hook(
            lambda m, i, o, k=k: captured.__setitem__(f"layer{k}", o[0] if isinstance(o, tuple) else o)))
    hooks.append(proj.avg_pool.register_forward_hook(
        lambda m, i, o: captured.__setitem__("pooled", o.flatten(2).transpose(1, 2))))
    try:
        out = model.model.get_image_features(pixel_values.to(torch.float32), return_dict=True)
    finally:
        for h in hooks:
            h.remove()
    return {
        "last_hidden_state": out.last_hidden_state,  # after post_layernorm, [n, 64, 32]
        "projector_output": out.pooler_output,  # [n, 16, 64]
        "trace": captured,
    }


def mask_rows(mask):
    """An additive [1, 1, q, k] attention mask as one '1' (attend) / '0' string per query."""
    allowed = mask[0, 0] == 0
    return ["".join("1" if x else "0" for x in row) for row in allowed.tolist()]


@torch.no_grad()
def masks(model, inputs):
    """The eager masks the sliding (layer 0) and full (layer 1) attention layers receive."""
    got = {}
    hooks = []
    for idx in (0, 1):
        attn = model.model.language_model.layers[idx].self_attn
        hooks.append(attn.register_forward_pre_hook(
            lambda m, a, kw, idx=idx: got.__setitem__(idx, kw["attention_mask"]), with_kwargs=True))
    try:
        model(**inputs, use_cache=False)
    finally:
        for h in hooks:
            h.remove()
    types = model.config.text_config.layer_types
    assert types[0] == "sliding_attention" and types[1] == "full_attention", types
    return {"sliding": mask_rows(got[0]), "full": mask_rows(got[1])}


@torch.no_grad()
def greedy(model, inputs, n_prompt):
    out = model.generate(
        **inputs,
        do_sample=False,
        max_new_tokens=N_GREEDY,
        eos_token_id=None,  # never stop early: always N_GREEDY tokens
        pad_token_id=None,
        output_logits=True,
        return_dict_in_generate=True,
    )
    tokens = out.sequences[0, n_prompt:].tolist()
    assert len(tokens) == N_GREEDY, tokens
    return tokens, [round(base.top2_margin(step[0]), 6) for step in out.logits]


@torch.no_grad()
def reference(model, inputs):
    """Log-softmax at a few places and greedy continuations, bidirectional and causal."""
    model.eval()
    ids = inputs["input_ids"][0].tolist()
    tt = inputs["token_type_ids"]
    logits = model(**inputs, use_cache=False).logits[0]
    tokens, margins = greedy(model, inputs, len(ids))
    # Cross-check the cached generate path (bidirectional mask on the prefill only) against a
    # full recompute without cache over prompt + greedy tokens (type 0: text).
    seq = torch.tensor([ids + tokens])
    full = dict(inputs)
    full["input_ids"] = seq
    full["attention_mask"] = torch.ones_like(seq)
    full["token_type_ids"] = torch.cat([tt, torch.zeros((1, N_GREEDY), dtype=tt.dtype)], 1)
    recomputed = model(**full, use_cache=False).logits[0][len(ids) - 1 : -1].argmax(-1).tolist()
    if recomputed != tokens:
        print(f"  warning: cached / uncached greedy differ: {tokens} vs {recomputed}",
              file=sys.stderr)
    ref = {
        "logprobs_first": base.log_softmax_list(logits[0]),
        "logprobs_last": base.log_softmax_list(logits[-1]),
        "greedy_tokens": tokens,
        "greedy_margins": margins,
    }
    eoi = model.config.eoi_token_id
    if eoi in ids:
        pos = ids.index(eoi)
        ref["first_eoi_position"] = pos
        ref["logprobs_first_eoi"] = base.log_softmax_list(logits[pos])
    # The same model with a purely causal mask: no token_type_ids.
    causal_inputs = {k: v for k, v in inputs.items() if k != "token_type_ids"}
    c_logits = model(**causal_inputs, use_cache=False).logits[0]
    c_tokens, c_margins = greedy(model, causal_inputs, len(ids))
    lp = torch.log_softmax(logits.double(), -1)
    c_lp = torch.log_softmax(c_logits.double(), -1)
    ref["causal"] = {
        "logprobs_last": base.log_softmax_list(c_logits[-1]),
        "greedy_tokens": c_tokens,
        "greedy_margins": c_margins,
        "max_abs_logprob_diff_last": round(float((lp[-1] - c_lp[-1]).abs().max()), 6),
        "max_abs_logprob_diff_any_position": round(float((lp - c_lp).abs().max()), 6),
    }
    if eoi in ids:
        ref["causal"]["logprobs_first_eoi"] = base.log_softmax_list(c_logits[ref["first_eoi_position"]])
    return ref


def image_record(model, processor, name, file, w, h):
    ip = processor.image_processor
    img = load_image(file)
    pv = ip(images=[img], return_tensors="pt")["pixel_values"]
    assert list(pv.shape) == [1, 3, IMAGE_SIZE, IMAGE_SIZE], pv.shape
    # The uint8 image the torchvision backend resizes to (bilinear, antialias), so a
    # reimplementation can check its resize separately from the normalisation.
    chw = torch.from_numpy(np.array(img)).permute(2, 0, 1).contiguous()
    resized = ip.resize(chw[None], size=ip.size, resample=ip.resample)[0]
    assert resized.dtype == torch.uint8 and list(resized.shape) == [3, IMAGE_SIZE, IMAGE_SIZE]
    again = ip(images=[resized.permute(1, 2, 0).numpy()], return_tensors="pt")["pixel_values"]
    assert torch.equal(again, pv), "resize + rest != processor"
    pil_ip = Gemma3ImageProcessorPil(**{k: v for k, v in ip.to_dict().items()
                                        if k in ("size", "resample", "image_mean", "image_std")})
    pil_pv = pil_ip(images=[img], return_tensors="pt")["pixel_values"]
    v = vision_trace(model, pv)
    return {
        "file": "../hf-tiny-vl/images/" + file,
        "width": w,
        "height": h,
        "rgb_sha256": pixels_sha256(img),
        "resized_rgb_hwc": resized.permute(1, 2, 0).reshape(-1).tolist(),
        "pil_backend_max_abs_diff": round(float((pil_pv - pv).abs().max()), 6),
        "pixel_values": rounded(pv[0]),
        "vision_trace": {k: rounded(t[0]) for k, t in v["trace"].items()},
        "vision_last_hidden_state": rounded(v["last_hidden_state"][0]),
        "projector_output": rounded(v["projector_output"][0]),
    }


# ---------------------------------------------------------------------------------------------
# Generate
# ---------------------------------------------------------------------------------------------

def generate():
    if os.path.isdir(OUT):
        shutil.rmtree(OUT)
    os.makedirs(OUT)

    tok = build_tokenizer()
    vocab = tok.get_vocab_size(with_added_tokens=True)
    special = {t: tok.token_to_id(t) for t in SPECIAL_TOKENS}
    processor = build_processor(tok)
    processor.save_pretrained(OUT)
    fix_tokenizer_config(OUT)
    with open(os.path.join(OUT, "preprocessor_config.json"), "w") as f:
        json.dump(hub_preprocessor_config(processor.image_processor), f, indent=2)
        f.write("\n")

    config = make_config(vocab, special)
    torch.manual_seed(SEED)
    model = Gemma3ForConditionalGeneration(config)
    randomize_(model)
    save_model(model, OUT)

    # A fresh instance holding the saved weights (non-persistent buffers recomputed).
    state = {k: v.clone() for k, v in model.state_dict().items()}
    model = Gemma3ForConditionalGeneration(config)
    model.load_state_dict(state, strict=True)
    model.set_attn_implementation("eager")
    model.generation_config.eos_token_id = None
    model.eval()

    images = {}
    for name, file, w, h in IMAGES:
        images[name] = image_record(model, processor, name, file, w, h)
        out = torch.tensor(images[name]["projector_output"])
        print(f"  image {name}: {w}x{h}, projector output std {float(out.std()):.3f}")

    # The tower and projector on a batch of images equal the runs one at a time.
    pv = processor.image_processor(images=[load_image(f) for _, f, *_ in IMAGES],
                                   return_tensors="pt")["pixel_values"]
    both = vision_trace(model, pv)["projector_output"]
    sep = torch.tensor([images[n]["projector_output"] for n, *_ in IMAGES])
    assert (both - sep).abs().max() < 1e-5, (both - sep).abs().max()

    cases = []
    for case in CASES:
        inputs = processor_inputs(processor, case)
        text = processor.apply_chat_template(case["messages"], add_generation_prompt=True,
                                             tokenize=False)
        expanded = text.replace(BOI, processor.full_image_sequence)
        ids = inputs["input_ids"][0].tolist()
        assert ids == tok.encode(expanded, add_special_tokens=False).ids, case["name"]
        tt = inputs["token_type_ids"][0].tolist()
        assert tt == [int(i == special[IMAGE_TOKEN]) for i in ids], tt
        assert ids.count(special["<bos>"]) == 1 and ids[0] == special["<bos>"], ids
        n_img = len(case["images"])
        assert ids.count(special[IMAGE_TOKEN]) == MM_TOKENS_PER_IMAGE * n_img
        if n_img:
            pv = inputs["pixel_values"]
            want = torch.tensor([images[n]["pixel_values"] for n in case["images"]])
            assert (pv - want).abs().max() < 1e-6
        ref = reference(model, inputs)
        rec = {"name": case["name"], "images": case["images"], "messages": case["messages"],
               "text": text, "expanded_text": expanded, "input_ids": ids, "token_type_ids": tt,
               "image_token_positions": [i for i, t in enumerate(tt) if t == 1]}
        if n_img:
            rec["masks"] = masks(model, inputs)
        rec.update(ref)
        cases.append(rec)
        c = ref["causal"]
        print(f"  {case['name']}: {len(ids)} ids, greedy {ref['greedy_tokens']}, min margin "
              f"{min(ref['greedy_margins']):.3f}; causal greedy {c['greedy_tokens']}, "
              f"|dlogprob| last {c['max_abs_logprob_diff_last']:.4f} "
              f"any {c['max_abs_logprob_diff_any_position']:.4f}")

    ip = processor.image_processor
    golden = {
        "generator": "scripts/gen_hf_tiny_gemma3_vl.py",
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
            "class": "Gemma3ForConditionalGeneration",
            "model_type": config.model_type,
            "saved_dtype": "float32",
            "seed": SEED,
            "mm_tokens_per_image": MM_TOKENS_PER_IMAGE,
            "image_size": IMAGE_SIZE,
            "patch_size": PATCH_SIZE,
            "layer_types": list(config.text_config.layer_types),
            "sliding_window": config.text_config.sliding_window,
        },
        "tokenizer": {
            "vocab_size": vocab,
            "special_tokens": special,
            "bos_token": "<bos>",
            "eos_token": "<eos>",
            "pad_token": "<pad>",
            "boi_token": BOI,
            "eoi_token": EOI,
            "image_token": IMAGE_TOKEN,
            "add_bos_token": False,
            "full_image_sequence": processor.full_image_sequence,
        },
        "image_processor": {
            "class": type(ip).__name__,
            "backend": "torchvision",
            "size": [IMAGE_SIZE, IMAGE_SIZE],
            "resample": "bilinear (torchvision, antialias=True, on uint8 CHW tensors; "
                        "every image is resized to 64x64 whatever its aspect ratio)",
            "image_mean": list(ip.image_mean),
            "image_std": list(ip.image_std),
            "normalize": "float32 (x - 255 * mean) / (255 * std) on the uint8 values "
                         "(rescale 1/255 fused into normalize), i.e. x / 127.5 - 1",
            "do_pan_and_scan": False,
        },
        "reference": (
            "float32, eager attention, from the saved weights. images[name]: file (relative to "
            "this file), rgb_sha256 of the decoded RGB pixels, resized_rgb_hwc (the 64x64 uint8 "
            "image the torchvision backend resizes to, row-major HWC), pil_backend_max_abs_diff "
            "(how far the PIL backend Gemma3ImageProcessorPil lands from the default "
            "torchvision one), pixel_values ([3, 64, 64], CHW), vision_trace (embeddings: "
            "patch conv + position embedding, layer0 / layer1: encoder layer outputs, each "
            "[64 patches, 32] in row-major patch order; pooled: the 2x2 average pool of "
            "vision_last_hidden_state, [16, 32] row-major), vision_last_hidden_state "
            "(model.model.vision_tower(...).last_hidden_state, after post_layernorm, [64, 32]), "
            "projector_output (model.model.get_image_features(...).pooler_output: pool, "
            "(1 + w) RMSNorm, matmul with mm_input_projection_weight [32, 64]; [16, 64], "
            "the embeddings that replace the 16 <image_soft_token> ids in order). cases[]: "
            "text (the chat template's output), expanded_text (text with each "
            "<start_of_image> replaced by tokenizer.full_image_sequence, which is what the "
            "processor tokenizes), input_ids (BOS from the template only), token_type_ids "
            "(what Gemma3Processor returns: 1 at <image_soft_token> ids only, 0 elsewhere "
            "incl. <start_of_image> / <end_of_image>), image_token_positions, masks (image "
            "cases: per query row a string over keys, '1' = attended, as the eager attention of "
            "layer 0 (sliding) and layer 1 (full) receives them on the prefill; full = "
            "causal OR same-image, sliding = (k > q - 8) AND (causal OR same-image), so an image "
            "token sees every later token of its own image however far, but only the 7 "
            "previous positions), log-softmax over the vocabulary at position 0 "
            "(logprobs_first), at the last prompt position (logprobs_last) and at the first "
            "<end_of_image> (logprobs_first_eoi), 16 greedy tokens (generate(do_sample=False), "
            "no EOS stop, token_type_ids passed: the bidirectional mask applies on the prefill, "
            "decode steps are causal) and the top-1 minus top-2 logit margin at each greedy "
            "step. causal: the same with token_type_ids left out (a plain causal / sliding "
            "causal mask everywhere), with the max |log-prob difference| to the bidirectional "
            "run at the last position and over all prompt positions."
        ),
        "images": images,
        "cases": cases,
    }
    with open(os.path.join(OUT, "golden.json"), "w") as f:
        f.write(qwen_vl.dump_json(golden))
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
    if type(model) is not Gemma3ForConditionalGeneration:
        fail(f"loaded {type(model).__name__}")
    if type(processor) is not Gemma3Processor:
        fail(f"loaded {type(processor).__name__}")
    with safe_open(os.path.join(OUT, "model.safetensors"), framework="pt") as f:
        keys = list(f.keys())
        dtypes = {str(f.get_slice(k).get_dtype()) for k in keys}
    if dtypes != {"F32"}:
        fail(f"tensors stored as {dtypes}")
    if "lm_head.weight" in keys:
        fail("lm_head.weight saved although the embeddings are tied")
    prefixes = ("language_model.model.", HUB_VISION_PREFIX, "multi_modal_projector.")
    if not all(k.startswith(prefixes) for k in keys):
        fail(f"unexpected tensor names {[k for k in keys if not k.startswith(prefixes)]}")

    # The Hub-style preprocessor_config.json describes the same image processor.
    with open(os.path.join(OUT, "preprocessor_config.json")) as f:
        hub = json.load(f)
    from_hub = Gemma3ImageProcessor(**{k: v for k, v in hub.items() if v is not None and k not in (
        "image_processor_type", "processor_class", "image_seq_length")})
    if from_hub.to_dict() != processor.image_processor.to_dict():
        fail("preprocessor_config.json and processor_config.json disagree")
    if processor.image_seq_length != MM_TOKENS_PER_IMAGE:
        fail(f"image_seq_length {processor.image_seq_length}")

    ip = processor.image_processor
    worst_px = worst_v = 0.0
    for name, file, w, h in IMAGES:
        rec = golden["images"][name]
        img = load_image(file)
        if pixels_sha256(img) != rec["rgb_sha256"]:
            fail(f"{file}: pixels differ from the recorded image")
        pv = ip(images=[img], return_tensors="pt")["pixel_values"]
        d = max_diff(rounded(pv[0]), rec["pixel_values"])
        worst_px = max(worst_px, d)
        if d > 1e-5:
            fail(f"{name}: pixel_values differ by {d}")
        v = vision_trace(model, pv)
        d = max(max_diff(rounded(v["last_hidden_state"][0]), rec["vision_last_hidden_state"]),
                max_diff(rounded(v["projector_output"][0]), rec["projector_output"]))
        for k, t in v["trace"].items():
            d = max(d, max_diff(rounded(t[0]), rec["vision_trace"][k]))
        worst_v = max(worst_v, d)
        if d > atol:
            fail(f"{name}: vision outputs differ by {d}")

    worst = 0.0
    for case in golden["cases"]:
        spec = next(c for c in CASES if c["name"] == case["name"])
        inputs = processor_inputs(processor, spec)
        ids = inputs["input_ids"][0].tolist()
        if ids != case["input_ids"]:
            fail(f"{case['name']}: input ids differ")
            continue
        if inputs["token_type_ids"][0].tolist() != case["token_type_ids"]:
            fail(f"{case['name']}: token_type_ids differ")
        text = processor.apply_chat_template(spec["messages"], add_generation_prompt=True,
                                             tokenize=False)
        if text != case["text"]:
            fail(f"{case['name']}: chat template text differs")
        if "masks" in case and masks(model, inputs) != case["masks"]:
            fail(f"{case['name']}: attention masks differ")
        ref = reference(model, inputs)
        for key in ("greedy_tokens",):
            if ref[key] != case[key]:
                fail(f"{case['name']}: {key} differ")
            if ref["causal"][key] != case["causal"][key]:
                fail(f"{case['name']}: causal {key} differ")
        pairs = [(ref[k], case[k], k) for k in ("logprobs_first", "logprobs_last",
                                                "logprobs_first_eoi") if k in case]
        pairs += [(ref["causal"][k], case["causal"][k], "causal " + k)
                  for k in ("logprobs_last", "logprobs_first_eoi") if k in case["causal"]]
        for got, want, key in pairs:
            diff = max_diff(got, want)
            worst = max(worst, diff)
            if diff > atol:
                fail(f"{case['name']}: {key} differs by {diff}")
    print(f"check: reloaded as {type(model).__name__} + {type(processor).__name__} "
          f"({type(processor.tokenizer).__name__}, {type(ip).__name__}); max |pixel diff| "
          f"{worst_px:.2e}, max |vision diff| {worst_v:.2e}, max |logprob diff| {worst:.2e}")
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
