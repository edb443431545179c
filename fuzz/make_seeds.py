#!/usr/bin/env python3
"""Writes seed inputs for the fuzz targets into fuzz/corpus/<target>/ (git-ignored; the
fuzzer adds what it finds there). Audio seeds need sox and ffmpeg; the others need nothing.

    python3 fuzz/make_seeds.py
"""

import json
import os
import shutil
import struct
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
CORPUS = os.path.join(HERE, "corpus")


def put(target, name, data):
    d = os.path.join(CORPUS, target)
    os.makedirs(d, exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


# --- chat_request: chat bodies ------------------------------------------------------------

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather in a city",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "maxLength": 40},
                "unit": {"enum": ["c", "f"]},
                "days": {"type": "integer"},
            },
            "required": ["city"],
        },
    },
}

PERSON_SCHEMA = {
    "$defs": {
        "address": {
            "type": "object",
            "properties": {"street": {"type": "string"}, "zip": {"type": ["string", "null"]}},
            "required": ["street"],
        }
    },
    "type": "object",
    "properties": {
        "name": {"type": "string", "minLength": 1, "maxLength": 20},
        "age": {"type": "integer"},
        "tags": {"type": "array", "items": {"const": "x"}, "maxItems": 3},
        "home": {"$ref": "#/$defs/address"},
        "work": {"anyOf": [{"$ref": "#/$defs/address"}, {"type": "null"}]},
        "ok": {"type": "boolean"},
    },
    "required": ["name", "home"],
}

CHAT = {
    "plain": {"messages": [{"role": "user", "content": "Hi!"}]},
    "system_params": {
        "model": "smollm2",
        "messages": [
            {"role": "system", "content": "You are terse."},
            {"role": "user", "content": "Name three colours."},
            {"role": "assistant", "content": "Red, green, blue."},
            {"role": "user", "content": "Two more."},
        ],
        "temperature": 0.7,
        "top_p": 0.9,
        "top_k": 40,
        "min_p": 0.05,
        "max_tokens": 16,
        "n": 2,
        "seed": 7,
        "stop": ["\n\n", "END"],
        "presence_penalty": 0.5,
        "frequency_penalty": -0.5,
        "repetition_penalty": 1.1,
        "logit_bias": {"42": -100, "7": 5.5},
        "logprobs": True,
        "top_logprobs": 3,
        "stream": True,
        "stream_options": {"include_usage": True},
    },
    "tools": {
        "messages": [
            {"role": "user", "content": "Weather in Paris?"},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": "call_1",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": "{\"city\": \"Paris\"}"},
                    }
                ],
            },
            {"role": "tool", "tool_call_id": "call_1", "content": "18 C"},
        ],
        "tools": [WEATHER_TOOL],
        "tool_choice": "auto",
    },
    "tool_forced": {
        "messages": [{"role": "user", "content": "Weather?"}],
        "tools": [WEATHER_TOOL],
        "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
    },
    "tool_required": {
        "messages": [{"role": "user", "content": "Weather?"}],
        "tools": [WEATHER_TOOL],
        "tool_choice": "required",
    },
    "json_schema": {
        "messages": [{"role": "user", "content": "A person, as JSON."}],
        "response_format": {
            "type": "json_schema",
            "json_schema": {"name": "person", "strict": True, "schema": PERSON_SCHEMA},
        },
        "max_completion_tokens": 64,
    },
    "json_object": {
        "messages": [{"role": "user", "content": "Any JSON object."}],
        "response_format": {"type": "json_object"},
    },
    "content_parts": {
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "Part one. "},
                    {"type": "text", "text": "Part two: \u00e9\u4e2d\U0001f600"},
                ],
            }
        ],
        "chat_template_kwargs": {"enable_thinking": False},
        "ignore_eos": True,
    },
}

for name, body in CHAT.items():
    put("chat_request", name + ".json", json.dumps(body))

# --- json_schema: a schema, then text for its recognizer ----------------------------------

