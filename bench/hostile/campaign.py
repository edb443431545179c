#!/usr/bin/env python3
"""A hostile-input campaign against a real `weft serve` on 127.0.0.1: while a polite
client asks a short question every 0.5 s, hostile requests of every kind the server must
survive arrive together. Standard library only, plus sox for the audio files.

Usage: bench/hostile/campaign.py WEFT_BINARY CHAT_MODEL.gguf WHISPER_DIR [--markdown FILE]

Checks, each a failure (exit status 1) when broken:
  - every hostile request gets the status it should, within --answer-within seconds;
  - the polite client never fails and its p95 latency stays under --polite-p95 seconds;
  - the server never exits, /health answers at the end, and its resident memory after the
    campaign stays within --rss-growth-mb of what it was before;
  - a reply cut by max_tokens never ends in U+FFFD.
The table printed at the end (and written to --markdown) is what the issue's closing note
quotes. Bounded: a fixed set of requests, each with a client timeout.
"""

import argparse
import http.client
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_mb(pid, field="VmRSS"):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return float("nan")


class Reply:
    def __init__(self, status, body, seconds):
        self.status, self.body, self.seconds = status, body, seconds

    def json(self):
        try:
            return json.loads(self.body)
        except ValueError:
            return None


def request(port, method, path, body=b"", headers=None, timeout=120.0):
    """One HTTP request; a status of 0 means no answer (timeout or connection error)."""
    started = time.time()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        r = conn.getresponse()
        data = r.read()
        return Reply(r.status, data, time.time() - started)
    except (OSError, http.client.HTTPException) as e:
        return Reply(0, str(e).encode(), time.time() - started)
    finally:
        conn.close()


def post_json(port, path, payload, timeout=120.0):
    body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    return request(port, "POST", path, body, {"Content-Type": "application/json"}, timeout)


def chat(content, **extra):
    body = {"messages": [{"role": "user", "content": content}], "max_tokens": 8, "temperature": 0}
    body.update(extra)
    return body


def multipart(fields, file_name, file_bytes):
    boundary = "weft-hostile-boundary"
    parts = []
    for k, v in fields.items():
        parts.append(
            f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode()
        )
    parts.append(
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; '
            f'filename="{file_name}"\r\nContent-Type: application/octet-stream\r\n\r\n'
        ).encode()
        + file_bytes
        + b"\r\n"
    )
    parts.append(f"--{boundary}--\r\n".encode())
    return b"".join(parts), {"Content-Type": f"multipart/form-data; boundary={boundary}"}


def deep_ref_schema(depth):
    defs = {f"d{i}": {"$ref": f"#/$defs/d{i + 1}"} for i in range(depth - 1)}
    defs[f"d{depth - 1}"] = {"type": "string"}
    return {"$defs": defs, "$ref": "#/$defs/d0"}


def doubling_ref_schema(levels):
    defs = {}
    for i in range(levels):
        nxt = {"$ref": f"#/$defs/d{i + 1}"} if i + 1 < levels else {"type": "integer"}
        defs[f"d{i}"] = {"type": "object", "properties": {"a": nxt, "b": nxt}}
    return {"$defs": defs, "$ref": "#/$defs/d0"}


def json_schema_format(schema):
    return {"type": "json_schema", "json_schema": {"name": "x", "schema": schema}}


def nested_json(depth):
    return ("[" * depth + "]" * depth).encode()


def disconnect_mid_stream(port):
    """Starts a stream, reads its first bytes, and hangs up."""
    started = time.time()
    s = socket.create_connection(("127.0.0.1", port), timeout=60)
    body = json.dumps(chat("Count to one hundred.", max_tokens=200, stream=True)).encode()
    s.sendall(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        + f"Content-Length: {len(body)}\r\n\r\n".encode()
        + body
    )
    first = s.recv(64)
    s.close()
    status = int(first.split(b" ")[1]) if first.startswith(b"HTTP/1.1") else 0
    return Reply(status, first, time.time() - started)


def sox(rate, effects, suffix):
    """An audio file made by sox from nothing (`-n`) and `effects`, as bytes."""
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "audio" + suffix)
        subprocess.run(["sox", "-n", "-r", str(rate), "-c", "1", path, *effects], check=True)
        with open(path, "rb") as f:
            return f.read()


