#!/usr/bin/env python3
"""Tiny random Qwen2.5-Omni checkpoint plus transformers reference outputs.

The audio + vision counterpart of scripts/gen_hf_tiny_vl.py (whose images, tower settings and
JSON layout it reuses, as it reuses gen_hf_tiny.py's tokenizer): one
Qwen2_5OmniForConditionalGeneration directory in the full released layout (thinker, talker and
token2wav; weft only reads the thinker), the processor files (tokenizer, Whisper feature
extractor, image and video processors, chat template), a few small media files, and golden.json
with what transformers computes from those very files: the log-mel features, the audio and
vision towers' outputs, the multimodal 3-D RoPE position ids (Qwen2.5-Omni's TMRoPE, with
video and audio interleaved per 2-second chunk), log-probabilities and greedy continuations.
Nothing is downloaded: the tokenizer is trained here on a fixed text, the weights are random
under fixed seeds, the images are drawn from seeded numpy arrays, the audio is synthesized with
numpy and the video is drawn by ffmpeg's testsrc2 source.

Usage (development time only; CI uses the committed files). It needs torch, torchvision,
transformers, safetensors, tokenizers and pillow, and ffmpeg / ffprobe on the PATH, e.g. in a
virtual environment outside the repository:
    /work/venv-hf/bin/pip install torch torchvision transformers safetensors tokenizers pillow
    apt-get install ffmpeg
    /work/venv-hf/bin/python scripts/gen_hf_tiny_omni.py            # (re)generate, then check
    /work/venv-hf/bin/python scripts/gen_hf_tiny_omni.py --check    # only check existing files

Writes tests/data/hf-tiny-omni/:
    config.json, generation_config.json, model.safetensors
              Qwen2_5OmniForConditionalGeneration (model_type qwen2_5_omni, enable_audio_output
              true), float32, one model.safetensors with thinker.*, talker.* and token2wav.*
              tensors. Thinker text model: hidden 64, 2 layers, 4 heads / 2 KV heads (head_dim
              16), q/k/v biases, M-RoPE sections [2, 3, 3], theta 1e6, untied lm_head. Vision
              tower: gen_hf_tiny_vl.py's (4 blocks of width 32, 2 heads, patch 14, temporal
              patch 2, 2x2 merge into 64-wide tokens, window 112 px in blocks 0 and 2, full
              attention in blocks 1 and 3). Audio tower: 128 mel bins, 2 layers of width 32,
              2 heads, FFN 64, n_window 100 (attention in 200-frame = 2 s chunks), output 64.
              Talker and token2wav as small as their configs allow (only there for the layout).
    spk_dict.pt
              the speaker table Qwen2_5OmniForConditionalGeneration.from_pretrained insists on
              (two tiny random speakers); weft does not need it.
    tokenizer.json, tokenizer_config.json
              gen_hf_tiny.py's byte-level BPE plus Qwen2.5-Omni's special tokens at the same
              relative ids as in Qwen2.5-Omni (<|endoftext|> 397 ... <|VIDEO|> 410); the named
              multimodal tokens (audio_token, image_token, ...) as top-level keys.
    chat_template.jinja, processor_config.json
              what Qwen2_5OmniProcessor.save_pretrained writes (transformers 5 nests the
              feature extractor, image and video processor settings in processor_config.json).
    preprocessor_config.json
              the Whisper feature extractor and image processor settings merged into one file,
              as the released Qwen2.5-Omni checkpoints ship it; same values.
    media/    small_56x56.png, wide_100x60.png (gen_hf_tiny_vl.py's seeded images; the second
              is resized to 56x112), speech.wav (3.30625 s of synthetic voiced speech, 16 kHz
              mono s16), clip.mkv (4.2 s, 120x90 H.264 at 10 fps from testsrc2, with a
              different synthetic voice as a lossless pcm_s16le 16 kHz mono track).
    golden.json   see the "reference" entry in it.
    golden_wav_mel.f32
              the WAV's log-mel features (the feature extractor's valid frames), exact, raw
              little-endian float32 [128 bins][331 frames]; golden.json says so (mel_file).

Everything is computed in float32 with eager attention. The check (run after generating, or
alone with --check) reloads the directory with AutoProcessor / AutoModelForMultimodalLM and
compares against golden.json.
"""
import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import wave

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
    AutoModelForMultimodalLM,
    AutoProcessor,
    Qwen2_5OmniConfig,
    Qwen2_5OmniForConditionalGeneration,
    Qwen2_5OmniProcessor,
    Qwen2Tokenizer,
    Qwen2VLImageProcessor,
    Qwen2VLVideoProcessor,
    WhisperFeatureExtractor,
)
from transformers.video_utils import VideoMetadata

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import gen_hf_tiny as base  # noqa: E402  (the shared tokenizer and reference helpers)
import gen_hf_tiny_vl as vl  # noqa: E402  (images, tower settings, JSON layout)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(REPO, "tests", "data", "hf-tiny-omni")
MEDIA = "media"

# ---------------------------------------------------------------------------------------------
# Tokenizer and processor
# ---------------------------------------------------------------------------------------------

# Qwen2.5-Omni's special tokens after <|endoftext|>, <|im_start|>, <|im_end|> (gen_hf_tiny's, ids
# 397..399), in Qwen2.5-Omni's order, so each has the same offset from <|endoftext|> as in the
# real vocabulary (151643 + k there, 397 + k here: <|AUDIO|> 151646 / 400, <|IMAGE|> 151655 /
# 409, ...). Qwen2.5-Omni renamed five of Qwen2-VL's tokens and kept the rest.
OMNI_SPECIAL_TOKENS = [
    "<|AUDIO|>",
    "<|audio_bos|>",
    "<|audio_eos|>",
    "<|box_end|>",
    "<|quad_start|>",
    "<|quad_end|>",
    "<|vision_bos|>",
    "<|vision_eos|>",
    "<|vision_pad|>",
    "<|IMAGE|>",
    "<|VIDEO|>",
]

# The named multimodal tokens Qwen2_5OmniProcessor reads from its tokenizer (tokenizer.image_token,
# tokenizer.audio_token_id, ...). Passed to the tokenizer as keyword arguments, transformers 5
# saves them as top-level keys of tokenizer_config.json, as in the released checkpoints.
NAMED_TOKENS = {
    "audio_token": "<|AUDIO|>",
    "audio_bos_token": "<|audio_bos|>",
    "audio_eos_token": "<|audio_eos|>",
    "image_token": "<|IMAGE|>",
    "video_token": "<|VIDEO|>",
    "vision_bos_token": "<|vision_bos|>",
    "vision_eos_token": "<|vision_eos|>",
}

DEFAULT_SYSTEM = (
    "You are Qwen, a virtual human developed by the Qwen Team, Alibaba Group, capable of "
    "perceiving auditory and visual inputs, as well as generating text and speech."
)