SCHEMAS = [
    (PERSON_SCHEMA, '{"name": "Ann", "age": 31, "tags": ["x"], "home": {"street": "Main", "zip": null}, "ok": true}'),
    ({"type": "array", "items": {"type": "number"}, "minItems": 1, "maxItems": 4}, "[1, -2.5e3, 0.25]"),
    ({"enum": ["a", "ab", True, None, {"k": [1]}]}, '"ab"'),
    ({"type": ["string", "null", "object"], "maxLength": 3}, '"\\u00e9\\n"'),
    ({"oneOf": [{"type": "string"}, {"type": "array", "items": {"type": "integer"}}]}, "[1,\n  2]"),
    ({"allOf": [{"properties": {"a": {"const": 1.5}}}]}, '{"a": 1.5}'),
    ({"definitions": {"s": {"type": "string"}}, "properties": {"x": {"$ref": "#/definitions/s"}}}, '{"x": "y"}'),
    ({}, '{"free": [true, false, null, {"n": -0.0e+1}]}'),
]
for i, (schema, text) in enumerate(SCHEMAS):
    put("json_schema", f"schema{i}", json.dumps(schema) + " " + text)

# --- tokenizer: a flag byte, then text ----------------------------------------------------

TEXTS = [
    "Hello, world! It's 2025-01-02; 3.14159 isn't pi.",
    "  leading spaces\n\n\ttabs\r\nand   runs    ",
    "def f(x):\n    return x ** 2  # comment\n",
    "Zürich, naïve café, 東京, Москва, مرحبا, 😀👍🏽",
    "<|im_start|>user\nhi<|im_end|>\n<start_of_turn>model\n<bos><eos>",
    "\u2581word\u2581\u2581two",
    "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
    "1234567890 0.5 1e9 -7",
]
for i, text in enumerate(TEXTS):
    for flags in (0b1100, 0b1111):
        put("tokenizer", f"text{i}_{flags}", bytes([flags]) + text.encode())

# --- ct2_model: a tiny WhisperSpec model.bin ----------------------------------------------


def ct2_model(dtype="f16", alias=True):
    d, heads, mels, hidden, vocab, actx, tctx = 4, 2, 2, 8, 10, 1500, 8
    variables = []

    def var(name, shape, dt=None):
        variables.append((name, shape, dt or dtype))

    var("encoder/num_heads", [], "i32")
    var("encoder/conv1/weight", [d, mels, 3])
    var("encoder/conv1/bias", [d])
    var("encoder/conv2/weight", [d, d, 3])
    var("encoder/conv2/bias", [d])
    var("encoder/position_encodings/encodings", [actx, d], "f16")

    def ln(scope):
        var(f"{scope}/gamma", [d])
        var(f"{scope}/beta", [d])

    def lin(scope, out, inp, bias=True):
        var(f"{scope}/weight", [out, inp])
        if bias:
            var(f"{scope}/bias", [out])

    def ffn(scope):
        ln(f"{scope}/layer_norm")
        lin(f"{scope}/linear_0", hidden, d)
        lin(f"{scope}/linear_1", d, hidden)

    def self_attention(scope):
        ln(f"{scope}/layer_norm")
        lin(f"{scope}/linear_0", 3 * d, d)
        lin(f"{scope}/linear_1", d, d)

    self_attention("encoder/layer_0/self_attention")
    ffn("encoder/layer_0/ffn")
    ln("encoder/layer_norm")
    var("decoder/embeddings/weight", [vocab, d])
    var("decoder/position_encodings/encodings", [tctx, d], "f32")
    self_attention("decoder/layer_0/self_attention")
    ln("decoder/layer_0/attention/layer_norm")
    lin("decoder/layer_0/attention/linear_0", d, d)
    lin("decoder/layer_0/attention/linear_1", 2 * d, d)
    lin("decoder/layer_0/attention/linear_2", d, d, bias=False)
    ffn("decoder/layer_0/ffn")
    ln("decoder/layer_norm")

    def string(s):
        b = s.encode() + b"\0"
        return struct.pack("<H", len(b)) + b

    ids = {"f32": (0, 4, "<f"), "i32": (3, 4, "<i"), "f16": (4, 2, "<e")}
    out = struct.pack("<I", 6) + string("WhisperSpec") + struct.pack("<II", 3, len(variables))
    for k, (name, shape, dt) in enumerate(variables):
        dt_id, size, fmt = ids[dt]
        n = 1
        for s in shape:
            n *= s
        out += string(name) + bytes([len(shape)]) + b"".join(struct.pack("<I", s) for s in shape)
        out += bytes([dt_id]) + struct.pack("<I", n * size)
        if dt == "i32":
            out += struct.pack("<i", heads)
        else:
            out += b"".join(struct.pack(fmt, ((k * 7 + j) % 13 - 6) / 8) for j in range(n))
    aliases = [("decoder/projection/weight", "decoder/embeddings/weight")] if alias else []
    out += struct.pack("<I", len(aliases))
    for a, t in aliases:
        out += string(a) + string(t)
    return out


