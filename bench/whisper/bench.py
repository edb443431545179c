#!/usr/bin/env python3
"""Whisper speed and accuracy, weft against faster-whisper (the peer in BENCHMARKS.md).

Makes the read-English recordings of corpus.py with espeak-ng, then transcribes all of them
with both engines on the same CTranslate2 model.bin (whisper-base as `weft pull` leaves it,
linked into a temporary model directory for faster-whisper): beam 5, float32, the same thread
count, each engine in one process that loads the model once. Runs alternate (weft, peer, peer,
weft, ...). Prints word error rates per file and in total (text lowercased, punctuation
dropped) and the wall-time ratio, medians over the repetitions.

    nice -n 19 python3 bench/whisper/bench.py [--reps 3] [--threads 2]

Needs espeak-ng and `pip install faster-whisper`; builds nothing (run `cargo build --release
-p weft` first).
"""
import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import corpus  # noqa: E402

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))

PEER = r"""
import json, sys, time
t0 = time.time()
from faster_whisper import WhisperModel
model = WhisperModel(sys.argv[1], device="cpu", compute_type="float32",
                     cpu_threads=int(sys.argv[2]))
for path in sys.argv[3:]:
    t = time.time()
    segments, info = model.transcribe(path, beam_size=5)
    text = "".join(s.text for s in segments).strip()
    print(json.dumps({"text": text, "seconds": time.time() - t}), flush=True)
"""


def words(text):
    return re.sub(r"[^a-z0-9' ]+", " ", text.lower().replace("-", " ")).split()


def edit_distance(ref, hyp):
    prev = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, 1):
        cur = [i] + [0] * len(hyp)
        for j, h in enumerate(hyp, 1):
            cur[j] = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (r != h))
        prev = cur
    return prev[-1]


def run_weft(weft, model, threads, files):
    env = dict(os.environ, WEFT_LOG="weft=info")
    t = time.time()
    p = subprocess.run([weft, "transcribe", model, *files, "-f", "json", "--threads",
                        str(threads), "--beam-size", "5"], capture_output=True, text=True,
                       env=env, check=True)
    wall = time.time() - t
    texts = [json.loads(line)["text"] for line in p.stdout.splitlines() if line.strip()]
    secs = [float(m) for m in re.findall(r"of audio in ([0-9.]+) s", p.stderr)]
    return wall, texts, secs


def run_peer(model_dir, threads, files):
    t = time.time()
    p = subprocess.run([sys.executable, "-c", PEER, model_dir, str(threads), *files],
                       capture_output=True, text=True, check=True)
    wall = time.time() - t
    rows = [json.loads(line) for line in p.stdout.splitlines() if line.strip()]
    return wall, [r["text"] for r in rows], [r["seconds"] for r in rows]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--weft", default=os.path.join(ROOT, "target", "release", "weft"))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=1)
    a = ap.parse_args()
    model_bin = subprocess.run([a.weft, "pull", "whisper-base"], capture_output=True,
                               text=True, check=True).stdout.strip()
    src = os.path.dirname(model_bin)
    import faster_whisper
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = os.path.join(tmp, "ct2")
        os.makedirs(model_dir)
        for name in ("model.bin", "config.json", "tokenizer.json", "vocabulary.txt"):
            os.symlink(os.path.join(src, name), os.path.join(model_dir, name))
        files = corpus.make(os.path.join(tmp, "audio"))
        durations = [float(subprocess.run(["soxi", "-D", f], capture_output=True, text=True,
                                          check=True).stdout) for f in files]
        runs = {"weft": [], "faster-whisper": []}
        for rep in range(a.reps):
            order = ["weft", "faster-whisper"] if rep % 2 == 0 else ["faster-whisper", "weft"]
            for engine in order:
                if engine == "weft":
                    runs[engine].append(run_weft(a.weft, model_dir, a.threads, files))
                else:
                    runs[engine].append(run_peer(model_dir, a.threads, files))
                print(f"rep {rep + 1}: {engine} {runs[engine][-1][0]:.1f} s", file=sys.stderr)
    refs = [words(text) for _, _, _, text in corpus.CORPUS]
    print(f"whisper-base (CTranslate2 float16 model.bin, compute float32), beam 5, "
          f"{a.threads} threads, {a.reps} rep(s); peer faster-whisper {faster_whisper.__version__}")
    print(f"{'file':<10} {'audio s':>7} {'words':>5} {'WER weft':>9} {'WER peer':>9} "
          f"{'weft s':>7} {'peer s':>7}")
    errs = {"weft": 0, "faster-whisper": 0}
    for i, (name, _, _, _) in enumerate(corpus.CORPUS):
        row = {}
        for engine in runs:
            hyp = words(runs[engine][0][1][i])
            e = edit_distance(refs[i], hyp)
            errs[engine] += e
            secs = statistics.median(r[2][i] for r in runs[engine])
            row[engine] = (100.0 * e / len(refs[i]), secs)
        print(f"{name:<10} {durations[i]:>7.1f} {len(refs[i]):>5} {row['weft'][0]:>8.1f}% "
              f"{row['faster-whisper'][0]:>8.1f}% {row['weft'][1]:>7.2f} "
              f"{row['faster-whisper'][1]:>7.2f}")
    total_words = sum(len(r) for r in refs)
    wall = {e: statistics.median(r[0] for r in runs[e]) for e in runs}
    print(f"{'total':<10} {sum(durations):>7.1f} {total_words:>5} "
          f"{100.0 * errs['weft'] / total_words:>8.2f}% "
          f"{100.0 * errs['faster-whisper'] / total_words:>8.2f}% "
          f"{wall['weft']:>7.1f} {wall['faster-whisper']:>7.1f}")
    print(f"wall time (process, model load included), median: weft {wall['weft']:.1f} s, "
          f"faster-whisper {wall['faster-whisper']:.1f} s; weft is "
          f"{wall['faster-whisper'] / wall['weft']:.2f}x faster")
    for i, (name, _, _, _) in enumerate(corpus.CORPUS):
        for engine in runs:
            print(f"  {name} {engine}: {runs[engine][0][1][i]}", file=sys.stderr)


if __name__ == "__main__":
    main()
