#!/usr/bin/env python3
"""weft vs llama.cpp on the same GGUF and threads, interleaved (weft, peer, weft, peer, ...).

For each model and test (pp512, tg128, tg128 @ d4096 by default) both engines run ROUNDS times
in alternating order, each run `-r REPS` repetitions of llama-bench's own measurement; the table
shows each engine's median t/s over the rounds and the median of the per-round ratios
weft/llama.cpp (robust to the machine's speed drifting between rounds).

With --bandwidth, a memory read probe (bench/peers/bandwidth) measures GB/s with the same thread
count and the table adds the decode limit: bandwidth / bytes read per generated token (weights
plus the K/V cache at that depth), and weft's fraction of it.

Usage: bench/peers/compare.py [--models smollm2-135m,...] [-t 2] [--rounds 3] [-r 3]
                              [--tests pp512,tg128,tg128@4096] [--bandwidth] [--json FILE]
Not part of the build or CI: it builds llama.cpp (pinned) with build-llama-cpp.sh.
"""
import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PEERS = Path(__file__).resolve().parent


def run_json(cmd, env=None):
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env)
    return json.loads(out.stdout)


def parse_test(spec):
    """'pp512' / 'tg128' / 'tg128@4096' -> (n_prompt, n_gen, n_depth)."""
    name, _, depth = spec.partition("@")
    n = int(name[2:])
    depth = int(depth) if depth else 0
    if name.startswith("pp"):
        return n, 0, depth
    if name.startswith("tg"):
        return 0, n, depth
    sys.exit(f"unknown test {spec!r} (use ppN, tgN, tgN@DEPTH)")


def bench_args(test, threads, reps):
    p, n, d = test
    return ["-p", str(p), "-n", str(n), "-d", str(d), "-t", str(threads), "-r", str(reps), "-o", "json"]


def cpu_name():
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="smollm2-135m,gemma3-270m,qwen2.5-coder-0.5b")
    ap.add_argument("-t", "--threads", type=int, default=os.cpu_count())
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("-r", "--reps", type=int, default=3)
    ap.add_argument("--tests", default="pp512,tg128,tg128@4096")
    ap.add_argument("--bandwidth", action="store_true")
    ap.add_argument("--json", help="also write all records to this file")
    args = ap.parse_args()

    subprocess.run(["cargo", "build", "--release", "-q", "-p", "weft"], cwd=ROOT, check=True)
    weft = str(ROOT / "target/release/weft")
    peer_bin = subprocess.run([str(PEERS / "build-llama-cpp.sh")], check=True, capture_output=True,
                              text=True).stdout.strip().splitlines()[-1]
    peer_env = dict(os.environ, LD_LIBRARY_PATH=peer_bin)
    llama_bench = os.path.join(peer_bin, "llama-bench")
    ver = subprocess.run([llama_bench, "--version"], capture_output=True, text=True, env=peer_env)
    peer_version = (ver.stdout + ver.stderr).strip().splitlines()[0] if ver.returncode == 0 else "?"

    gbs = None
    if args.bandwidth:
        manifest = PEERS / "bandwidth/Cargo.toml"
        subprocess.run(["cargo", "build", "--release", "-q", "--manifest-path", str(manifest)], check=True)
        probe = PEERS / "bandwidth/target/release/bandwidth"
        gbs = run_json([str(probe), str(args.threads)])["read_gbs"]

    tests = [(spec, parse_test(spec)) for spec in args.tests.split(",")]
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                            text=True).stdout.strip()
    print(f"# {cpu_name()}, {args.threads} threads; weft {commit}; llama.cpp {peer_version}; "
          f"{args.rounds} rounds x {args.reps} reps, interleaved")
    if gbs:
        print(f"# memory read bandwidth ({args.threads} threads): {gbs:.1f} GB/s")
    header = "| model | test | weft t/s | llama.cpp t/s | weft/llama.cpp |"
    if gbs:
        header += " decode limit t/s | weft % of limit |"
    print(header)
    print("|" + "---|" * (header.count("|") - 1))
    records = []
    for model in args.models.split(","):
        path = subprocess.run([weft, "pull", model], check=True, capture_output=True,
                              text=True).stdout.strip().splitlines()[-1]
        for spec, test in tests:
            weft_ts, peer_ts, ratios, decode_bytes = [], [], [], None
            for rnd in range(args.rounds):
                order = ["weft", "peer"] if rnd % 2 == 0 else ["peer", "weft"]
                got = {}
                for who in order:
                    if who == "weft":
                        rec = run_json([weft, "bench", path] + bench_args(test, args.threads, args.reps))[0]
                        decode_bytes = rec.get("decode_bytes_per_token")
                    else:
                        rec = run_json([llama_bench, "-m", path] + bench_args(test, args.threads, args.reps),
                                       env=peer_env)[0]
                    got[who] = rec["avg_ts"]
                weft_ts.append(got["weft"])
                peer_ts.append(got["peer"])
                ratios.append(got["weft"] / got["peer"])
            row = {
                "model": model, "test": spec, "threads": args.threads,
                "weft_ts": statistics.median(weft_ts), "llama_cpp_ts": statistics.median(peer_ts),
                "ratio": statistics.median(ratios), "rounds": list(zip(weft_ts, peer_ts)),
            }
            line = f"| {model} | {spec} | {row['weft_ts']:.1f} | {row['llama_cpp_ts']:.1f} | {row['ratio']:.2f}x |"
            if gbs:
                if test[1] > 0 and decode_bytes:
                    limit = gbs * 1e9 / decode_bytes
                    row["decode_limit_ts"] = limit
                    line += f" {limit:.0f} | {100 * row['weft_ts'] / limit:.0f}% |"
                else:
                    line += " - | - |"
            print(line, flush=True)
            records.append(row)
    if args.json:
        Path(args.json).write_text(json.dumps(records, indent=1))


if __name__ == "__main__":
    main()
