#!/usr/bin/env python3
"""Tiny random Hugging Face text checkpoints plus transformers reference outputs.

weft's safetensors / HF-directory loader is tested against these: each model directory is
exactly what `save_pretrained` writes (config.json, generation_config.json, *.safetensors),
plus a copy of one shared byte-level BPE tokenizer, and golden.json holds what transformers
computes from those very weights. Nothing is downloaded: the tokenizer is trained here on a
fixed text and the models are randomly initialised under fixed seeds.

Usage (development time only; CI uses the committed files). It needs torch, transformers,
safetensors and tokenizers, e.g. in a virtual environment outside the repository:
    python3 -m venv /work/venv-hf
    /work/venv-hf/bin/pip install torch transformers safetensors tokenizers
    /work/venv-hf/bin/python scripts/gen_hf_tiny.py            # (re)generate, then check
    /work/venv-hf/bin/python scripts/gen_hf_tiny.py --check    # only check existing files

Writes tests/data/hf-tiny/:
    tokenizer.json, tokenizer_config.json   the shared tokenizer (also copied into each model)
    llama/    LlamaForCausalLM, float32, one model.safetensors, untied lm_head
    qwen2/    Qwen2ForCausalLM, bfloat16, sharded (model-0000N-of-0000M.safetensors +
              model.safetensors.index.json), q/k/v biases, tied embeddings
    gemma3/   Gemma3ForCausalLM (model_type gemma3_text), float16, tied embeddings,
              layers alternating sliding (window 8) / full attention, (1 + w) RMSNorms
    golden.json   per model and prompt: prompt ids, float32 log-softmax over the vocabulary at
              position 0 and at the last prompt position, 16 greedy tokens and the top-1 minus
              top-2 logit margin at each greedy step; versions of the tools used.

The references are computed in float32 with eager attention from the weights *after* they
were rounded to the saved dtype, so they describe the files, not the unrounded model. The
check (run after generating, or alone with --check) reloads every directory from disk with
AutoTokenizer / AutoModelForCausalLM and compares against golden.json.
"""
import argparse
import json
import glob
import os
import shutil
import sys

import safetensors
import tokenizers
import torch
import transformers
from safetensors import safe_open
from tokenizers import (
    Regex,
    Tokenizer,
    decoders,
    models,
    normalizers,
    pre_tokenizers,
    processors,
    trainers,
)
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    Gemma3ForCausalLM,
    Gemma3TextConfig,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
    Qwen2Config,
    Qwen2ForCausalLM,
)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(REPO, "tests", "data", "hf-tiny")

# ---------------------------------------------------------------------------------------------
# Tokenizer
# ---------------------------------------------------------------------------------------------

# Fixed training text (English prose and a little Python / Rust) so the BPE merges are
# reproducible. Changing it changes every token id below, so regenerate everything if you do.
TRAINING_TEXT = """\
The quick brown fox jumps over the lazy dog. The dog sleeps in the sun, and the fox runs
into the forest. Once upon a time, in a small village by the sea, there lived an old
fisherman and his wife. Every morning he went out in his boat, and every evening he came
home with fish for the market. The capital of France is Paris, and the capital of Italy is
Rome. Water boils at one hundred degrees Celsius at sea level. The three primary colors are
red, yellow and blue. To make a cup of tea, first boil the water, then pour it over the
leaves and wait for three minutes. A language model predicts the next token of a text from
the tokens that came before it. The model reads the prompt, and then it writes an answer.
Questions and answers: What is the weather like today? It is warm and sunny, with a light
wind from the west. Where are you going? I am going to the library to read a book.

def fibonacci(n):
    if n < 2:
        return n
    return fibonacci(n - 1) + fibonacci(n - 2)

def main():
    for i in range(10):
        print(i, fibonacci(i))

import numpy as np

# Compute the mean of an array
values = np.array([1.0, 2.0, 3.0, 4.0])
print(values.mean())

fn add(a: i32, b: i32) -> i32 {
    a + b
}

fn main() {
    let total = add(2, 3);
    println!("total = {}", total);
}
"""

