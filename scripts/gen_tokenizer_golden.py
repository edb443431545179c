#!/usr/bin/env python3
"""Token ids from llama.cpp's tokenizer (its server's /tokenize, on 127.0.0.1) for a broad set of strings, for weft's tokenizer test.

Usage (development time only; CI uses the committed JSON):
    scripts/gen_tokenizer_golden.py LLAMA_CPP_BIN_DIR MODELS_DIR
LLAMA_CPP_BIN_DIR comes from bench/peers/build-llama-cpp.sh; MODELS_DIR holds the packaged GGUF
files (`weft pull` puts them in ~/.cache/weft/models). Writes tests/golden/tokenizer/<model>.json.
"""
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request

MODELS = {
    "smollm2-135m": "SmolLM2-135M-Instruct.Q4_1.gguf",
    "gemma3-270m": "gemma-3-270m-q4_k_m.gguf",
    "qwen2.5-coder-0.5b": "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
}

BASE = [
    "", " ", "  ", "   ", "\t", "\n", "\n\n", "\r\n", " \n ", "a", "A", "!", "'", "\"",
    "Hello world", "Hello, world!", " Hello world", "hello  world", "Hello\tworld\n",
    "The quick brown fox jumps over the lazy dog.",
    "It's a dog's life, isn't it? They're here, we've gone, I'm sure you'll see, he'd know.",
    "IT'S LOUD. THEY'RE LOUD.", "don't DON'T Don'T",
    "1", "12", "123", "1234", "12345", "123456789", "3.14159", "1,000,000", "2024-11-28",
    "Call 555-0100 now", "v1.2.3", "0x1F 0b1010 1e-9",
    "東京は日本の首都です。", "你好，世界！", "北京欢迎你", "こんにちは、元気ですか？", "안녕하세요 세계",
    "مرحبا بالعالم", "שלום עולם", "नमस्ते दुनिया", "Привет, мир!", "Γειά σου Κόσμε", "Xin chào thế giới",
    "ñandú café naïve résumé", "e\u0301 a\u0300 o\u0308", "Z\u0351\u036b\u0343\u036a\u0302\u036b\u033d\u034f\u0334algo",
    "😀", "👍🏽", "👨‍👩‍👧‍👦", "🏳️‍🌈", "❤️🔥", "I ❤ Unicode ✓ ★ ☃", "emoji🙂inside🙃words",
    "def add(a, b):\n    return a + b\n",
    "fn main() {\n    println!(\"{}\", 1 + 2);\n}\n",
    "for (int i = 0; i < n; ++i) { sum += x[i]; }",
    "SELECT * FROM users WHERE id = 42;",
    "<html><body><p class=\"x\">Hi</p></body></html>",
    "{\"key\": [1, 2, {\"nested\": null}], \"ok\": true}",
    "https://example.com/path?query=1&b=2#frag", "user@example.com",
    "    indented with spaces", "\t\tindented with tabs", "trailing spaces   ", "line1\nline2\r\nline3",
    "a\n\n\nb", "x = y  # comment", "$PATH && echo ${HOME}", "C:\\Users\\name\\file.txt",
    "<|im_start|>user\nhi<|im_end|>", "<|im_start|>assistant\n", "<|endoftext|>",
    "<start_of_turn>user\nhello<end_of_turn>", "<bos>text", "<s> </s> <unk>", "<think>hmm</think>",
    "<|im_start|>system\nYou are helpful.<|im_end|>\n<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n",
    "Pneumonoultramicroscopicsilicovolcanoconiosis", "supercalifragilisticexpialidocious",
    "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa", "...", "?!?!", "--- *** ___", "¡¿", "© ® ™ € £ ¥",
    "\u00a0non-breaking\u00a0space", "zero\u200bwidth", "tab\there", "mixed 中文 and English 123",
]

WORDS = ["the", "of", "and", "model", "token", "weft", "llama", "Gemma", "Qwen", "data", "東京", "数据",
         "naïve", "👍", "123", "x", "\n", "  ", "it's", "C++", "α", "β", "Ω"]


def generated(n):
    # Deterministic mixtures of the pieces above, to widen coverage.
    out = []
    state = 12345
    for i in range(n):
        parts = []
        for _ in range(3 + i % 6):
            state = (state * 1103515245 + 12345) % (1 << 31)
            parts.append(WORDS[state % len(WORDS)])
        sep = [" ", "", "\n", "  ", "\t"][i % 5]
        out.append(sep.join(parts))
    return out


def post(port, path, body):
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}", data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=120) as r:
        return json.loads(r.read())


def serve(bin_dir, model):
    """llama.cpp's server on loopback (its /tokenize is llama-tokenize without reloading)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [os.path.join(bin_dir, "llama-server"), "-m", model, "--host", "127.0.0.1",
         "--port", str(port), "-c", "256", "--parallel", "1"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    for _ in range(600):
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2):
                return proc, port
        except Exception:
            time.sleep(0.5)
    proc.terminate()
    raise RuntimeError("llama-server did not become ready")


def main():
    bin_dir, models_dir = sys.argv[1], sys.argv[2]
    out_dir = os.path.join(os.path.dirname(__file__), "..", "tests", "golden", "tokenizer")
    os.makedirs(out_dir, exist_ok=True)
    texts = BASE + generated(200 - len(BASE) + 20)
    for name, file in MODELS.items():
        proc, port = serve(bin_dir, os.path.join(models_dir, file))
        try:
            cases = []
            for text in texts:
                for parse_special in (True, False):
                    ids = post(port, "/tokenize", {"content": text, "add_special": True,
                                                   "parse_special": parse_special})["tokens"]
                    cases.append({"text": text, "add_special": True, "parse_special": parse_special,
                                  "ids": ids})
        finally:
            proc.terminate()
            proc.wait()
        with open(os.path.join(out_dir, f"{name}.json"), "w", encoding="utf-8") as f:
            json.dump({"model": name, "file": file, "cases": cases}, f, ensure_ascii=False, separators=(",", ":"))
        print(f"{name}: {len(cases)} cases ({len(texts)} strings)")


if __name__ == "__main__":
    main()
