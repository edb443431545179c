#!/usr/bin/env python3
"""Time from request to first token with an image (or speech), weft vs llama.cpp's
llama-mtmd-cli, on the same GGUF language model and mmproj file, interleaved, same thread
count; then decode speed with the image in context against text-only decode.

    python3 bench/vision/compare.py DIR [--runs 3] [--threads 2] [--sizes 448x448,1280x720]
                                        [--audio SECONDS]

DIR holds model-Q4_K_M.gguf and mmproj-f16.gguf (bench/vision/make_qwen25vl_3b.py,
make_gemma3_4b.py and make_qwen25omni_3b.py make them at Qwen2.5-VL-3B's, Gemma 3 4B's and
Qwen2.5-Omni-3B's dimensions). Test images are ffmpeg's `testsrc` pattern at each size; with
--audio (a model with an audio tower) the cases are SECONDS of espeak-ng speech alone and
with the first image instead.
"Time to first token" is the encoder plus the prompt's prefill as each program reports them
(weft: its encoder and prefill lines; llama.cpp: its "prompt eval time", which spans the
image's encoding too), model loading excluded; llama.cpp's warmup runs are switched off so
that neither side is timed with warm caches the other lacks, while weft's first prefill still
builds its weight layouts (llama.cpp repacks at load). Prints medians and the ratio
llama.cpp / weft.
"""

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PROMPT = "Describe this image."


def cpu() -> str:
    model = flags = ""
    for line in subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines():
        if line.startswith("Model name:"):
            model = line.split(":", 1)[1].strip()
        if line.startswith("Flags:"):
            f = line.split()
            flags = ", ".join(x for x in ["avx2", "avx512f", "avx512_bf16", "avx_vnni", "amx_tile"] if x in f)
    return f"{model} ({flags})"


def media_args(image, audio):
    return (["--image", image] if image else []) + (["--audio", audio] if audio else [])


def weft_run(weft, model, mmproj, image, threads, n, audio=None):
    cmd = [weft, "run", model, "--mmproj", mmproj, *media_args(image, audio), "-n", str(n),
           "-t", str(threads), "--temperature", "0", PROMPT]
    out = subprocess.run(cmd, capture_output=True, text=True, errors="replace",
                         env={**os.environ, "WEFT_LOG": "info"})
    if out.returncode != 0:
        sys.exit(f"weft failed: {out.stderr[-2000:]}")
    err = out.stderr
    enc = [float(m) for m in re.findall(r"encoded in (\d+) ms", err)]
    tokens = [int(m) for m in re.findall(r"medium \d+: (\d+) tokens", err)]
    gflop = sum(float(m) for m in re.findall(r"([\d.]+) GFLOP at", err))
    m = re.search(r"prompt: (\d+) tokens \((\d+) reused\) at ([\d.]+) t/s; generated (\d+) tokens at ([\d.]+) t/s", err)
    if not m:
        sys.exit(f"weft: no timing line in:\n{err[-2000:]}")
    prompt, reused, pp, gen, tg = int(m[1]), int(m[2]), float(m[3]), int(m[4]), float(m[5])
    prefill_ms = (prompt - reused) / pp * 1e3
    return dict(encode=sum(enc), prefill=prefill_ms, ttft=sum(enc) + prefill_ms, prompt=prompt,
                image_tokens=sum(tokens), gflops=gflop / sum(enc) * 1e3 if enc else None, tg=tg)


def llama_run(bindir, model, mmproj, image, threads, n, audio=None):
    cmd = [str(bindir / "llama-mtmd-cli"), "-m", model, "--mmproj", mmproj, "-p", PROMPT,
           "-n", str(n), "-t", str(threads), "--temp", "0", "--no-warmup", "--perf", "-lv", "4",
           *media_args(image, audio)]
    out = subprocess.run(cmd, capture_output=True, text=True, errors="replace")
    if out.returncode != 0:
        sys.exit(f"llama-mtmd-cli failed: {out.stderr[-2000:]}")
    text = out.stdout + out.stderr
    # llama-mtmd-cli's "prompt eval time" spans the whole prompt, the image's encoding
    # included (it is timed inside the context's prompt evaluation).
    enc = [float(m) for m in re.findall(r"(?:slice encoded|batch encoding done) in (\d+) ms", text)]
    pe = re.search(r"prompt eval time =\s+([\d.]+) ms /\s+(\d+) tokens", text)
    ev = re.search(r"\beval time =\s+([\d.]+) ms /\s+(\d+) runs", text)
    if not pe:
        sys.exit(f"llama-mtmd-cli: no timing in:\n{text[-3000:]}")
    tg = int(ev[2]) / float(ev[1]) * 1e3 if ev and float(ev[1]) > 0 else None
    return dict(encode=sum(enc), prefill=float(pe[1]) - sum(enc), ttft=float(pe[1]),
                prompt=int(pe[2]), tg=tg)


