#!/usr/bin/env python3
"""Load benchmarks of `weft serve` against llama.cpp's `llama-server` on the same GGUF,
measured in the same run, one server at a time. Standard library only.

Modes
  load    N concurrent streaming clients (for each N in --clients), each sending
          --requests-per-client completions of --prompt-tokens distinct prompt tokens and
          --max-tokens output tokens (ignore_eos). Both servers get --clients parallel slots
          and the same threads. Prints output tokens/s, TTFT p50/p99 and inter-token p99 per
          server and the weft / llama-server ratios.
  prefix  --prefix-requests requests at once, sharing a --prefix-tokens system prompt, to
          weft with prefix caching on and off: TTFT p50/p99 and the ratio.
  soak    --clients (first value) clients for --duration seconds against weft: failed
          requests and the server's resident memory after warm-up vs at the end.

Every phase is bounded by request count and by --time-limit seconds.
"""

import argparse
import asyncio
import json
import os
import random
import signal
import socket
import statistics
import subprocess
import sys
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pct(xs, p):
    if not xs:
        return float("nan")
    xs = sorted(xs)
    k = min(len(xs) - 1, max(0, round(p / 100 * (len(xs) - 1))))
    return xs[k]


class Server:
    def __init__(self, name, argv, port):
        self.name, self.port = name, port
        self.log = open(os.path.join(ROOT, "target", f"bench-{name}-{port}.log"), "w")
        self.proc = subprocess.Popen(argv, stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.time() + 180
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(f"{name} exited early; see {self.log.name}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1) as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.3)
        self.stop()
        raise SystemExit(f"{name} did not become healthy")

    def rss_mib(self):
        with open(f"/proc/{self.proc.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
        return float("nan")

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


async def stream_completion(port, body, timeout):
    """POSTs a streaming /v1/completions request; returns (ttft, [token gaps], n_chunks)."""
    payload = json.dumps(body).encode()
    t0 = time.perf_counter()
    reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), timeout)
    writer.write(b"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                 b"Content-Type: application/json\r\nConnection: close\r\n"
                 + f"Content-Length: {len(payload)}\r\n\r\n".encode() + payload)
    await writer.drain()
    status = await asyncio.wait_for(reader.readline(), timeout)
    if b" 200 " not in status:
        rest = await reader.read()
        writer.close()
        raise RuntimeError(f"HTTP {status.decode().strip()}: {rest[-300:]!r}")
    chunked = False
    while True:
        line = await asyncio.wait_for(reader.readline(), timeout)
        if line in (b"\r\n", b""):
            break
        if line.lower().startswith(b"transfer-encoding:") and b"chunked" in line.lower():
            chunked = True
    ttft, last, gaps, n, buf = None, None, [], 0, b""

    async def body_bytes():
        if not chunked:
            while True:
                data = await asyncio.wait_for(reader.read(65536), timeout)
                if not data:
                    return
                yield data
        while True:
            size = int((await asyncio.wait_for(reader.readline(), timeout)).split(b";")[0], 16)
            if size == 0:
                return
            data = await asyncio.wait_for(reader.readexactly(size + 2), timeout)
            yield data[:-2]

    done = False
    async for data in body_bytes():
        buf += data
        while b"\n\n" in buf:
            event, buf = buf.split(b"\n\n", 1)
            for line in event.split(b"\n"):
                if not line.startswith(b"data: "):
                    continue
                payload = line[6:].strip()
                if payload == b"[DONE]":
                    done = True
                    continue
                msg = json.loads(payload)
                if "error" in msg:
                    raise RuntimeError(msg["error"])
                choices = msg.get("choices") or []
                if not choices or not choices[0].get("text"):
                    continue
                now = time.perf_counter()
                if ttft is None:
                    ttft = now - t0
                else:
                    gaps.append(now - last)
                last = now
                n += 1
    writer.close()
    if not done and ttft is None:
        raise RuntimeError("stream ended without tokens")
    return ttft, gaps, n


def make_prompts(port, count, length, seed):
    """Distinct windows of `length` token ids of the GPL text, tokenized by weft."""
    text = open(os.path.join(ROOT, "tests", "data", "gpl-3.0.txt")).read()
    req = urllib.request.Request(f"http://127.0.0.1:{port}/tokenize",
                                 json.dumps({"prompt": text, "add_special_tokens": False}).encode(),
                                 {"Content-Type": "application/json"})
    tokens = json.load(urllib.request.urlopen(req))["tokens"]
    rng = random.Random(seed)
    return [tokens[s:s + length] for s in
            (rng.randrange(0, len(tokens) - length) for _ in range(count))]


async def run_load(port, prompts, clients, max_tokens, time_limit):
    queue = list(prompts)
    results, failures = [], []
    deadline = time.perf_counter() + time_limit

    async def client():
        while queue and time.perf_counter() < deadline:
            prompt = queue.pop()
            body = {"prompt": prompt, "max_tokens": max_tokens, "temperature": 0,
                    "ignore_eos": True, "stream": True}
            try:
                results.append(await stream_completion(port, body, timeout=time_limit))
            except Exception as e:  # counted and reported, the run goes on
                failures.append(repr(e))

    t0 = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(clients)))
    wall = time.perf_counter() - t0
    tokens = sum(r[2] for r in results)
    ttfts = [r[0] for r in results if r[0] is not None]
    gaps = [g for r in results for g in r[1]]
    return {"requests": len(results), "failed": len(failures), "tokens": tokens, "wall": wall,
            "tok_s": tokens / wall, "ttft_p50": pct(ttfts, 50), "ttft_p99": pct(ttfts, 99),
            "itl_p50": pct(gaps, 50), "itl_p99": pct(gaps, 99), "errors": failures[:3]}