# Qwen2's special tokens, appended after the trained vocabulary as in Qwen2 (ids 397..399).
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
BPE_VOCAB_SIZE = 397  # 256 byte symbols + 141 merges; with the specials the vocabulary is 400.

CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


# Qwen2's pre-tokenizer split (its tokenizer.json, and transformers' Qwen2Tokenizer, use it).
PRETOKENIZE_REGEX = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"""
    r"""|\s*[\r\n]+|\s+(?!\S)|\s+"""
)


def build_tokenizer():
    """A byte-level BPE laid out exactly like Qwen2's tokenizer.json, trained on TRAINING_TEXT.

    NFC normalizer; pre-tokenizer Sequence[Split(PRETOKENIZE_REGEX, isolated), ByteLevel(no
    regex, no prefix space)]; ByteLevel decoder. It has to be Qwen2's layout exactly: for
    model_type "qwen2", transformers 5's AutoTokenizer ignores tokenizer_class and rebuilds
    this pipeline around the vocabulary and merges in tokenizer.json, so a GPT-2 style
    ByteLevel(use_regex=True) pre-tokenizer would tokenize differently there.
    """
    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    # Maps offsets back to bytes; adds no tokens (as GPT-2's and Qwen2's tokenizer.json).
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=BPE_VOCAB_SIZE,
        min_frequency=1,
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator([TRAINING_TEXT], trainer=trainer)
    assert tok.get_vocab_size() == BPE_VOCAB_SIZE, tok.get_vocab_size()
    # Added *after* training so they take the ids at the end of the vocabulary.
    tok.add_special_tokens(SPECIAL_TOKENS)
    return tok


def tokenizer_config():
    return {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": None,
        "eos_token": "<|im_end|>",
        "pad_token": "<|endoftext|>",
        "unk_token": None,
        "add_bos_token": False,
        "add_eos_token": False,
        "clean_up_tokenization_spaces": False,
        "model_max_length": 512,
        "chat_template": CHAT_TEMPLATE,
    }


def write_tokenizer(tok, directory):
    os.makedirs(directory, exist_ok=True)
    tok.save(os.path.join(directory, "tokenizer.json"))
    with open(os.path.join(directory, "tokenizer_config.json"), "w") as f:
        json.dump(tokenizer_config(), f, indent=2)
        f.write("\n")


# ---------------------------------------------------------------------------------------------
# Models
# ---------------------------------------------------------------------------------------------

def randomize_(model, spec):
    """Replace the constant-initialised parameters by random values, and sharpen the logits.

    Norm weights and biases start as constants (1, or 0 for Gemma's (1 + w) norms, and 0 for
    biases), which would hide a loader that drops or misplaces them. For Gemma (`norm_offset`)
    the stored w is small and random, so a loader that forgets the +1 is caught; its post-
    attention / post-feedforward norms get `post_norm` added so the layers outweigh the
    sqrt(hidden)-scaled embedding (otherwise the tied model mostly repeats its last token).
    The final norm is scaled (`final_norm`: the multiplier, or for Gemma the value w is
    centred on) so that greedy choices are rarely near-ties.
    """
    g = torch.Generator().manual_seed(spec["seed"])

    def randn(shape):
        return torch.randn(shape, generator=g)

    offset = spec.get("norm_offset", False)
    with torch.no_grad():
        for name, p in model.named_parameters():  # fixed order, so reproducible
            if name.endswith("norm.weight"):
                p.copy_((0.0 if offset else 1.0) + 0.3 * randn(p.shape))
                if name == "model.norm.weight":
                    if offset:
                        p.add_(spec["final_norm"])
                    else:
                        p.mul_(spec["final_norm"])
                elif offset and (".post_attention_" in name or ".post_feedforward_" in name):
                    p.add_(spec.get("post_norm", 0.0))
            elif name.endswith(".bias"):
                p.copy_(0.5 * randn(p.shape))


# initializer_range (weight std) is far above the usual 0.02 so that attention is far from
# uniform (RoPE, masks and the sliding window visibly matter) and each layer moves the
# residual stream; with 0.02 these models would mostly repeat one token.
MODELS = [
    {
        "name": "llama",
        "class": LlamaForCausalLM,
        "config": lambda vocab, ids: LlamaConfig(
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            vocab_size=vocab,
            max_position_embeddings=512,
            rms_norm_eps=1e-5,
            rope_theta=10000.0,
            tie_word_embeddings=False,
            initializer_range=0.2,
            **ids,
        ),
        "dtype": torch.float32,
        "seed": 1001,
        "final_norm": 8.0,
        "save": {},
        "notes": "untied lm_head.weight; GQA 4 query heads / 2 KV heads, head_dim 16",
    },
    {
        "name": "qwen2",
        "class": Qwen2ForCausalLM,
        "config": lambda vocab, ids: Qwen2Config(
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            vocab_size=vocab,
            max_position_embeddings=512,
            rms_norm_eps=1e-6,
            rope_theta=1000000.0,
            tie_word_embeddings=True,
            use_sliding_window=False,
            initializer_range=0.2,
            **ids,
        ),
        "dtype": torch.bfloat16,
        "seed": 2002,
        "final_norm": 10.0,
        # ~200 KB of bf16 weights: several shards plus model.safetensors.index.json.
        "save": {"max_shard_size": "100KB"},
        "notes": "q/k/v biases; tied embeddings (no lm_head.weight in the files); bf16 "
        "weights in 3 shards; reference computed in float32 from the bf16-rounded weights",
    },
    {
        "name": "gemma3",
        "class": Gemma3ForCausalLM,
        "config": lambda vocab, ids: Gemma3TextConfig(
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=3,
            num_attention_heads=4,
            num_key_value_heads=1,
            head_dim=16,
            vocab_size=vocab,
            max_position_embeddings=512,
            rms_norm_eps=1e-6,
            hidden_activation="gelu_pytorch_tanh",
            sliding_window=8,
            # Layers 0 and 2 sliding, layer 1 full. transformers 5 keys this on layer_types;
            # the old integer pattern is only kept as "_sliding_window_pattern" in config.json
            # (6 by default, which would contradict layer_types), so pass the matching 2.
            layer_types=["sliding_attention", "full_attention", "sliding_attention"],
            sliding_window_pattern=2,
            query_pre_attn_scalar=16,
            rope_theta=1000000.0,  # full-attention layers
            rope_local_base_freq=10000.0,  # sliding-window layers
            attn_logit_softcapping=None,
            final_logit_softcapping=None,
            tie_word_embeddings=True,
            initializer_range=0.1,
            **ids,
        ),
        "dtype": torch.float16,
        "seed": 3003,
        "norm_offset": True,
        "post_norm": 2.0,
        "final_norm": 10.0,  # (1 + w) of the final norm is about 11
        "save": {},
        "notes": "RMSNorm scales by (1 + w); embeddings scaled by sqrt(hidden_size) = 8; "
        "q_norm/k_norm per head; post-attention and post-feedforward norms; gelu_pytorch_tanh; "
        "attention scale query_pre_attn_scalar**-0.5 = 0.25; layers 0 and 2 attend to the "
        "last 8 positions (key k is visible to query q iff q - 8 < k <= q) with RoPE base "
        "10000, layer 1 attends to all with RoPE base 1e6; no BOS prepended although real "
        "Gemma tokenizers add <bos>; tied embeddings; float16 weights",
    },
]

# ---------------------------------------------------------------------------------------------
# Prompts and references
# ---------------------------------------------------------------------------------------------

PROMPTS = [
    ("short", "The capital of France is"),
    ("story", "Once upon a time, in a small village by the sea, there lived an old fisherman"),
    ("code", "def fibonacci(n):\n    if n < 2:\n        return n\n    return"),
    ("unicode", "Café naïve — 東京 🚀 costs 5€."),
]
CHAT = [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "What is the capital of France?"},
]
N_GREEDY = 16


def prompt_texts(hf_tok):
    texts = list(PROMPTS)
    chat = hf_tok.apply_chat_template(CHAT, add_generation_prompt=True, tokenize=False)
    texts.append(("chat", chat))
    return texts


def log_softmax_list(logits_row):
    return [round(float(x), 6) for x in torch.log_softmax(logits_row.float(), dim=-1)]


def top2_margin(logits_row):
    top = torch.topk(logits_row.float(), 2).values
    return float(top[0] - top[1])


@torch.no_grad()
def reference(model, ids):
    """Log-softmax at positions 0 and -1, and a greedy continuation with step margins."""
    model.eval()
    input_ids = torch.tensor([ids])
    logits = model(input_ids=input_ids).logits[0]
    out = model.generate(
        input_ids=input_ids,
        attention_mask=torch.ones_like(input_ids),
        do_sample=False,
        max_new_tokens=N_GREEDY,
        eos_token_id=None,  # never stop early: always N_GREEDY tokens
        pad_token_id=model.config.pad_token_id,
        output_logits=True,
        return_dict_in_generate=True,
    )
    greedy = out.sequences[0, len(ids):].tolist()
    assert len(greedy) == N_GREEDY, greedy
    margins = [top2_margin(step[0]) for step in out.logits]
    # Cross-check the cached generate path against a full recompute without cache.
    seq = torch.tensor([ids + greedy])
    full = model(input_ids=seq, use_cache=False).logits[0]
    recomputed = full[len(ids) - 1 : -1].argmax(-1).tolist()
    if recomputed != greedy:
        print(f"  warning: cached / uncached greedy differ: {greedy} vs {recomputed}",
              file=sys.stderr)
    return {
        "logprobs_first": log_softmax_list(logits[0]),
        "logprobs_last": log_softmax_list(logits[-1]),
        "greedy_tokens": greedy,
        "greedy_margins": [round(m, 6) for m in margins],
    }


def file_sizes(directory):
    rows = []
    for root, _, files in os.walk(directory):
        for name in sorted(files):
            path = os.path.join(root, name)
            rows.append((os.path.relpath(path, directory), os.path.getsize(path)))
    return sorted(rows)


def generate():
    if os.path.isdir(OUT):
        shutil.rmtree(OUT)
    os.makedirs(OUT)

    tok = build_tokenizer()
    write_tokenizer(tok, OUT)
    hf_tok = PreTrainedTokenizerFast.from_pretrained(OUT)
    vocab = tok.get_vocab_size(with_added_tokens=True)
    special = {t: tok.token_to_id(t) for t in SPECIAL_TOKENS}
    # bos none; eos <|im_end|>; no pad id so no embedding row is zeroed as padding_idx.
    ids_cfg = {"bos_token_id": None, "eos_token_id": special["<|im_end|>"], "pad_token_id": None}

    prompts = []
    for name, text in prompt_texts(hf_tok):
        ids = hf_tok.encode(text, add_special_tokens=False)
        assert ids == tok.encode(text, add_special_tokens=False).ids
        prompts.append({"name": name, "text": text, "input_ids": ids})

    golden = {
        "generator": "scripts/gen_hf_tiny.py",
        "versions": {
            "transformers": transformers.__version__,
            "torch": torch.__version__,
            "tokenizers": tokenizers.__version__,
            "safetensors": safetensors.__version__,
        },
        "tokenizer": {
            "vocab_size": vocab,
            "special_tokens": special,
            "bos_token": None,
            "eos_token": "<|im_end|>",
            "note": "Encoded with add_special_tokens=False; no BOS is prepended for any model, "
            "including gemma3 (real Gemma tokenizers prepend <bos>).",
        },
        "prompts": prompts,
        "chat_messages": CHAT,
        "reference": "float32, eager attention, from the weights rounded to the saved dtype; "
        "logprobs_first / logprobs_last: log-softmax over the vocabulary at prompt position 0 "
        "and at the last prompt position; greedy_tokens: model.generate(do_sample=False, "
        "max_new_tokens=16) with no EOS stop; greedy_margins[i]: top-1 minus top-2 raw logit "
        "at greedy step i (where it is small, rounding may flip the choice, and every later "
        "token then legitimately differs).",
        "models": {},
    }

    for spec in MODELS:
        name, cls, dtype = spec["name"], spec["class"], spec["dtype"]
        print(f"{name}: building")
        config = spec["config"](vocab, ids_cfg)
        torch.manual_seed(spec["seed"])
        model = cls(config)
        randomize_(model, spec)
        directory = os.path.join(OUT, name)
        model.to(dtype)  # round to the saved dtype
        # transformers 5 writes safetensors only (it has no safe_serialization switch).
        model.save_pretrained(directory, **spec["save"])
        write_tokenizer(tok, directory)

        # The reference runs a fresh float32 instance holding the rounded weights. Upcasting
        # `model` itself would not do: .to(dtype) also rounded its non-persistent buffers (the
        # RoPE inverse frequencies), which a real load recomputes in float32.
        rounded = {k: v.to(torch.float32) for k, v in model.state_dict().items()}
        model = cls(config)
        model.load_state_dict(rounded, strict=True)
        model.set_attn_implementation("eager")
        model.generation_config.eos_token_id = None

        cases = []
        for p in prompts:
            ref = reference(model, p["input_ids"])
            cases.append({"prompt": p["name"], "input_ids": p["input_ids"], **ref})
            print(f"  {p['name']}: {len(p['input_ids'])} ids, greedy {ref['greedy_tokens']}, "
                  f"min margin {min(ref['greedy_margins']):.3f}")
        golden["models"][name] = {
            "dir": name,
            "class": cls.__name__,
            "model_type": config.model_type,
            "saved_dtype": str(dtype).replace("torch.", ""),
            "seed": spec["seed"],
            "notes": spec["notes"],
            "cases": cases,
        }

    with open(os.path.join(OUT, "golden.json"), "w") as f:
        json.dump(golden, f, indent=1, ensure_ascii=False)
        f.write("\n")


def check(atol=2e-4):
    """Reload every directory from disk and compare with golden.json."""
    with open(os.path.join(OUT, "golden.json")) as f:
        golden = json.load(f)
    ok = True
    for name, entry in golden["models"].items():
        directory = os.path.join(OUT, entry["dir"])
        hf_tok = AutoTokenizer.from_pretrained(directory)
        model = AutoModelForCausalLM.from_pretrained(
            directory, dtype=torch.float32, attn_implementation="eager"
        )
        model.generation_config.eos_token_id = None
        files = sorted(glob.glob(os.path.join(directory, "*.safetensors")))
        saved = set()
        for path in files:
            with safe_open(path, framework="pt") as f:
                saved |= {str(f.get_slice(k).get_dtype()) for k in f.keys()}
        expected = {"float32": "F32", "bfloat16": "BF16", "float16": "F16"}[entry["saved_dtype"]]
        if saved != {expected}:
            print(f"  {name}: tensors stored as {saved}, expected {expected}", file=sys.stderr)
            ok = False
        chat = hf_tok.apply_chat_template(CHAT, add_generation_prompt=True, tokenize=False)
        texts = dict(PROMPTS, chat=chat)
        worst = 0.0
        for case in entry["cases"]:
            ids = hf_tok.encode(texts[case["prompt"]], add_special_tokens=False)
            if ids != case["input_ids"]:
                print(f"  {name}/{case['prompt']}: token ids differ", file=sys.stderr)
                ok = False
            ref = reference(model, case["input_ids"])
            for key in ("logprobs_first", "logprobs_last"):
                diff = max(abs(a - b) for a, b in zip(ref[key], case[key]))
                worst = max(worst, diff)
                if diff > atol:
                    print(f"  {name}/{case['prompt']}: {key} differs by {diff}", file=sys.stderr)
                    ok = False
            if ref["greedy_tokens"] != case["greedy_tokens"]:
                print(f"  {name}/{case['prompt']}: greedy tokens differ", file=sys.stderr)
                ok = False
        print(f"check {name}: {len(files)} safetensors file(s) of {expected}, reloaded as "
              f"{type(model).__name__} + {type(hf_tok).__name__}, max |logprob diff| {worst:.2e}")
    return ok


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--check", action="store_true", help="only check the existing files")
    args = parser.parse_args()
    torch.set_num_threads(1)  # bit-stable float32 reductions across runs
    if not args.check:
        generate()
        total = 0
        for path, size in file_sizes(OUT):
            print(f"{size:>9}  {path}")
            total += size
        print(f"{total:>9}  total")
    if not check():
        sys.exit("check FAILED")
    print("check OK")


if __name__ == "__main__":
    main()
