#!/usr/bin/env python3
"""Greedy-continuation references from llama.cpp, for weft's parity test.

For every prompt in PROMPTS and every model, llama.cpp's server (listening on 127.0.0.1 only)
continues the prompt greedily for 32 tokens and reports, at each step, the two most likely
tokens with their log-probabilities. The prompt is sent as token ids (weft's tokenizer is
checked separately), so this compares the forward pass alone. The margin between the top two
candidates lets the test tell a real bug from a near-tie that rounding may flip.

Usage (development time only; CI uses the committed JSON):
    scripts/gen_greedy_golden.py LLAMA_CPP_BIN_DIR MODELS_DIR
where LLAMA_CPP_BIN_DIR holds llama-server and llama-tokenize (bench/peers/build-llama-cpp.sh
builds them) and MODELS_DIR holds the packaged GGUF files (`weft pull` puts them in
~/.cache/weft/models). Writes tests/golden/greedy/<model>.json.
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

PROMPTS = [
    "The capital of France is",
    "Once upon a time, in a small village by the sea,",
    "def fibonacci(n):\n",
    "The three primary colors are",
    "Water boils at a temperature of",
    "In 1969, the first humans to walk on the Moon were",
    "Here is a list of fruits:\n1. Apple\n2.",
    "The quick brown fox",
    "import numpy as np\n\n# Compute the mean of an array\n",
    "To make a cup of tea, first",
    "The largest planet in our solar system is",
    "SELECT name, age FROM users WHERE",
    "Photosynthesis is the process by which",
    "My favourite book is",
    "1, 2, 3, 4, 5,",
    "The theory of relativity was developed by",
    "<html>\n<head>\n<title>",
    "Dear Sir or Madam,\n\nI am writing to",
    "The most important rule of programming is",
    "Le chat est sur la",
    "東京は日本の",
    "fn main() {\n    let x = ",
    "Q: What is 2 + 2?\nA:",
    "The recipe calls for two cups of flour and",
]

N_PREDICT = 32


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def post(port, path, body):
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=600) as r:
        return json.loads(r.read())


def wait_ready(port, proc):
    for _ in range(600):
        if proc.poll() is not None:
            raise RuntimeError("llama-server exited early")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
                if r.status == 200:
                    return
        except Exception:
            pass
        time.sleep(0.5)
    raise RuntimeError("llama-server did not become ready")


def main():
    bin_dir, models_dir = sys.argv[1], sys.argv[2]
    out_dir = os.path.join(os.path.dirname(__file__), "..", "tests", "golden", "greedy")
    os.makedirs(out_dir, exist_ok=True)
    version = subprocess.run(
        [os.path.join(bin_dir, "llama-server"), "--version"], capture_output=True, text=True
    )
    version = (version.stdout + version.stderr).strip().splitlines()[0]
    for name, file in MODELS.items():
        port = free_port()
        proc = subprocess.Popen(
            [os.path.join(bin_dir, "llama-server"), "-m", os.path.join(models_dir, file),
             "--host", "127.0.0.1", "--port", str(port), "-t", "2", "-c", "1024",
             "--parallel", "1", "--no-webui"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        try:
            wait_ready(port, proc)
            cases = []
            for prompt in PROMPTS:
                ids = post(port, "/tokenize", {"content": prompt, "add_special": True})["tokens"]
                # One request per step: the server leaves out the probabilities of a token that
                # ends inside a UTF-8 character, so a single long request would misalign them.
                tokens, steps = [], []
                for _ in range(N_PREDICT):
                    r = post(port, "/completion", {
                        "prompt": ids + tokens, "n_predict": 1, "temperature": 0, "top_k": 1,
                        "n_probs": 2, "cache_prompt": True, "return_tokens": True,
                        "samplers": ["top_k"],
                    })
                    if not r["tokens"]:
                        break  # end of generation
                    token = r["tokens"][0]
                    probs = r.get("completion_probabilities")
                    top = [[t["id"], t["logprob"]] for t in probs[0]["top_logprobs"]] if probs else None
                    tokens.append(token)
                    steps.append({"token": token, "top": top})
                    if r.get("stop_type") == "eos":
                        break
                cases.append({"prompt": prompt, "prompt_ids": ids, "tokens": tokens, "steps": steps})
            with open(os.path.join(out_dir, f"{name}.json"), "w") as f:
                json.dump({"model": name, "file": file, "peer": version, "n_predict": N_PREDICT,
                           "cases": cases}, f, ensure_ascii=False, separators=(",", ":"))
            print(f"{name}: {len(cases)} prompts")
        finally:
            proc.terminate()
            proc.wait()


if __name__ == "__main__":
    main()