def weft_argv(args, port, slots, extra=()):
    return [args.weft, "serve", args.model, "--port", str(port), "--max-num-seqs", str(slots),
            "--max-model-len", str(args.max_model_len), "-t", str(args.threads), *extra]


def llama_argv(args, port, slots):
    return [args.llama, "-m", args.model, "--host", "127.0.0.1", "--port", str(port),
            "-np", str(slots), "-c", str(slots * args.max_model_len), "-t", str(args.threads),
            "--log-disable"]


def show(name, r):
    print(f"  {name:13s} {r['requests']:4d} req {r['failed']:2d} failed  {r['tok_s']:7.1f} out tok/s  "
          f"TTFT p50 {r['ttft_p50']*1e3:8.0f} ms p99 {r['ttft_p99']*1e3:8.0f} ms  "
          f"ITL p50 {r['itl_p50']*1e3:6.0f} ms p99 {r['itl_p99']*1e3:6.0f} ms", flush=True)
    for e in r["errors"]:
        print(f"    error: {e}")


def load_mode(args):
    for n in args.clients:
        count = n * args.requests_per_client
        print(f"{n} clients, {count} requests, {args.prompt_tokens} prompt tokens, "
              f"{args.max_tokens} out", flush=True)
        res = {}
        for name in ("weft", "llama-server"):
            port = free_port()
            argv = weft_argv(args, port, n) if name == "weft" else llama_argv(args, port, n)
            server = Server(name, argv, port)
            try:
                if name == "weft":  # weft runs first and tokenizes the prompts for both
                    prompts = make_prompts(port, count + n, args.prompt_tokens, args.seed)
                # Warm-up (not measured): one short request per slot.
                asyncio.run(run_load(port, prompts[count:count + n], n, 4, args.time_limit))
                res[name] = asyncio.run(run_load(port, prompts[:count], n, args.max_tokens,
                                                 args.time_limit))
            finally:
                server.stop()
            show(name, res[name])
        w, l = res["weft"], res["llama-server"]
        print(f"  ratio weft/llama-server: output tok/s {w['tok_s'] / l['tok_s']:.2f}x, "
              f"ITL p99 {w['itl_p99'] / l['itl_p99']:.2f}x, TTFT p50 {w['ttft_p50'] / l['ttft_p50']:.2f}x, "
              f"TTFT p99 {w['ttft_p99'] / l['ttft_p99']:.2f}x", flush=True)