def med(runs, key):
    values = [r[key] for r in runs if r.get(key) is not None]
    return statistics.median(values) if values else float("nan")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("dir")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--sizes", default="448x448,1280x720")
    ap.add_argument("--decode-tokens", type=int, default=32)
    ap.add_argument("--decode-only", action="store_true", help="skip the time-to-first-token table")
    ap.add_argument("--audio", type=float, help="seconds of speech: time speech, and speech with the first image")
    a = ap.parse_args()
    d = Path(a.dir)
    model, mmproj = str(d / "model-Q4_K_M.gguf"), str(d / "mmproj-f16.gguf")
    bindir = Path(subprocess.run([str(ROOT / "bench/peers/build-llama-cpp.sh")], capture_output=True,
                                 text=True, check=True).stdout.strip().splitlines()[-1])
    subprocess.run(["cargo", "build", "--release", "-q", "-p", "weft"], cwd=ROOT, check=True)
    weft = str(ROOT / "target/release/weft")
    tmp = Path(tempfile.mkdtemp())
    print(f"CPU: {cpu()}; {a.threads} threads; {a.runs} runs each, interleaved; medians")
    print("| media | tokens (weft / llama.cpp) | weft encoder ms | weft GFLOP/s | weft prefill ms | weft TTFT ms | llama.cpp encoder ms | llama.cpp prefill ms | llama.cpp TTFT ms | TTFT llama.cpp / weft | weft encoder share |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    def testsrc(size):
        image = str(tmp / f"testsrc-{size}.png")
        if not Path(image).exists():
            subprocess.run(["ffmpeg", "-loglevel", "error", "-f", "lavfi", "-i", f"testsrc=size={size}:rate=1",
                            "-frames:v", "1", image], check=True)
        return image

    cases = [(size, testsrc(size), None) for size in a.sizes.split(",")]
    if a.audio:
        speech = str(tmp / "speech.wav")
        text = " ".join(["The quick brown fox jumps over the lazy dog while the band plays on."] * 40)
        subprocess.run(["espeak-ng", "-w", str(tmp / "raw.wav"), text], check=True)
        subprocess.run(["ffmpeg", "-loglevel", "error", "-i", str(tmp / "raw.wav"), "-t", str(a.audio),
                        "-ar", "16000", "-ac", "1", speech], check=True)
        first = a.sizes.split(",")[0]
        cases = [(f"{a.audio:g} s speech", None, speech),
                 (f"{first} + {a.audio:g} s speech", testsrc(first), speech)]
    for label, image, audio in [] if a.decode_only else cases:
        ours, theirs = [], []
        for r in range(a.runs):
            pair = [("w", lambda: ours.append(weft_run(weft, model, mmproj, image, a.threads, 1, audio))),
                    ("l", lambda: theirs.append(llama_run(bindir, model, mmproj, image, a.threads, 1, audio)))]
            for _, run in (pair if r % 2 == 0 else pair[::-1]):
                run()
        w, l = ours, theirs
        print(f"| {label} | {w[0]['image_tokens']} / {l[0]['prompt']} (prompt) | {med(w, 'encode'):.0f} | {med(w, 'gflops'):.1f} | "
              f"{med(w, 'prefill'):.0f} | {med(w, 'ttft'):.0f} | {med(l, 'encode'):.0f} | {med(l, 'prefill'):.0f} | "
              f"{med(l, 'ttft'):.0f} | {med(l, 'ttft') / med(w, 'ttft'):.2f} | {med(w, 'encode') / med(w, 'ttft'):.0%} |", flush=True)
    # Decode with the smallest image in context vs text only.
    image = testsrc(a.sizes.split(",")[0])
    n = a.decode_tokens
    rows = []
    for label, img in [("text only", None), ("with image", image)]:
        w = [weft_run(weft, model, mmproj, img, a.threads, n) for _ in range(a.runs)]
        l = [llama_run(bindir, model, mmproj, img, a.threads, n) for _ in range(a.runs)]
        rows.append((label, med(w, "tg"), med(l, "tg")))
    print(f"\n| decode ({n} tokens) | weft t/s | llama.cpp t/s | weft / llama.cpp |\n|---|---|---|---|")
    for label, w, l in rows:
        print(f"| {label} | {w:.2f} | {l:.2f} | {w / l:.2f} |")
    shutil.rmtree(tmp)


if __name__ == "__main__":
    main()
