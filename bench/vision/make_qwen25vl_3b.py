#!/usr/bin/env python3
"""Random weights at Qwen2.5-VL-3B-Instruct's real dimensions (vision 32 x 1280, language
36 x 2048), for timing only: speed does not depend on the values. Writes a Hugging Face
directory, then the files llama.cpp users run, made by llama.cpp's own tools: the language
model as GGUF (convert_hf_to_gguf.py to f16, llama-quantize to Q4_K_M) and the vision tower
as an f16 mmproj (convert_hf_to_gguf.py --mmproj).

    /work/venv-hf/bin/python bench/vision/make_qwen25vl_3b.py OUT_DIR [LLAMA_CPP_DIR]

Needs torch, safetensors, numpy, sentencepiece and the llama.cpp checkout with llama-quantize
built (bench/peers/build-llama-cpp.sh). The tokenizer and chat template are the tiny test
checkpoint's (tests/data/hf-tiny-vl; its special tokens sit where the model's embedding rows
exist), padded by the converter to the real vocabulary of 151936 rows.
"""

import json
import shutil
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

from llama_files import convert_and_quantize

ROOT = Path(__file__).resolve().parents[2]
TINY = ROOT / "tests/data/hf-tiny-vl"

TEXT = dict(hidden_size=2048, intermediate_size=11008, num_hidden_layers=36,
            num_attention_heads=16, num_key_value_heads=2, vocab_size=151936)
VISION = dict(depth=32, hidden_size=1280, intermediate_size=3420, num_heads=16,
              out_hidden_size=2048, patch_size=14, spatial_merge_size=2, temporal_patch_size=2,
              window_size=112, fullatt_block_indexes=[7, 15, 23, 31], in_channels=3,
              hidden_act="silu", tokens_per_second=2, model_type="qwen2_5_vl")


def weights() -> dict:
    g = torch.Generator().manual_seed(0)

    def r(*shape):
        return (torch.randn(*shape, generator=g) * 0.02).half()

    def ones(n):
        return torch.ones(n, dtype=torch.float16)

    t = {}
    d, ff = VISION["hidden_size"], VISION["intermediate_size"]
    t["visual.patch_embed.proj.weight"] = r(d, 3, 2, 14, 14)
    for i in range(VISION["depth"]):
        b = f"visual.blocks.{i}."
        t[b + "norm1.weight"], t[b + "norm2.weight"] = ones(d), ones(d)
        t[b + "attn.qkv.weight"], t[b + "attn.qkv.bias"] = r(3 * d, d), r(3 * d)
        t[b + "attn.proj.weight"], t[b + "attn.proj.bias"] = r(d, d), r(d)
        for n, (o, k) in {"gate_proj": (ff, d), "up_proj": (ff, d), "down_proj": (d, ff)}.items():
            t[b + f"mlp.{n}.weight"], t[b + f"mlp.{n}.bias"] = r(o, k), r(o)
    t["visual.merger.ln_q.weight"] = ones(d)
    t["visual.merger.mlp.0.weight"], t["visual.merger.mlp.0.bias"] = r(4 * d, 4 * d), r(4 * d)
    out = VISION["out_hidden_size"]
    t["visual.merger.mlp.2.weight"], t["visual.merger.mlp.2.bias"] = r(out, 4 * d), r(out)

    h, f = TEXT["hidden_size"], TEXT["intermediate_size"]
    kv = h // TEXT["num_attention_heads"] * TEXT["num_key_value_heads"]
    t["model.embed_tokens.weight"] = r(TEXT["vocab_size"], h)
    t["model.norm.weight"] = ones(h)
    for i in range(TEXT["num_hidden_layers"]):
        b = f"model.layers.{i}."
        t[b + "input_layernorm.weight"], t[b + "post_attention_layernorm.weight"] = ones(h), ones(h)
        t[b + "self_attn.q_proj.weight"], t[b + "self_attn.q_proj.bias"] = r(h, h), r(h)
        t[b + "self_attn.k_proj.weight"], t[b + "self_attn.k_proj.bias"] = r(kv, h), r(kv)
        t[b + "self_attn.v_proj.weight"], t[b + "self_attn.v_proj.bias"] = r(kv, h), r(kv)
        t[b + "self_attn.o_proj.weight"] = r(h, h)
        t[b + "mlp.gate_proj.weight"], t[b + "mlp.up_proj.weight"] = r(f, h), r(f, h)
        t[b + "mlp.down_proj.weight"] = r(h, f)
    return t


def main() -> None:
    out = Path(sys.argv[1])
    llama = Path(sys.argv[2] if len(sys.argv) > 2 else Path.home() / ".cache/weft-peers/llama.cpp-0.3.36")
    hf = out / "hf"
    hf.mkdir(parents=True, exist_ok=True)
    config = json.loads((TINY / "config.json").read_text())
    config["text_config"].update(TEXT, max_position_embeddings=128000, tie_word_embeddings=True,
                                 layer_types=["full_attention"] * TEXT["num_hidden_layers"])
    config["text_config"]["rope_parameters"]["mrope_section"] = [16, 24, 24]
    config["vision_config"] = VISION
    config["tie_word_embeddings"] = True
    (hf / "config.json").write_text(json.dumps(config, indent=2))
    for name in ["tokenizer.json", "tokenizer_config.json", "chat_template.jinja",
                 "generation_config.json", "processor_config.json"]:
        shutil.copy(TINY / name, hf / name)
    # Qwen2.5-VL's own pixel bounds, not the tiny checkpoint's.
    pre = json.loads((TINY / "preprocessor_config.json").read_text())
    pre.update(max_pixels=12845056, min_pixels=3136, size={"shortest_edge": 3136, "longest_edge": 12845056})
    (hf / "preprocessor_config.json").write_text(json.dumps(pre, indent=2))
    if not (hf / "model.safetensors").exists():
        save_file(weights(), str(hf / "model.safetensors"))

    convert_and_quantize(hf, out, llama)

if __name__ == "__main__":
    main()