def hostile_requests(port):
    """(name, expected statuses, thunk). Thunks build their bodies when called."""
    word = "a" * 300_000
    long_stop = {"stop": ["x" * 10_000]}
    many_stops = {"stop": [f"stop{i}" for i in range(1000)]}
    silence_2h = sox(48_000, ["trim", "0", "7200"], ".flac")
    tone = sox(16_000, ["synth", "2", "sine", "440"], ".wav")

    def transcribe(data, name="a.flac"):
        body, headers = multipart({"model": "whisper-base"}, name, data)
        return request(port, "POST", "/v1/audio/transcriptions", body, headers)

    cases = [
        ("`$ref` chain 20,000 deep (json_schema)", {400},
         lambda: post_json(port, "/v1/chat/completions",
                           chat("hi", response_format=json_schema_format(deep_ref_schema(20_000))))),
        ("`$ref`s doubling 2^20 (json_schema)", {400},
         lambda: post_json(port, "/v1/chat/completions",
                           chat("hi", response_format=json_schema_format(doubling_ref_schema(20))))),
        ("recursive `$ref`", {400},
         lambda: post_json(port, "/v1/chat/completions",
                           chat("hi", response_format=json_schema_format(
                               {"$defs": {"n": {"type": "object", "properties": {"n": {"$ref": "#/$defs/n"}}}},
                                "$ref": "#/$defs/n"})))),
    ]
    cases += [
        (f"one 300,000-character word (chat) #{i + 1}", {400},
         lambda: post_json(port, "/v1/chat/completions", chat(word)))
        for i in range(3)
    ]
    cases += [
        ("one 150,000-character word (completions)", {400},
         lambda: post_json(port, "/v1/completions", {"prompt": "b" * 150_000, "max_tokens": 4})),
        ("/tokenize of a 2,000,000-character word", {200},
         lambda: post_json(port, "/tokenize", {"prompt": "c" * 2_000_000})),
        ("10-byte malformed body", {400},
         lambda: post_json(port, "/v1/chat/completions", b'{"messages')),
        ("JSON nested 100,000 deep", {400},
         lambda: post_json(port, "/v1/chat/completions", nested_json(100_000))),
        ("body over the 8 MiB limit", {413},
         lambda: post_json(port, "/v1/chat/completions", chat("z" * (9 << 20)))),
        ("1,000 stop strings", {400},
         lambda: post_json(port, "/v1/chat/completions", chat("hi", **many_stops))),
        ("a 10,000-byte stop string", {400},
         lambda: post_json(port, "/v1/chat/completions", chat("hi", **long_stop))),
        ("n=128 x 64 prompts (completions)", {400},
         lambda: post_json(port, "/v1/completions",
                           {"prompt": ["hello"] * 64, "n": 128, "max_tokens": 4})),
        ("100,000 logit_bias entries", {400},
         lambda: post_json(port, "/v1/chat/completions",
                           chat("hi", logit_bias={str(i): 1 for i in range(100_000)}))),
        ("2,000 tools", {400},
         lambda: post_json(port, "/v1/chat/completions",
                           chat("hi", tools=[{"type": "function", "function": {"name": f"f{i}"}}
                                             for i in range(2000)]))),
        ("50,000 messages", {400},
         lambda: post_json(port, "/v1/chat/completions",
                           {"messages": [{"role": "user", "content": "hi"}] * 50_000})),
        ("prompt token id beyond the vocabulary", {400},
         lambda: post_json(port, "/v1/completions", {"prompt": [1, 2, 4_000_000_000]})),
        ("max_tokens 10^12", {400},
         lambda: post_json(port, "/v1/chat/completions", chat("hi", max_tokens=10**12))),
        ("an image for a model without a vision tower", {400},
         lambda: post_json(port, "/v1/chat/completions", {"messages": [{"role": "user", "content": [
             {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
             {"type": "text", "text": "what is this?"}]}]})),
        ("a video for a model without a vision tower", {400},
         lambda: post_json(port, "/v1/chat/completions", {"messages": [{"role": "user", "content": [
             {"type": "video_url", "video_url": {"url": "data:video/mp4;base64,AAAAIGZ0eXA="}},
             {"type": "text", "text": "what happens?"}]}]})),
        ("an image URL to a port that never answers", {400},
         lambda: post_json(port, "/v1/chat/completions", {"messages": [{"role": "user", "content": [
             {"type": "image_url", "image_url": {"url": "http://10.255.255.1/x.png"}}]}]})),
        ("client gone mid-stream #1", {200}, lambda: disconnect_mid_stream(port)),
        ("client gone mid-stream #2", {200}, lambda: disconnect_mid_stream(port)),
        ("undecodable audio upload", {400},
         lambda: transcribe(b"RIFF\x00\x00\x00\x00WAVEfmt garbage" * 100, "a.wav")),
        ("2 hours of 48 kHz FLAC (small file, long audio)", {400},
         lambda: transcribe(silence_2h)),
    ]
    # These arrive a moment after the others, so that the ones above find a place in the
    # transcription queue; some of these find it full (503).
    cases += [
        (f"transcription while the queue fills #{i + 1}", {200, 503},
         lambda: (time.sleep(1), transcribe(tone, "t.wav"))[1])
        for i in range(12)
    ]
    return cases


class Polite(threading.Thread):
    """Asks a short question every 0.5 s until stopped; records status and latency."""

    def __init__(self, port):
        super().__init__(daemon=True)
        self.port, self.results, self.stop = port, [], threading.Event()

    def run(self):
        while not self.stop.is_set():
            r = post_json(self.port, "/v1/chat/completions", chat("Say hi.", max_tokens=4),
                          timeout=60)
            self.results.append((r.status, r.seconds))
            self.stop.wait(0.5)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("weft")
    ap.add_argument("model")
    ap.add_argument("whisper")
    ap.add_argument("--answer-within", type=float, default=60.0)
    ap.add_argument("--polite-p95", type=float, default=10.0)
    ap.add_argument("--rss-growth-mb", type=float, default=300.0)
    ap.add_argument("--markdown")
    a = ap.parse_args()

    port = free_port()
    log = tempfile.NamedTemporaryFile(prefix="weft-hostile-", suffix=".log", delete=False)
    server = subprocess.Popen(
        [a.weft, "serve", a.model, "--audio-model", a.whisper, "--port", str(port),
         "--host", "127.0.0.1", "--served-model-name", "smol"],
        stdout=log, stderr=subprocess.STDOUT)
    deadline = time.time() + 180
    while request(port, "GET", "/health", timeout=2).status != 200:
        if server.poll() is not None or time.time() > deadline:
            sys.exit(f"weft serve did not start; see {log.name}")
        time.sleep(0.2)

    failures = []
    # Warm up (first-use work such as the constrained-decoding vocabulary), then measure.
    post_json(port, "/v1/chat/completions", chat("hi", response_format={"type": "json_object"}))
    rss_before = rss_mb(server.pid)

    polite = Polite(port)
    polite.start()
    time.sleep(2)
    cases = hostile_requests(port)
    results = [None] * len(cases)

    def run(i, thunk):
        results[i] = thunk()

    threads = [threading.Thread(target=run, args=(i, c[2])) for i, c in enumerate(cases)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    time.sleep(2)
    polite.stop.set()
    polite.join()

    # A reply cut inside a multi-byte character must end at a whole character.
    cut = post_json(port, "/v1/chat/completions",
                    chat("用中文介绍一下长城。", max_tokens=40))
    cut_text = (cut.json() or {}).get("choices", [{}])[0].get("message", {}).get("content", "")
    if cut.status != 200 or cut_text.endswith("\ufffd"):
        failures.append(f"cut reply: status {cut.status}, ends with {cut_text[-3:]!r}")

    alive = server.poll() is None
    health = request(port, "GET", "/health", timeout=10)
    rss_after = rss_mb(server.pid) if alive else float("nan")
    rss_peak = rss_mb(server.pid, "VmHWM") if alive else float("nan")

    rows = []
    for (name, expected, _), r in zip(cases, results):
        ok = r.status in expected and r.seconds <= a.answer_within
        if not ok:
            failures.append(f"{name}: status {r.status} in {r.seconds:.2f} s "
                            f"(expected {sorted(expected)} within {a.answer_within} s): "
                            f"{r.body[:200]!r}")
        rows.append((name, r.status, r.seconds, ok))
    polite_ok = [s for st, s in polite.results if st == 200]
    polite_failed = [st for st, _ in polite.results if st != 200]
    p50 = statistics.median(polite_ok) if polite_ok else float("nan")
    p95 = sorted(polite_ok)[int(0.95 * (len(polite_ok) - 1))] if polite_ok else float("nan")
    if polite_failed:
        failures.append(f"polite client: {len(polite_failed)} failed ({polite_failed[:5]})")
    if not p95 <= a.polite_p95:
        failures.append(f"polite client p95 {p95:.2f} s > {a.polite_p95} s")
    if not alive:
        failures.append(f"the server exited ({server.returncode}); see {log.name}")
    if health.status != 200:
        failures.append(f"/health answered {health.status} at the end")
    if not rss_after - rss_before <= a.rss_growth_mb:
        failures.append(f"RSS grew {rss_after - rss_before:.0f} MB (> {a.rss_growth_mb})")

    lines = ["| hostile request | status | seconds | as expected |", "|---|---|---|---|"]
    lines += [f"| {n} | {s} | {t:.2f} | {'yes' if ok else 'NO'} |" for n, s, t, ok in rows]
    lines += [
        "",
        f"polite client: {len(polite.results)} requests, {len(polite_failed)} failed, "
        f"latency p50 {p50:.2f} s, p95 {p95:.2f} s, max {max(polite_ok, default=float('nan')):.2f} s",
        f"server: {'alive' if alive else 'EXITED'}, /health {health.status}; RSS before "
        f"{rss_before:.0f} MB, after {rss_after:.0f} MB, peak {rss_peak:.0f} MB",
        f"cut reply ends with {cut_text[-4:]!r}",
    ]
    report = "\n".join(lines)
    print(report)
    if a.markdown:
        with open(a.markdown, "w") as f:
            f.write(report + "\n")
    server.terminate()
    try:
        server.wait(timeout=60)
    except subprocess.TimeoutExpired:
        server.kill()
    if failures:
        print("\nFAILED:\n  " + "\n  ".join(failures), file=sys.stderr)
        print(f"server log: {log.name}", file=sys.stderr)
        sys.exit(1)
    print("hostile campaign: all checks passed")


if __name__ == "__main__":
    main()
