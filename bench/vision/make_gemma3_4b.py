#!/usr/bin/env python3
"""Random weights at Gemma 3 4B's real dimensions (SigLIP 27 x 1152 at 896 pixels, language
34 x 2560), for timing only: speed does not depend on the values. Writes a Hugging Face
directory, then the files llama.cpp users run, made by llama.cpp's own tools: the language
model as GGUF (convert_hf_to_gguf.py to Q8_0, llama-quantize to Q4_K_M) and the vision tower
as an f16 mmproj (convert_hf_to_gguf.py --mmproj). The Hugging Face weights and the Q8_0 file
are removed once the Q4_K_M file exists (together they take 13 GB).

    /work/venv-hf/bin/python bench/vision/make_gemma3_4b.py OUT_DIR [LLAMA_CPP_DIR]

Needs torch, safetensors, numpy and the llama.cpp checkout with llama-quantize built
(bench/peers/build-llama-cpp.sh). The tokenizer, chat template and processor files are the tiny
test checkpoint's (tests/data/hf-tiny-gemma3-vl, whose special tokens sit where the model's
embedding rows exist), padded by the converter to the real vocabulary of 262208 rows; the
image processor is set to Gemma 3's 896 x 896 and 256 tokens per image.
"""

import json
import shutil
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

from llama_files import convert_and_quantize

ROOT = Path(__file__).resolve().parents[2]
TINY = ROOT / "tests/data/hf-tiny-gemma3-vl"

LAYERS = 34
TEXT = dict(hidden_size=2560, intermediate_size=10240, num_hidden_layers=LAYERS,
            num_attention_heads=8, num_key_value_heads=4, head_dim=256, query_pre_attn_scalar=256,
            sliding_window=1024, vocab_size=262208, max_position_embeddings=131072,
            layer_types=["full_attention" if (i + 1) % 6 == 0 else "sliding_attention"
                         for i in range(LAYERS)])
VISION = dict(hidden_size=1152, intermediate_size=4304, num_hidden_layers=27,
              num_attention_heads=16, image_size=896, patch_size=14, layer_norm_eps=1e-6,
              hidden_act="gelu_pytorch_tanh", vision_use_head=False, num_channels=3,
              model_type="siglip_vision_model")
TOKENS_PER_IMAGE = 256


def weights() -> dict:
    g = torch.Generator().manual_seed(0)

    def r(*shape):
        return (torch.randn(*shape, generator=g) * 0.02).half()

    def zeros(n):
        return torch.zeros(n, dtype=torch.float16)

    def ones(n):
        return torch.ones(n, dtype=torch.float16)

    t = {}
    d, ff, p = VISION["hidden_size"], VISION["intermediate_size"], VISION["patch_size"]
    v = "vision_tower.vision_model."
    t[v + "embeddings.patch_embedding.weight"] = r(d, 3, p, p)
    t[v + "embeddings.patch_embedding.bias"] = r(d)
    t[v + "embeddings.position_embedding.weight"] = r((VISION["image_size"] // p) ** 2, d)
    for i in range(VISION["num_hidden_layers"]):
        b = f"{v}encoder.layers.{i}."
        for n in ["layer_norm1", "layer_norm2"]:
            t[b + n + ".weight"], t[b + n + ".bias"] = ones(d), zeros(d)
        for n in ["q_proj", "k_proj", "v_proj", "out_proj"]:
            t[b + f"self_attn.{n}.weight"], t[b + f"self_attn.{n}.bias"] = r(d, d), r(d)
        t[b + "mlp.fc1.weight"], t[b + "mlp.fc1.bias"] = r(ff, d), r(ff)
        t[b + "mlp.fc2.weight"], t[b + "mlp.fc2.bias"] = r(d, ff), r(d)
    t[v + "post_layernorm.weight"], t[v + "post_layernorm.bias"] = ones(d), zeros(d)
    h = TEXT["hidden_size"]
    t["multi_modal_projector.mm_input_projection_weight"] = r(d, h)
    t["multi_modal_projector.mm_soft_emb_norm.weight"] = zeros(d)

    f, hd = TEXT["intermediate_size"], TEXT["head_dim"]
    q, kv = TEXT["num_attention_heads"] * hd, TEXT["num_key_value_heads"] * hd
    m = "language_model.model."
    t[m + "embed_tokens.weight"] = r(TEXT["vocab_size"], h)
    t[m + "norm.weight"] = zeros(h)
    for i in range(LAYERS):
        b = f"{m}layers.{i}."
        for n in ["input_layernorm", "post_attention_layernorm", "pre_feedforward_layernorm",
                  "post_feedforward_layernorm"]:
            t[b + n + ".weight"] = zeros(h)
        t[b + "self_attn.q_norm.weight"], t[b + "self_attn.k_norm.weight"] = zeros(hd), zeros(hd)
        t[b + "self_attn.q_proj.weight"] = r(q, h)
        t[b + "self_attn.k_proj.weight"], t[b + "self_attn.v_proj.weight"] = r(kv, h), r(kv, h)
        t[b + "self_attn.o_proj.weight"] = r(h, q)
        t[b + "mlp.gate_proj.weight"], t[b + "mlp.up_proj.weight"] = r(f, h), r(f, h)
        t[b + "mlp.down_proj.weight"] = r(h, f)
    return t


def main() -> None:
    out = Path(sys.argv[1])
    llama = Path(sys.argv[2] if len(sys.argv) > 2 else Path.home() / ".cache/weft-peers/llama.cpp-0.3.36")
    hf = out / "hf"
    q4 = out / "model-Q4_K_M.gguf"
    mmproj = out / "mmproj-f16.gguf"
    hf.mkdir(parents=True, exist_ok=True)
    config = json.loads((TINY / "config.json").read_text())
    config["text_config"].update(TEXT)
    config["text_config"].pop("sliding_window_pattern", None)
    config["text_config"].pop("_sliding_window_pattern", None)
    config["vision_config"] = VISION
    config["mm_tokens_per_image"] = TOKENS_PER_IMAGE
    (hf / "config.json").write_text(json.dumps(config, indent=2))
    for name in ["tokenizer_config.json", "chat_template.jinja", "generation_config.json"]:
        shutil.copy(TINY / name, hf / name)
    # The converter cuts the embedding to the tokenizer's size (Gemma's checkpoints pad it):
    # unused tokens fill the vocabulary up to the model's rows, as in the real tokenizer.
    tokenizer = json.loads((TINY / "tokenizer.json").read_text())
    vocab = tokenizer["model"]["vocab"]
    used = len(vocab) + len(tokenizer["added_tokens"])
    vocab.update({f"<unused{i}>": used + i for i in range(TEXT["vocab_size"] - used)})
    (hf / "tokenizer.json").write_text(json.dumps(tokenizer))
    for name in ["preprocessor_config.json", "processor_config.json"]:
        pre = json.loads((TINY / name).read_text())
        image = pre.get("image_processor", pre)
        image["size"] = {"height": 896, "width": 896}
        image["image_seq_length"] = TOKENS_PER_IMAGE
        pre["image_seq_length"] = TOKENS_PER_IMAGE
        (hf / name).write_text(json.dumps(pre, indent=2))
    if not (q4.exists() and mmproj.exists()) and not (hf / "model.safetensors").exists():
        save_file(weights(), str(hf / "model.safetensors"))

    convert_and_quantize(hf, out, llama, intermediate="q8_0", keep_intermediate=False)
    (hf / "model.safetensors").unlink(missing_ok=True)

if __name__ == "__main__":
    main()