def prefix_mode(args):
    res = {}
    for label, extra in (("reuse on", ()), ("reuse off", ("--no-enable-prefix-caching",))):
        port = free_port()
        server = Server("weft", weft_argv(args, port, args.prefix_requests, extra), port)
        try:
            system = make_prompts(port, 1, args.prefix_tokens, args.seed)[0]
            tails = make_prompts(port, args.prefix_requests + 1, 16, args.seed + 1)
            # One request first computes (or, switched off, does not keep) the shared prefix.
            asyncio.run(run_load(port, [system + tails[-1]], 1, 4, args.time_limit))
            prompts = [system + t for t in tails[:-1]]
            res[label] = asyncio.run(run_load(port, prompts, args.prefix_requests, args.max_tokens,
                                              args.time_limit))
        finally:
            server.stop()
        show(f"weft {label}", res[label])
    on, off = res["reuse on"], res["reuse off"]
    print(f"  TTFT p50 without / with reuse: {off['ttft_p50'] / on['ttft_p50']:.1f}x "
          f"(p99 {off['ttft_p99'] / on['ttft_p99']:.1f}x)")


def soak_mode(args):
    n = args.clients[0]
    port = free_port()
    server = Server("weft", weft_argv(args, port, n), port)
    try:
        prompts = make_prompts(port, 4096, args.prompt_tokens, args.seed)
        samples, failed, requests = [], 0, 0
        t0 = time.time()
        warmup_rss = None
        while time.time() - t0 < args.duration:
            batch = [prompts[(requests + i) % len(prompts)] for i in range(n * 2)]
            r = asyncio.run(run_load(port, batch, n, args.max_tokens, args.time_limit))
            requests += r["requests"]
            failed += r["failed"]
            rss = server.rss_mib()
            samples.append(rss)
            if warmup_rss is None:
                warmup_rss = rss  # after the first round of requests
            print(f"  t={time.time() - t0:5.0f}s requests {requests} failed {failed} "
                  f"rss {rss:.1f} MiB  {r['tok_s']:.1f} tok/s", flush=True)
        drift = (samples[-1] - warmup_rss) / warmup_rss * 100
        print(f"soak: {requests} requests, {failed} failed, RSS after warm-up {warmup_rss:.1f} MiB, "
              f"end {samples[-1]:.1f} MiB ({drift:+.1f}%), max {max(samples):.1f} MiB")
    finally:
        server.stop()


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("mode", choices=["load", "prefix", "soak"])
    p.add_argument("--weft", default=os.path.join(ROOT, "target", "release", "weft"))
    p.add_argument("--llama", default=os.path.expanduser(
        "~/.cache/weft-peers/llama.cpp-0.3.36/build/bin/llama-server"))
    p.add_argument("--model", default=os.path.expanduser(
        "~/.cache/weft/models/SmolLM2-135M-Instruct.Q4_1.gguf"))
    p.add_argument("--clients", type=lambda s: [int(x) for x in s.split(",")], default=[8, 32])
    p.add_argument("--requests-per-client", type=int, default=2)
    p.add_argument("--prompt-tokens", type=int, default=256)
    p.add_argument("--max-tokens", type=int, default=128)
    p.add_argument("--max-model-len", type=int, default=512)
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--prefix-tokens", type=int, default=1024)
    p.add_argument("--prefix-requests", type=int, default=32)
    p.add_argument("--duration", type=int, default=600, help="soak seconds")
    p.add_argument("--time-limit", type=float, default=300, help="seconds per phase")
    p.add_argument("--seed", type=int, default=1)
    args = p.parse_args()
    if args.mode == "prefix":
        args.max_model_len = max(args.max_model_len, args.prefix_tokens + 64 + args.max_tokens)
    {"load": load_mode, "prefix": prefix_mode, "soak": soak_mode}[args.mode](args)


if __name__ == "__main__":
    main()