put("ct2_model", "tiny_f16.bin", ct2_model("f16"))
put("ct2_model", "tiny_f32.bin", ct2_model("f32", alias=False))

# --- audio_decode: short clips in every container ------------------------------------------

AUDIO = [
    # (file name, sox output options, ffmpeg codec options or None for sox)
    ("s16_8k.wav", ["-r", "8000", "-b", "16", "-c", "1"], None),
    ("s16_16k.wav", ["-r", "16000", "-b", "16", "-c", "1"], None),
    ("f32_44k_stereo.wav", ["-r", "44100", "-e", "floating-point", "-b", "32", "-c", "2"], None),
    ("u8_11k.wav", ["-r", "11025", "-b", "8", "-c", "1"], None),
    ("ima_adpcm.wav", ["-r", "8000", "-e", "ima-adpcm", "-c", "1"], None),
    ("ms_adpcm.wav", ["-r", "8000", "-e", "ms-adpcm", "-c", "1"], None),
    ("s24_22k.flac", ["-r", "22050", "-b", "24", "-c", "2"], None),
    ("mono_8k.mp3", None, ["-ar", "8000", "-ac", "1", "-c:a", "libmp3lame", "-b:a", "8k"]),
    ("mono_16k.ogg", None, ["-ar", "16000", "-ac", "1", "-c:a", "libvorbis", "-q:a", "0"]),
    ("mono_8k.m4a", None, ["-ar", "8000", "-ac", "1", "-c:a", "aac", "-b:a", "8k"]),
]


def audio_seeds():
    have_sox, have_ffmpeg = shutil.which("sox"), shutil.which("ffmpeg")
    if not (have_sox and have_ffmpeg):
        print("sox or ffmpeg missing: no audio seeds (apt-get install -y sox ffmpeg)", file=sys.stderr)
        return
    with tempfile.TemporaryDirectory() as tmp:
        for name, sox_opts, ff_opts in AUDIO:
            path = os.path.join(tmp, name)
            if sox_opts is not None:
                cmd = ["sox", "-n"] + sox_opts + [path, "synth", "0.03", "sine", "440", "vol", "0.5"]
            else:
                cmd = ["ffmpeg", "-loglevel", "error", "-f", "lavfi", "-i",
                       "sine=frequency=440:duration=0.2"] + ff_opts + ["-y", path]
            subprocess.run(cmd, check=True)
            with open(path, "rb") as f:
                put("audio_decode", name, f.read())


audio_seeds()
for target in sorted(os.listdir(CORPUS)):
    d = os.path.join(CORPUS, target)
    files = os.listdir(d)
    size = sum(os.path.getsize(os.path.join(d, f)) for f in files)
    print(f"{target}: {len(files)} files, {size} bytes")
