#!/usr/bin/env python3
"""Regenerates tests/golden/whisper/: reference values for weft-audio's tests.

mel.json: log-mel features of a deterministic 0.6-second test signal (the same formula is
computed in the Rust test) from transformers' WhisperFeatureExtractor (the clip padded to 30 s)
and from faster-whisper's FeatureExtractor (160 samples of padding, as its transcribe uses).
Only the first FRAMES frames are kept, to stay small; the clamp to 8 below the maximum still
depends on every frame, so the test covers it.

transcripts.json: faster-whisper's tokens, text and segment times on two recordings of
bench/whisper/corpus.py made with espeak-ng (greedy, and beam 5 for the short one), when given
--model DIR (the CTranslate2 whisper-base directory, as `weft pull whisper-base` leaves it).
The espeak-ng voice, speed and text are stored with them so that the tests remake the audio.

Needs: numpy, transformers (no torch), faster-whisper.
"""
import argparse
import json
import math
import os

import numpy as np

FRAMES = 70
N = 9600  # 0.6 s at 16 kHz


def test_signal():
    """Two gliding tones with a slow tremolo and a click train: energy across many bins."""
    t = np.arange(N, dtype=np.float64) / 16000.0
    f1 = 220.0 + 400.0 * t
    f2 = 1800.0 - 900.0 * t
    x = 0.3 * np.sin(2 * math.pi * f1 * t) * (0.6 + 0.4 * np.sin(2 * math.pi * 3.0 * t))
    x += 0.15 * np.sin(2 * math.pi * f2 * t)
    x += 0.2 * ((np.arange(N) % 1600) < 8)  # clicks every 0.1 s
    return x.astype(np.float32)


def mel_golden(path):
    from transformers import WhisperFeatureExtractor
    from faster_whisper.feature_extractor import FeatureExtractor

    x = test_signal()
    hf = WhisperFeatureExtractor(feature_size=80)(x, sampling_rate=16000, return_tensors="np")
    hf = hf["input_features"][0]  # (80, 3000)
    fw = FeatureExtractor(feature_size=80)(x, padding=160)  # (80, 61)
    out = {
        "samples": N,
        "frames": FRAMES,
        "hf_frames_total": int(hf.shape[1]),
        "hf": [round(float(v), 6) for v in hf[:, :FRAMES].reshape(-1)],
        "fw_frames_total": int(fw.shape[1]),
        "fw": [round(float(v), 6) for v in fw.reshape(-1)],
    }
    with open(path, "w") as f:
        json.dump(out, f)


def transcript_golden(model_dir, path):
    """faster-whisper's output on a few corpus recordings, with how to remake them."""
    import subprocess
    import sys
    import tempfile

    from faster_whisper import WhisperModel

    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "bench", "whisper"))
    import corpus

    model = WhisperModel(model_dir, device="cpu", compute_type="float32", cpu_threads=2)
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, voice, wpm, text in corpus.CORPUS:
            if name not in ("kitchen", "long"):
                continue
            wav = os.path.join(tmp, name + ".wav")
            subprocess.run(["espeak-ng", "-v", voice, "-s", str(wpm), "-w", wav, text],
                           check=True)
            entry = {"voice": voice, "wpm": wpm, "text": text}
            for beam in (1, 5) if name == "kitchen" else (1,):
                segments, _ = model.transcribe(wav, beam_size=beam, language="en")
                segments = list(segments)
                entry[f"beam{beam}"] = {
                    "text": "".join(s.text for s in segments).strip(),
                    "tokens": [t for s in segments for t in s.tokens],
                    "segments": [[round(s.start, 2), round(s.end, 2)] for s in segments],
                }
            out[name] = entry
    with open(path, "w") as f:
        json.dump(out, f, indent=1)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "..", "tests",
                                                  "golden", "whisper"))
    p.add_argument("--model", help="CTranslate2 whisper-base directory (weft pull whisper-base)")
    a = p.parse_args()
    os.makedirs(a.out, exist_ok=True)
    mel_golden(os.path.join(a.out, "mel.json"))
    if a.model:
        transcript_golden(a.model, os.path.join(a.out, "transcripts.json"))


if __name__ == "__main__":
    main()