# Qwen2.5-Omni's chat template: a default system message when the first message is not one,
# <|audio_bos|><|AUDIO|><|audio_eos|> per audio part, <|vision_bos|><|IMAGE|><|vision_eos|> per
# image and <|vision_bos|><|VIDEO|><|vision_eos|> per video (the processor then expands the
# placeholders; with audio from the video it replaces <|VIDEO|> by
# <|audio_bos|> video / audio chunks <|audio_eos|>, inside the vision_bos / vision_eos pair).
CHAT_TEMPLATE = (
    "{% set audio_count = namespace(value=0) %}{% set image_count = namespace(value=0) %}"
    "{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\n" + DEFAULT_SYSTEM + "<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}"
    "{% if add_vision_id %}Picture {{ image_count.value }}: {% endif %}"
    "<|vision_bos|><|IMAGE|><|vision_eos|>"
    "{% elif content['type'] == 'audio' or 'audio' in content or 'audio_url' in content %}"
    "{% set audio_count.value = audio_count.value + 1 %}"
    "{% if add_audio_id %}Audio {{ audio_count.value }}: {% endif %}"
    "<|audio_bos|><|AUDIO|><|audio_eos|>"
    "{% elif content['type'] == 'video' or 'video' in content %}"
    "{% set video_count.value = video_count.value + 1 %}"
    "{% if add_vision_id %}Video {{ video_count.value }}: {% endif %}"
    "<|vision_bos|><|VIDEO|><|vision_eos|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

SAMPLING_RATE = 16000
# gen_hf_tiny_vl's image limits (Qwen's min, max 64 merged tokens), used for video frames too.
MIN_PIXELS = vl.MIN_PIXELS
MAX_PIXELS = vl.MAX_PIXELS
# How the video is sampled and sized. Qwen2_5OmniProcessor has class-level video defaults
# (size 128*28*28 .. 768*28*28 pixels) that override the video processor's own saved size, so
# the size has to be passed at call time for the saved one to take effect; it is passed here
# with the saved values. fps 2 sampling and the total-pixel cap as gen_hf_tiny_vl_video.py.
VIDEO_KWARGS = {
    "do_sample_frames": True,
    "fps": 2.0,
    "cap_pixels_per_frame": True,
    "size": {"shortest_edge": MIN_PIXELS, "longest_edge": MAX_PIXELS},
}


def build_tokenizer():
    tok = base.build_tokenizer()  # 397 BPE tokens + <|endoftext|> <|im_start|> <|im_end|>
    tok.add_special_tokens(OMNI_SPECIAL_TOKENS)
    return tok


def build_processor(tok):
    hf_tok = Qwen2Tokenizer(
        tokenizer_object=tok,
        bos_token=None,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token=None,
        clean_up_tokenization_spaces=False,
        model_max_length=32768,
        **NAMED_TOKENS,
    )
    feature_extractor = WhisperFeatureExtractor(
        feature_size=128,
        sampling_rate=SAMPLING_RATE,
        hop_length=160,
        chunk_length=30,
        n_fft=400,
        padding_value=0.0,
        dither=0.0,
        return_attention_mask=True,
    )
    image_processor = Qwen2VLImageProcessor(
        min_pixels=MIN_PIXELS, max_pixels=MAX_PIXELS, patch_size=14, temporal_patch_size=2,
        merge_size=2)
    video_processor = Qwen2VLVideoProcessor(
        min_pixels=MIN_PIXELS, max_pixels=MAX_PIXELS, patch_size=14, temporal_patch_size=2,
        merge_size=2)
    return Qwen2_5OmniProcessor(
        image_processor=image_processor,
        video_processor=video_processor,
        feature_extractor=feature_extractor,
        tokenizer=hf_tok,
        chat_template=CHAT_TEMPLATE,
    )


def hub_preprocessor_config(processor):
    """preprocessor_config.json as the released Qwen2.5-Omni checkpoints have it: the Whisper
    feature extractor and the image processor in one file (pixel limits in both spellings)."""
    cfg = {k: v for k, v in processor.feature_extractor.to_dict().items()
           if not k.startswith("_")}
    ip = {k: v for k, v in processor.image_processor.to_dict().items() if not k.startswith("_")}
    cfg.update(ip)
    cfg["min_pixels"] = ip["size"]["shortest_edge"]
    cfg["max_pixels"] = ip["size"]["longest_edge"]
    cfg["processor_class"] = "Qwen2_5OmniProcessor"
    return dict(sorted(cfg.items()))


# ---------------------------------------------------------------------------------------------
# Model
# ---------------------------------------------------------------------------------------------

SEED = 5025  # picked: every greedy step of every case has a top-1 / top-2 margin > 0.3, and no
# greedy token is a placeholder or media delimiter (ids 400..410), which would change the media
# layout of the uncached recompute
FINAL_NORM = vl.FINAL_NORM  # final text norm multiplier: greedy choices are rarely near-ties
WEIGHT_GAIN = vl.WEIGHT_GAIN  # matrices ~ N(0, (gain / sqrt(fan_in))^2)
EMBED_STD = vl.EMBED_STD

# Talker codec ids, scaled down from the released 8448-entry codebook (pad 8292, start 8293,
# end 8294, mask 8296) to a 16-entry one. The talker's text ids and the speakers' bos ids are
# thinker token ids; the released ones lie past the tokenizer in the padded 152064-row
# embedding, here they point at existing tokens (nothing here runs the talker).
TALKER_VOCAB = 16
CODEC = {"pad": 10, "start": 11, "end": 12, "mask": 14}


def make_config(vocab, special):
    text = dict(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=vocab,
        max_position_embeddings=32768,
        rms_norm_eps=1e-6,
        hidden_act="silu",
        # mrope_section counts rotary frequency pairs: head_dim 16 has 8, split temporal 2,
        # height 3, width 3 (Qwen2.5-Omni-7B: [16, 24, 24] of 64).
        rope_parameters={"rope_type": "default", "rope_theta": 1000000.0,
                         "mrope_section": [2, 3, 3]},
        use_sliding_window=False,
        bos_token_id=special["<|im_start|>"],
        eos_token_id=special["<|im_end|>"],
        pad_token_id=None,  # no padding_idx, so no embedding row is special
        initializer_range=0.2,
        tie_word_embeddings=False,
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
        window_size=112,  # as gen_hf_tiny_vl.py (and Qwen2.5-Omni): 4x4 merged tokens
        fullatt_block_indexes=[1, 3],
        out_hidden_size=64,
        hidden_act="silu",
        initializer_range=0.2,
    )
    audio = dict(
        num_mel_bins=128,
        d_model=32,
        encoder_layers=2,
        encoder_attention_heads=2,
        encoder_ffn_dim=64,
        n_window=100,  # released value: attention within 2 * 100 mel frames (2 s) chunks
        max_source_positions=1500,
        output_dim=64,
        activation_function="gelu",
        scale_embedding=False,
        initializer_range=0.2,
    )
    thinker = dict(
        text_config=text,
        vision_config=vision,
        audio_config=audio,
        audio_token_index=special["<|AUDIO|>"],
        image_token_index=special["<|IMAGE|>"],
        video_token_index=special["<|VIDEO|>"],
        audio_start_token_id=special["<|audio_bos|>"],
        audio_end_token_id=special["<|audio_eos|>"],
        # Not dataclass fields of Qwen2_5OmniThinkerConfig, but get_rope_index reads
        # vision_start_token_id; the released config.json has all three.
        vision_start_token_id=special["<|vision_bos|>"],
        vision_end_token_id=special["<|vision_eos|>"],
        vision_token_id=special["<|vision_pad|>"],
        bos_token_id=special["<|im_start|>"],
        eos_token_id=special["<|im_end|>"],
        pad_token_id=special["<|endoftext|>"],
        # Unused by transformers; released: the id of "user" (one token there, three here).
        user_token_id=base.build_tokenizer().encode("user").ids[0],
        position_id_per_seconds=25,
        seconds_per_chunk=2,
        initializer_range=0.2,
        tie_word_embeddings=False,
    )
    talker = dict(
        vocab_size=TALKER_VOCAB,
        embedding_size=64,  # the thinker's hidden size
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=8,
        max_position_embeddings=32768,
        rope_parameters={"rope_type": "default", "rope_theta": 1000000.0,
                         "mrope_section": [1, 1, 2]},
        tts_codec_pad_token_id=CODEC["pad"],
        tts_codec_start_token_id=CODEC["start"],
        tts_codec_end_token_id=CODEC["end"],
        tts_codec_mask_token_id=CODEC["mask"],
        tts_text_pad_token_id=special["<|endoftext|>"],
        tts_text_start_token_id=special["<|im_start|>"],
        tts_text_end_token_id=special["<|im_end|>"],
        audio_token_index=special["<|AUDIO|>"],
        image_token_index=special["<|IMAGE|>"],
        video_token_index=special["<|VIDEO|>"],
        vision_start_token_id=special["<|vision_bos|>"],
        vision_end_token_id=special["<|vision_eos|>"],
        audio_start_token_id=special["<|audio_bos|>"],
        audio_end_token_id=special["<|audio_eos|>"],
        position_id_per_seconds=25,
        seconds_per_chunk=2,
        spatial_merge_size=2,
        initializer_range=0.2,
    )
    token2wav = dict(
        dit_config=dict(
            hidden_size=8,
            num_hidden_layers=1,
            num_attention_heads=2,
            head_dim=4,
            ff_mult=1,
            emb_dim=4,
            block_size=24,
            look_ahead_layers=[0],
            look_backward_layers=[0],
            repeats=2,
            num_embeds=TALKER_VOCAB,
            mel_dim=8,
            enc_emb_dim=4,
            enc_dim=4,
            enc_channels=[4, 4, 4],
            enc_kernel_sizes=[3, 3, 1],
            enc_dilations=[1, 2, 1],
            enc_attention_channels=2,
            enc_res2net_scale=2,
            enc_se_channels=2,
            dropout=0.0,
        ),
        bigvgan_config=dict(
            mel_dim=8,
            upsample_initial_channel=4,
            resblock_kernel_sizes=[3],
            resblock_dilation_sizes=[[1, 3, 5]],
            upsample_rates=[2],
            upsample_kernel_sizes=[4],
        ),
    )
    return Qwen2_5OmniConfig(
        thinker_config=thinker,
        talker_config=talker,
        token2wav_config=token2wav,
        enable_audio_output=True,
    )


NORM_SUFFIXES = ("norm.weight", "norm1.weight", "norm2.weight", "ln_q.weight", "ln_post.weight")
FINAL_NORM_NAME = "thinker.model.language_model.norm.weight"


def randomize_(model):
    """Every parameter drawn explicitly, in named_parameters order, from one seeded generator.

    RMSNorm / LayerNorm weights 1 + 0.3 N(0,1) (the final text norm then times FINAL_NORM),
    biases 0.5 N(0,1), token embeddings EMBED_STD N(0,1), every other tensor (linear, conv,
    embedding) with std WEIGHT_GAIN / sqrt(fan_in): gen_hf_tiny_vl.py's rule, applied to the
    audio tower, talker and token2wav as well.
    """
    g = torch.Generator().manual_seed(SEED)
    with torch.no_grad():
        for name, p in model.named_parameters():
            r = torch.randn(p.shape, generator=g)
            if name.endswith(NORM_SUFFIXES):
                p.copy_(1.0 + 0.3 * r)
                if name == FINAL_NORM_NAME:
                    p.mul_(FINAL_NORM)
            elif name.endswith(".bias") or p.dim() == 1:
                p.copy_(0.5 * r)
            elif name.endswith("embed_tokens.weight"):
                p.copy_(EMBED_STD * r)
            else:
                fan_in = p[0].numel()
                p.copy_(WEIGHT_GAIN / fan_in**0.5 * r)


def speaker_dict(config):
    """spk_dict.pt's content: per speaker the DiT conditioning vector, a reference mel and the
    thinker token the talker starts from (released: Chelsie and Ethan)."""
    g = torch.Generator().manual_seed(SEED + 1)
    dit = config.token2wav_config.dit_config
    out = {}
    for k, name in enumerate(["Chelsie", "Ethan"]):
        out[name] = {
            "cond": torch.randn((1, dit.enc_emb_dim), generator=g),
            "ref_mel": torch.randn((1, 8, dit.mel_dim), generator=g),
            "bos_token": config.thinker_config.text_config.bos_token_id + k,
        }
    return out


# ---------------------------------------------------------------------------------------------
# Media
# ---------------------------------------------------------------------------------------------

IMAGES = [im for im in vl.IMAGES if im[0] in ("small", "wide")]
WAV_FILE = "speech.wav"
MEL_FILE = "golden_wav_mel.f32"  # the WAV's log-mel features (see audio_record)
WAV_SAMPLES = 52900  # 3.30625 s: 331 mel frames = one 200-frame chunk + a 131-frame tail
VIDEO_FILE = "clip.mkv"
VIDEO_SIZE = (120, 90)  # resized to 112x84 (4x3 merged tokens per frame)
VIDEO_FPS = 10
VIDEO_SECONDS = 4.2  # 42 frames, 67200 audio samples: 420 mel frames, chunks 200 + 200 + 20


def synth_speech(n, seed, f0_start, f0_end, syllable_hz, vowels):
    """Deterministic voiced 'speech': a harmonic source with a gliding, vibrating pitch, shaped
    by time-varying formant resonances, cut into syllables, with short noisy consonants
    between them. Returns int16 samples."""
    rng = np.random.default_rng(seed)
    t = np.arange(n) / SAMPLING_RATE
    dur = n / SAMPLING_RATE
    f0 = f0_start + (f0_end - f0_start) * t / dur + 12.0 * np.sin(2 * np.pi * 0.9 * t)
    phase = 2 * np.pi * np.cumsum(f0) / SAMPLING_RATE
    # Formants move from one vowel to the next once per syllable.
    syl = t * syllable_hz
    idx = np.floor(syl).astype(int) % len(vowels)
    nxt = (idx + 1) % len(vowels)
    frac = syl - np.floor(syl)
    v = np.asarray(vowels, dtype=np.float64)
    formants = v[idx] * (1 - frac[:, None]) + v[nxt] * frac[:, None]  # [n, 3]
    x = np.zeros(n)
    for k in range(1, 40):
        fk = k * f0
        gain = np.zeros(n)
        for j, bw in enumerate((90.0, 110.0, 160.0)):
            gain += (0.9 ** j) / (1.0 + ((fk - formants[:, j]) / bw) ** 2)
        gain *= (fk < 7000.0) / np.sqrt(k)
        x += gain * np.sin(k * phase + rng.uniform(0, 2 * np.pi))
    # Syllable envelope: raised cosine over the first 75% of each syllable, silence after.
    env = np.where(frac < 0.75, np.sin(np.pi * frac / 0.75) ** 2, 0.0)
    # Consonants: band-limited noise bursts in the gaps.
    noise = rng.normal(0.0, 1.0, n)
    noise = noise - np.convolve(noise, np.ones(4) / 4, mode="same")  # crude high-pass
    burst = np.where((frac > 0.8) & (frac < 0.95), 0.35, 0.0)
    y = x * env / np.max(np.abs(x)) + burst * noise / np.max(np.abs(noise))
    y += rng.normal(0.0, 0.003, n)  # a little background noise
    y *= 0.6 / np.max(np.abs(y))
    return np.round(y * 32767.0).astype(np.int16)


def media_path(file):
    return os.path.join(OUT, MEDIA, file)


def write_wav(path, samples):
    with wave.open(path, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(SAMPLING_RATE)
        w.writeframes(samples.astype("<i2").tobytes())


def read_wav(path):
    """What weft does with a 16 kHz mono s16 WAV: the samples / 32768 as float32."""
    with wave.open(path, "rb") as w:
        assert (w.getnchannels(), w.getsampwidth(), w.getframerate()) == (1, 2, SAMPLING_RATE)
        raw = w.readframes(w.getnframes())
    return (np.frombuffer(raw, dtype="<i2").astype(np.float32) / 32768.0)


def video_audio_samples():
    n = int(round(VIDEO_SECONDS * SAMPLING_RATE))
    return synth_speech(n, seed=22, f0_start=230.0, f0_end=185.0, syllable_hz=3.1,
                        vowels=[(300, 2300, 3000), (650, 1100, 2600), (450, 1900, 2700)])


def make_media():
    os.makedirs(os.path.join(OUT, MEDIA), exist_ok=True)
    for name, file, w, h, seed in IMAGES:
        Image.fromarray(vl.draw_image(w, h, seed), mode="RGB").save(media_path(file),
                                                                    optimize=True)
    speech = synth_speech(WAV_SAMPLES, seed=21, f0_start=120.0, f0_end=165.0, syllable_hz=4.2,
                          vowels=[(730, 1090, 2440), (270, 2290, 3010), (570, 840, 2410),
                                  (530, 1840, 2480)])
    write_wav(media_path(WAV_FILE), speech)
    with tempfile.TemporaryDirectory() as tmp:
        track = os.path.join(tmp, "track.wav")
        write_wav(track, video_audio_samples())
        w, h = VIDEO_SIZE
        subprocess.run([
            "ffmpeg", "-v", "error", "-y",
            "-f", "lavfi",
            "-i", f"testsrc2=size={w}x{h}:rate={VIDEO_FPS}:duration={VIDEO_SECONDS}",
            "-i", track,
            "-map", "0:v:0", "-map", "1:a:0",
            "-vf", "drawbox=x='mod(t*40,100)':y=20:w=20:h=20:color=red@1:t=fill",
            "-c:v", "libx264", "-preset", "veryslow", "-crf", "30", "-pix_fmt", "yuv420p",
            "-c:a", "pcm_s16le", "-ar", str(SAMPLING_RATE), "-ac", "1",
            "-bitexact", "-fflags", "+bitexact", "-map_metadata", "-1",
            media_path(VIDEO_FILE),
        ], check=True)


def probe(path):
    out = subprocess.run([
        "ffprobe", "-v", "error", "-select_streams", "v:0", "-count_packets",
        "-show_entries", "stream=width,height,avg_frame_rate,nb_read_packets", "-of", "json",
        path,
    ], check=True, capture_output=True).stdout
    s = json.loads(out)["streams"][0]
    num, den = s["avg_frame_rate"].split("/")
    return int(s["width"]), int(s["height"]), float(num) / float(den), int(s["nb_read_packets"])


def decode_frames(path, width, height):
    """gen_hf_tiny_vl_video.py's (and weft's) decode: first video stream, rgb24, no scaling."""
    raw = subprocess.run([
        "ffmpeg", "-v", "error", "-nostdin", "-i", path, "-map", "0:v:0",
        "-fps_mode", "passthrough", "-f", "rawvideo", "-pix_fmt", "rgb24", "pipe:1",
    ], check=True, capture_output=True).stdout
    return np.frombuffer(raw, dtype=np.uint8).reshape(-1, height, width, 3)


def decode_audio(path):
    """weft's audio decode: ffmpeg -i FILE -vn -ac 1 -ar 16000 -f s16le -, / 32768."""
    raw = subprocess.run([
        "ffmpeg", "-v", "error", "-nostdin", "-i", path, "-vn", "-ac", "1",
        "-ar", str(SAMPLING_RATE), "-f", "s16le", "-",
    ], check=True, capture_output=True).stdout
    return np.frombuffer(raw, dtype="<i2").astype(np.float32) / 32768.0


class Media:
    """Everything the cases take as input, loaded from the files the way weft loads them."""

    def __init__(self):
        self.images = {name: Image.open(media_path(file)).convert("RGB")
                       for name, file, *_ in IMAGES}
        self.wav = read_wav(media_path(WAV_FILE))
        width, height, fps, total = probe(media_path(VIDEO_FILE))
        self.frames = decode_frames(media_path(VIDEO_FILE), width, height)
        assert len(self.frames) == total, (len(self.frames), total)
        self.metadata = VideoMetadata(total_num_frames=total, fps=fps, width=width,
                                      height=height, duration=total / fps)
        self.video_audio = decode_audio(media_path(VIDEO_FILE))


# ---------------------------------------------------------------------------------------------
# Cases
# ---------------------------------------------------------------------------------------------

CASES = [
    {
        "name": "text",
        "messages": [{"role": "user", "content": [
            {"type": "text", "text": "What is the capital of France?"}]}],
    },
    {
        "name": "audio",
        "messages": [{"role": "user", "content": [
            {"type": "audio", "audio": MEDIA + "/" + WAV_FILE},
            {"type": "text", "text": "What is said in this audio?"}]}],
    },
    {
        "name": "image_audio",
        "messages": [{"role": "user", "content": [
            {"type": "image", "image": MEDIA + "/" + IMAGES[1][1]},
            {"type": "audio", "audio": MEDIA + "/" + WAV_FILE},
            {"type": "text", "text": "Describe the picture and the sound."}]}],
    },
    {
        "name": "video",
        "use_audio_in_video": False,
        "messages": [{"role": "user", "content": [
            {"type": "video", "video": MEDIA + "/" + VIDEO_FILE},
            {"type": "text", "text": "What happens in this video?"}]}],
    },
    {
        "name": "video_audio",
        "use_audio_in_video": True,
        "messages": [{"role": "user", "content": [
            {"type": "video", "video": MEDIA + "/" + VIDEO_FILE},
            {"type": "text", "text": "What happens in this video?"}]}],
    },
]
N_GREEDY = 16


def case_media(case):
    """The case's media in prompt order, by kind."""
    kinds = {"image": [], "audio": [], "video": []}
    for m in case["messages"]:
        for part in m["content"]:
            if part["type"] in kinds:
                kinds[part["type"]].append(part[part["type"]])
    return kinds


def render(processor, case):
    return processor.apply_chat_template(case["messages"], add_generation_prompt=True,
                                         tokenize=False)


def processor_inputs(processor, case, media):
    """Calls the processor as a user does: the rendered chat text and decoded media.

    Audio goes in as float32 arrays at 16 kHz. With use_audio_in_video the video's own track is
    passed as `audio` with audio_from_video_indices=[0] (the audio slot comes from videos[0])
    and load_audio_from_video=True; transformers would otherwise decode it with torchcodec.
    """
    kinds = case_media(case)
    files = {MEDIA + "/" + file: name for name, file, *_ in IMAGES}
    kwargs = {}
    if kinds["image"]:
        kwargs["images"] = [media.images[files[f]] for f in kinds["image"]]
    audio = [media.wav for _ in kinds["audio"]]
    if kinds["video"]:
        kwargs["videos"] = [media.frames]
        kwargs["video_metadata"] = [media.metadata]
        kwargs["videos_kwargs"] = dict(VIDEO_KWARGS)
        if case.get("use_audio_in_video"):
            assert not audio
            audio = [media.video_audio]
            kwargs["audio_from_video_indices"] = [0]
            kwargs["load_audio_from_video"] = True
    if audio:
        kwargs["audio"] = audio
        kwargs["sampling_rate"] = SAMPLING_RATE
    return processor(text=[render(processor, case)], return_tensors="pt", **kwargs)


MODEL_KEYS = ("input_ids", "attention_mask", "input_features", "feature_attention_mask",
              "pixel_values", "image_grid_thw", "pixel_values_videos", "video_grid_thw",
              "video_second_per_grid")


def model_inputs(inputs):
    return {k: inputs[k] for k in MODEL_KEYS if k in inputs}


def rope_index(thinker, inputs, use_audio_in_video):
    fam = inputs.get("feature_attention_mask")
    return thinker.get_rope_index(
        inputs["input_ids"],
        image_grid_thw=inputs.get("image_grid_thw"),
        video_grid_thw=inputs.get("video_grid_thw"),
        attention_mask=inputs["attention_mask"],
        use_audio_in_video=use_audio_in_video,
        audio_seqlens=fam.sum(-1) if fam is not None else None,
        second_per_grids=inputs.get("video_second_per_grid"),
    )


@torch.no_grad()
def reference(thinker, inputs, use_audio_in_video):
    """Positions, log-softmax at a few places, greedy continuation with step margins."""
    thinker.eval()
    thinker.model.rope_deltas = None
    ids = inputs["input_ids"][0].tolist()
    position_ids, rope_deltas = rope_index(thinker, inputs, use_audio_in_video)
    # The positions the forward pass itself uses (captured at the text model's rotary embedding).
    seen = []
    hook = thinker.model.language_model.rotary_emb.register_forward_hook(
        lambda m, i, o: seen.append(i[1].clone()))
    try:
        logits = thinker(**model_inputs(inputs), use_audio_in_video=use_audio_in_video,
                         use_cache=False).logits[0]
    finally:
        hook.remove()
    assert torch.equal(seen[0], position_ids), "forward used other positions than get_rope_index"
    thinker.model.rope_deltas = None
    out = thinker.generate(
        **model_inputs(inputs),
        use_audio_in_video=use_audio_in_video,
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
    first_step = torch.log_softmax(out.logits[0][0].float(), -1)
    diff = float((first_step - torch.log_softmax(logits[-1], -1)).abs().max())
    assert diff < 1e-4, f"generate's first step differs from the forward pass by {diff}"
    # Cross-check the cached generate path against a full recompute without cache.
    thinker.model.rope_deltas = None
    seq = torch.tensor([ids + greedy])
    full_inputs = model_inputs(inputs)
    full_inputs["input_ids"] = seq
    full_inputs["attention_mask"] = torch.ones_like(seq)
    full = thinker(**full_inputs, use_audio_in_video=use_audio_in_video,
                   use_cache=False).logits[0]
    recomputed = full[len(ids) - 1: -1].argmax(-1).tolist()
    if recomputed != greedy:
        print(f"  warning: cached / uncached greedy differ: {greedy} vs {recomputed}",
              file=sys.stderr)
    thinker.model.rope_deltas = None
    cfg = thinker.config
    closers = [i for i, t in enumerate(ids) if t in (cfg.audio_end_token_id,
                                                     cfg.vision_end_token_id)]
    placeholders = (cfg.audio_token_id, cfg.image_token_id, cfg.video_token_id)
    first_media = next((i for i, t in enumerate(ids) if t in placeholders), None)
    ref = {
        "position_ids": position_ids[:, 0, :].tolist(),
        "rope_deltas": int(rope_deltas.reshape(-1)[0]),
        "logprobs_first": base.log_softmax_list(logits[0]),
        "logprobs_last": base.log_softmax_list(logits[-1]),
        "greedy_tokens": greedy,
        "greedy_margins": [round(m, 6) for m in margins],
    }
    if first_media is not None:
        ref["first_media_position"] = first_media
        ref["logprobs_first_media"] = base.log_softmax_list(logits[first_media])
    if closers:
        ref["media_end_position"] = closers[-1]
        ref["logprobs_media_end"] = base.log_softmax_list(logits[closers[-1]])
    return ref


def sig(x, digits):
    """x (a tensor) as nested lists of floats rounded to `digits` significant digits."""
    a = x.detach().to(torch.float64).numpy()
    fmt = f"{{:.{digits}g}}"
    return np.vectorize(lambda v: float(fmt.format(v)), otypes=[np.float64])(a).tolist()


# ---------------------------------------------------------------------------------------------
# Per-media records
# ---------------------------------------------------------------------------------------------

def audio_features(processor, samples):
    """The feature extractor exactly as Qwen2_5OmniProcessor._process_audio calls it."""
    return processor.feature_extractor(
        [samples], sampling_rate=SAMPLING_RATE, padding="max_length", truncation=True,
        return_attention_mask=True, return_tensors="pt")


@torch.no_grad()
def audio_tower(thinker, feats):
    return thinker.get_audio_features(
        feats["input_features"], feature_attention_mask=feats["attention_mask"]
    ).last_hidden_state


def chunk_info(frames, n_window):
    chunk = 2 * n_window
    lengths = [chunk] * (frames // chunk) + ([frames % chunk] if frames % chunk else [])
    after_conv = [(n - 1) // 2 + 1 for n in lengths]
    total = sum(after_conv)
    return {
        "chunk_lengths": lengths,
        "chunk_lengths_after_conv": after_conv,
        "num_audio_tokens": (total - 2) // 2 + 1,
    }


def audio_record(thinker, processor, samples, full_mel, source):
    feats = audio_features(processor, samples)
    frames = int(feats["attention_mask"].sum())
    out = audio_tower(thinker, feats)
    info = chunk_info(frames, thinker.config.audio_config.n_window)
    assert out.shape[0] == info["num_audio_tokens"], (out.shape, info)
    rec = {
        "source": source,
        "num_samples": int(len(samples)),
        "samples_sum_sq": round(float((samples.astype(np.float64) ** 2).sum()), 6),
        "samples_head": [float(v) for v in samples[:8]],
        "input_features_shape": list(feats["input_features"].shape),
        "frames": frames,
        **info,
    }
    mel = feats["input_features"][0, :, :frames].contiguous()
    rec["mel_valid_sum"] = round(float(mel.to(torch.float64).sum()), 6)
    rec["mel_padding_value"] = round(float(feats["input_features"][0, 0, -1]), 6)
    if full_mel:
        # The full valid-frame log-mel, exact, as raw little-endian float32 [128][frames] (as
        # JSON text it would be 0.44 MB at 6 significant digits, a third of the whole budget).
        data = mel.numpy().astype("<f4").tobytes()
        with open(os.path.join(OUT, MEL_FILE), "wb") as f:
            f.write(data)
        rec["mel_file"] = MEL_FILE
        rec["mel_shape"] = list(mel.shape)
        rec["mel_sha256"] = hashlib.sha256(data).hexdigest()
        rec["mel_bin_sums"] = sig(mel.to(torch.float64).sum(1), 7)
        rec["mel_frame_sums"] = sig(mel.to(torch.float64).sum(0), 7)
        rec["mel_first_frame"] = sig(mel[:, 0], 7)
        rec["mel_last_frame"] = sig(mel[:, -1], 7)
    rec["tower_output"] = sig(out, 7)
    rec["tower_output_row_sum_sq"] = sig((out.to(torch.float64) ** 2).sum(-1), 7)
    return rec, feats, out


def image_records(thinker, processor, media):
    ip = processor.image_processor
    records = {}
    for name, file, w, h, _ in IMAGES:
        img = media.images[name]
        feats = ip(images=[img], return_tensors="pt")
        pv, thw = feats["pixel_values"], feats["image_grid_thw"]
        t, gh, gw = thw[0].tolist()
        resized_hw = [gh * ip.patch_size, gw * ip.patch_size]
        with torch.no_grad():
            tw = thinker.model.visual(pv, grid_thw=thw).pooler_output
        records[name] = {
            "file": MEDIA + "/" + file,
            "width": w,
            "height": h,
            "rgb_sha256": vl.pixels_sha256(img),
            "resized_height_width": resized_hw,
            "resized": resized_hw != [h, w],
            "image_grid_thw": thw[0].tolist(),
            "num_merged_tokens": int(t * gh * gw // ip.merge_size**2),
            "pixel_values": vl.pixel_summary(pv),
            "tower_output": vl.rounded(tw),
        }
        print(f"  image {name}: {w}x{h} -> {resized_hw[1]}x{resized_hw[0]}, grid "
              f"{thw[0].tolist()}, tower std {float(tw.std()):.3f}")
    return records


def video_record(thinker, processor, media):
    feats = processor.video_processor(videos=[media.frames], video_metadata=[media.metadata],
                                      return_metadata=True, return_tensors="pt", **VIDEO_KWARGS)
    pv, thw = feats["pixel_values_videos"], feats["video_grid_thw"]
    sampled = feats["video_metadata"][0]
    indices = [int(i) for i in sampled.frames_indices]
    with torch.no_grad():
        tw = thinker.model.visual(pv, grid_thw=thw).pooler_output
    md = media.metadata
    t, gh, gw = thw[0].tolist()
    print(f"  video {md.width}x{md.height} {md.fps} fps {md.total_num_frames} frames: sampled "
          f"{indices}, grid {thw[0].tolist()}, {tw.shape[0]} tokens, tower std "
          f"{float(tw.std()):.3f}")
    return {
        "file": MEDIA + "/" + VIDEO_FILE,
        "container": "matroska: H.264 (yuv420p) video + pcm_s16le 16 kHz mono audio",
        "width": md.width,
        "height": md.height,
        "fps": md.fps,
        "total_frames": md.total_num_frames,
        "sampled_indices": indices,
        "sampled_fps": sampled.sampled_fps,
        "video_grid_thw": thw[0].tolist(),
        "resized_height_width": [gh * 14, gw * 14],
        "video_second_per_grid": (processor.video_processor.temporal_patch_size
                                  / VIDEO_KWARGS["fps"]),
        "frames_rgb_sum": [int(media.frames[i].astype(np.int64).sum()) for i in indices],
        "pixel_values": vl.pixel_summary(pv),
        "tower_output": vl.rounded(tw),
    }


# ---------------------------------------------------------------------------------------------
# Generate
# ---------------------------------------------------------------------------------------------

def fresh_model(config, state):
    model = Qwen2_5OmniForConditionalGeneration(config)
    model.load_state_dict(state, strict=True)
    model.set_attn_implementation("eager")
    model.eval()
    return model


def versions():
    return {
        "transformers": transformers.__version__,
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "tokenizers": tokenizers.__version__,
        "safetensors": safetensors.__version__,
        "pillow": PIL.__version__,
        "numpy": np.__version__,
        "ffmpeg": subprocess.run(["ffmpeg", "-version"], capture_output=True,
                                 text=True).stdout.split("\n")[0],
    }


def tensor_prefixes(path):
    with safe_open(path, framework="pt") as f:
        names = sorted(f.keys())
    groups = {}
    for n in names:
        parts = n.split(".")
        key = ".".join(parts[:3] if parts[1] == "model" and parts[0] == "thinker" else parts[:2])
        groups.setdefault(key, []).append(n)
    return {k: {"count": len(v), "examples": v[:3]} for k, v in sorted(groups.items())}


def generate():
    if os.path.isdir(OUT):
        shutil.rmtree(OUT)
    os.makedirs(OUT)
    make_media()

    tok = build_tokenizer()
    vocab = tok.get_vocab_size(with_added_tokens=True)
    special = {t: tok.token_to_id(t) for t in base.SPECIAL_TOKENS + OMNI_SPECIAL_TOKENS}
    processor = build_processor(tok)
    processor.save_pretrained(OUT)
    with open(os.path.join(OUT, "preprocessor_config.json"), "w") as f:
        json.dump(hub_preprocessor_config(processor), f, indent=2)
        f.write("\n")

    config = make_config(vocab, special)
    torch.manual_seed(SEED)
    model = Qwen2_5OmniForConditionalGeneration(config)
    randomize_(model)
    model.save_pretrained(OUT)
    torch.save(speaker_dict(config), os.path.join(OUT, "spk_dict.pt"))

    # A fresh instance holding the saved weights (non-persistent buffers recomputed).
    state = {k: v.clone() for k, v in model.state_dict().items()}
    model = fresh_model(config, state)
    thinker = model.thinker
    thinker.generation_config.eos_token_id = None

    media = Media()
    assert np.array_equal(np.round(media.video_audio * 32768).astype(np.int16),
                          video_audio_samples()), "the video's audio track is not lossless"
    assert len(media.wav) == WAV_SAMPLES
    images = image_records(thinker, processor, media)
    video = video_record(thinker, processor, media)
    wav_rec, wav_feats, wav_out = audio_record(thinker, processor, media.wav, True,
                                               MEDIA + "/" + WAV_FILE)
    va_rec, va_feats, va_out = audio_record(thinker, processor, media.video_audio, False,
                                            MEDIA + "/" + VIDEO_FILE + " (audio track)")
    for name, rec, out in (("wav", wav_rec, wav_out), ("video audio", va_rec, va_out)):
        print(f"  audio {name}: {rec['num_samples']} samples, {rec['frames']} frames, chunks "
              f"{rec['chunk_lengths']}, {rec['num_audio_tokens']} tokens, tower std "
              f"{float(out.std()):.3f}")
    # Two audios in one call encode as each alone (attention never crosses chunks or audios).
    both = processor.feature_extractor([media.wav, media.video_audio], sampling_rate=SAMPLING_RATE,
                                       padding="max_length", return_attention_mask=True,
                                       return_tensors="pt")
    with torch.no_grad():
        both_out = audio_tower(thinker, both)
    batch_diff = float((both_out - torch.cat([wav_out, va_out])).abs().max())
    assert batch_diff < 1e-5, batch_diff

    cases = []
    for case in CASES:
        inputs = processor_inputs(processor, case, media)
        text = render(processor, case)
        ids = inputs["input_ids"][0].tolist()
        use_aiv = bool(case.get("use_audio_in_video", False))
        if case["name"] == "text":
            assert ids == tok.encode(text, add_special_tokens=False).ids
        if "input_features" in inputs:
            expect = va_feats if use_aiv else wav_feats
            n_aud = inputs["input_features"].shape[0]
            assert torch.equal(inputs["input_features"],
                               expect["input_features"].expand(n_aud, -1, -1))
        ref = reference(thinker, inputs, use_aiv)
        counts = {t: ids.count(special[t]) for t in
                  ("<|AUDIO|>", "<|IMAGE|>", "<|VIDEO|>", "<|audio_bos|>", "<|audio_eos|>",
                   "<|vision_bos|>", "<|vision_eos|>")}
        rec = {
            "name": case["name"],
            "use_audio_in_video": use_aiv,
            "messages": case["messages"],
            "text": text,
            "input_ids": ids,
            "num_tokens": len(ids),
            "placeholder_counts": counts,
        }
        if "image_grid_thw" in inputs:
            rec["image_grid_thw"] = inputs["image_grid_thw"].tolist()
        if "video_grid_thw" in inputs:
            rec["video_grid_thw"] = inputs["video_grid_thw"].tolist()
            rec["video_second_per_grid"] = [float(s) for s in inputs["video_second_per_grid"]]
        if "feature_attention_mask" in inputs:
            rec["audio_feature_lengths"] = inputs["feature_attention_mask"].sum(-1).tolist()
        cases.append({**rec, **ref})
        shown = ", ".join(f"{k} {v}" for k, v in counts.items() if v)
        print(f"  {case['name']}: {len(ids)} ids ({shown}), rope_delta {ref['rope_deltas']}, "
              f"greedy {ref['greedy_tokens']}, min margin {min(ref['greedy_margins']):.3f}")

    prefixes = tensor_prefixes(os.path.join(OUT, "model.safetensors"))
    tcfg = config.thinker_config
    golden = {
        "generator": "scripts/gen_hf_tiny_omni.py",
        "versions": versions(),
        "model": {
            "class": "Qwen2_5OmniForConditionalGeneration",
            "model_type": config.model_type,
            "saved_dtype": "float32",
            "seed": SEED,
            "final_norm": FINAL_NORM,
            "enable_audio_output": config.enable_audio_output,
        },
        "tensor_prefixes": prefixes,
        "tokenizer": {
            "vocab_size": vocab,
            "special_tokens": special,
            "named_tokens": {k: [v, special[v]] for k, v in NAMED_TOKENS.items()},
            "eos_token": "<|im_end|>",
            "pad_token": "<|endoftext|>",
            "default_system": DEFAULT_SYSTEM,
        },
        "thinker": {
            "audio_token_id": tcfg.audio_token_id,
            "image_token_id": tcfg.image_token_id,
            "video_token_id": tcfg.video_token_id,
            "audio_start_token_id": tcfg.audio_start_token_id,
            "audio_end_token_id": tcfg.audio_end_token_id,
            "vision_start_token_id": tcfg.vision_start_token_id,
            "vision_end_token_id": tcfg.vision_end_token_id,
            "position_id_per_seconds": tcfg.position_id_per_seconds,
            "seconds_per_chunk": tcfg.seconds_per_chunk,
            "tokens_per_chunk": int(tcfg.position_id_per_seconds * tcfg.seconds_per_chunk),
        },
        "feature_extractor": {
            "class": "WhisperFeatureExtractor",
            "feature_size": 128,
            "sampling_rate": SAMPLING_RATE,
            "hop_length": 160,
            "n_fft": 400,
            "chunk_length": 30,
            "dither": 0.0,
            "call": "feature_extractor([samples], sampling_rate=16000, padding='max_length', "
                    "truncation=True, return_attention_mask=True) -- what "
                    "Qwen2_5OmniProcessor._process_audio does (it forces padding='max_length')",
            "notes": (
                "Every audio is zero-padded (or truncated) to 30 s = 480000 samples before the "
                "STFT, so input_features is always [n, 128, 3000]; the valid frames are "
                "feature_attention_mask.sum() = ceil(samples / 160) (for samples < 480000). The "
                "log10 mel is clamped at (max over all 3000 frames, padding included) - 8, then "
                "(x + 4) / 4; frames near the end of the audio see the zero padding (centered "
                "STFT, reflect padding only at the 30 s edges). Audio longer than 30 s would be "
                "cut at 30 s. The torch STFT path is used (torch is installed)."
            ),
        },
        "image_processor": {
            "class": type(processor.image_processor).__name__,
            "min_pixels": MIN_PIXELS,
            "max_pixels": MAX_PIXELS,
            "patch_size": 14,
            "merge_size": 2,
            "temporal_patch_size": 2,
        },
        "video_processor": {
            "class": type(processor.video_processor).__name__,
            "call_kwargs": VIDEO_KWARGS,
            "notes": (
                "Frames decoded as gen_hf_tiny_vl_video.py does (ffmpeg, first video stream, "
                "rgb24) and passed with VideoMetadata(total_num_frames, fps, width, height). "
                "Qwen2_5OmniProcessor's class-level videos_kwargs (size 100352..602112 pixels) "
                "override the video processor's saved size unless size is passed in the call, "
                "so VIDEO_KWARGS passes the saved values explicitly. video_second_per_grid = "
                "temporal_patch_size / fps (the requested fps, not the sampled one) = 1.0."
            ),
        },
        "use_audio_in_video": (
            "case video_audio: processor(text, videos=[frames], video_metadata=[metadata], "
            "audio=[video_track_float32], audio_from_video_indices=[0], "
            "load_audio_from_video=True, sampling_rate=16000, videos_kwargs=...) -- the "
            "OmniModalProcessorMixin takes one audio per slot and maps slot 0 to videos[0] "
            "(without `audio` it would decode the track itself with torchcodec). The processor "
            "replaces <|VIDEO|> by <|audio_bos|> + per 2 s chunk (video tokens whose temporal "
            "position t * second_per_grid * 25 falls in [50 k, 50 (k + 1)), then audio tokens "
            "50 k .. 50 k + 49) + <|audio_eos|>, inside the template's <|vision_bos|> .. "
            "<|vision_eos|>. The model needs use_audio_in_video=True in forward / generate for "
            "get_rope_index to read that layout. Positions there: <|vision_bos|> and "
            "<|audio_bos|> share position p (all axes); video token (t, h, w) gets (p + 1 + "
            "t * second_per_grid * 25, p + 1 + h, p + 1 + w), audio token i gets p + 1 + i on "
            "all axes, in the interleaved order; <|audio_eos|> and <|vision_eos|> share one "
            "past the largest position used, and text resumes after that."
        ),
        "reference": (
            "float32, eager attention, from the saved weights; the thinker only "
            "(model.thinker.generate, no talker). media: the files under media/ as weft reads "
            "them (a WAV as its s16 samples / 32768; the video's frames with ffmpeg rgb24 and "
            "its audio with `ffmpeg -i FILE -vn -ac 1 -ar 16000 -f s16le -` / 32768, which is "
            "lossless here). audio.wav / audio.video_audio: sample count, the feature "
            "extractor's valid frame count, the Omni audio tower's chunking (n_window 100: "
            "chunks of 200 mel frames, conv1 then stride-2 conv2 per chunk, sinusoidal "
            "positions restarting per chunk, attention within a chunk, then a stride-2 average "
            "pool over the concatenated chunks of one audio), for the WAV the full "
            "valid-frame log-mel input_features[0, :, :frames] exactly, as raw little-endian "
            "float32 [128 bins][frames] in golden_wav_mel.f32 (mel_file; with its sha256, per-"
            "bin and per-frame sums, first and last frame), and "
            "model.thinker.get_audio_features(input_features, feature_attention_mask) "
            "[tokens, 64] for both (7 significant digits) with per-row sums of squares. "
            "images[name]: as gen_hf_tiny_vl's golden.json (pixel_values summary, grid, "
            "model.thinker.model.visual(...).pooler_output [merged tokens, 64]). video: the "
            "clip's stream, sampled frame indices, grid, second per grid and the tower output "
            "for the whole video. cases[]: the chat template text, input_ids after the "
            "processor expanded the placeholders, placeholder counts, position_ids (3 x N: "
            "temporal, height, width, from model.thinker.get_rope_index with the case's "
            "use_audio_in_video, checked equal to what the forward pass used), rope_deltas "
            "(generated token at sequence index i gets position i + rope_deltas on all three "
            "axes), log-softmax over the whole vocabulary at the last "
            "<|audio_eos|> / <|vision_eos|> (media_end_position) and at the last prompt "
            "position (= the first generated token's distribution), 16 greedy tokens "
            "(generate(do_sample=False), no EOS stop) and the top-1 minus top-2 logit margin "
            "at each greedy step."
        ),
        "audio": {"wav": wav_rec, "video_audio": va_rec,
                  "two_audio_batch_max_abs_diff": batch_diff},
        "images": images,
        "video": video,
        "cases": cases,
    }
    with open(os.path.join(OUT, "golden.json"), "w") as f:
        f.write(vl.dump_json(golden))
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
    model = AutoModelForMultimodalLM.from_pretrained(
        OUT, dtype=torch.float32, attn_implementation="eager")
    model.eval()
    if type(model) is not Qwen2_5OmniForConditionalGeneration:
        fail(f"loaded {type(model).__name__}")
    if type(processor) is not Qwen2_5OmniProcessor:
        fail(f"processor is {type(processor).__name__}")
    thinker = model.thinker
    thinker.generation_config.eos_token_id = None
    with safe_open(os.path.join(OUT, "model.safetensors"), framework="pt") as f:
        dtypes = {str(f.get_slice(k).get_dtype()) for k in f.keys()}
    if dtypes != {"F32"}:
        fail(f"tensors stored as {dtypes}")
    if tensor_prefixes(os.path.join(OUT, "model.safetensors")) != golden["tensor_prefixes"]:
        fail("tensor names differ from golden.json's tensor_prefixes")

    # The hub-style preprocessor_config.json describes the same feature extractor and image
    # processor as processor_config.json.
    with open(os.path.join(OUT, "preprocessor_config.json")) as f:
        hub = json.load(f)
    fe_keys = set(WhisperFeatureExtractor().to_dict())
    fe = WhisperFeatureExtractor(**{k: v for k, v in hub.items() if k in fe_keys and k not in (
        "feature_extractor_type", "n_samples", "nb_max_frames")})
    if fe.to_dict() != processor.feature_extractor.to_dict():
        fail("preprocessor_config.json's feature extractor differs")
    ip_keys = set(Qwen2VLImageProcessor().to_dict()) | {"min_pixels", "max_pixels"}
    ip = Qwen2VLImageProcessor(**{k: v for k, v in hub.items() if k in ip_keys and k not in (
        "image_processor_type", "size")})
    if ip.to_dict() != processor.image_processor.to_dict():
        fail("preprocessor_config.json's image processor differs")
    for key, want in NAMED_TOKENS.items():
        if getattr(processor.tokenizer, key) != want:
            fail(f"tokenizer.{key} = {getattr(processor.tokenizer, key)}")

    media = Media()
    worst = 0.0
    for key, samples in (("wav", media.wav), ("video_audio", media.video_audio)):
        rec = golden["audio"][key]
        feats = audio_features(processor, samples)
        frames = int(feats["attention_mask"].sum())
        if len(samples) != rec["num_samples"] or frames != rec["frames"]:
            fail(f"audio {key}: {len(samples)} samples / {frames} frames")
            continue
        if "mel_file" in rec:
            stored = np.fromfile(os.path.join(OUT, rec["mel_file"]), dtype="<f4")
            stored = stored.reshape(rec["mel_shape"])
            d = float(np.abs(feats["input_features"][0, :, :frames].numpy() - stored).max())
            worst = max(worst, d)
            if d > 1e-4:
                fail(f"audio {key}: mel differs by {d}")
        d = max_diff(audio_tower(thinker, feats).tolist(), rec["tower_output"])
        worst = max(worst, d)
        if d > atol:
            fail(f"audio {key}: tower output differs by {d}")
    for name, *_ in IMAGES:
        rec = golden["images"][name]
        if vl.pixels_sha256(media.images[name]) != rec["rgb_sha256"]:
            fail(f"image {name}: pixels differ")
        feats = processor.image_processor(images=[media.images[name]], return_tensors="pt")
        with torch.no_grad():
            tw = thinker.model.visual(feats["pixel_values"],
                                      grid_thw=feats["image_grid_thw"]).pooler_output
        d = max_diff(tw.tolist(), rec["tower_output"])
        worst = max(worst, d)
        if d > atol:
            fail(f"image {name}: tower output differs by {d}")
    vrec = video_record(thinker, processor, media)
    for key in ("sampled_indices", "video_grid_thw", "frames_rgb_sum"):
        if vrec[key] != golden["video"][key]:
            fail(f"video: {key} differs")
    d = max_diff(vrec["tower_output"], golden["video"]["tower_output"])
    worst = max(worst, d)
    if d > atol:
        fail(f"video: tower output differs by {d}")

    for case in golden["cases"]:
        spec = next(c for c in CASES if c["name"] == case["name"])
        inputs = processor_inputs(processor, spec, media)
        ids = inputs["input_ids"][0].tolist()
        if ids != case["input_ids"]:
            fail(f"{case['name']}: input ids differ")
            continue
        ref = reference(thinker, inputs, case["use_audio_in_video"])
        for key in ("position_ids", "rope_deltas", "greedy_tokens"):
            if ref[key] != case[key]:
                fail(f"{case['name']}: {key} differ")
        for key in ("logprobs_first", "logprobs_first_media", "logprobs_last",
                    "logprobs_media_end"):
            if key in case:
                diff = max_diff(ref[key], case[key])
                worst = max(worst, diff)
                if diff > atol:
                    fail(f"{case['name']}: {key} differs by {diff}")
        # The full model's own generate (text only) gives the same tokens.
        seq = model.generate(**model_inputs(inputs), generation_mode="text",
                             use_audio_in_video=case["use_audio_in_video"],
                             thinker_max_new_tokens=N_GREEDY, thinker_do_sample=False,
                             thinker_eos_token_id=None)
        if isinstance(seq, tuple):
            seq = seq[0]
        if hasattr(seq, "sequences"):
            seq = seq.sequences
        if seq[0, len(ids):].tolist() != case["greedy_tokens"]:
            fail(f"{case['name']}: Qwen2_5OmniForConditionalGeneration.generate differs")
    print(f"check: reloaded as {type(model).__name__} + {type(processor).__name__} "
          f"({type(processor.tokenizer).__name__}, {type(processor.feature_extractor).__name__}, "
          f"{type(processor.image_processor).__name__}); max |diff| {worst:.2e}")
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
    with open(os.path.join(OUT, "golden.json")) as f:
        golden = json.load(f)
    print("summary:")
    for case in golden["cases"]:
        counts = ", ".join(f"{k} {v}" for k, v in case["placeholder_counts"].items() if v)
        print(f"  {case['name']:<12} {case['num_tokens']:>4} tokens ({counts or 'text only'}), "
              f"rope_deltas {case['rope_deltas']}, min margin {min(case['greedy_margins']):.3f}, "
              f"greedy {case['greedy_tokens']}")


if __name__ == "__main__":
    main()
