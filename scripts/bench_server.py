#!/usr/bin/env python3
"""Server benchmark beside the engine's own: runs `openembed-bench` (corpus workload) and then
`openembed serve` under ../shared/bench/loadgen.py in the three scenarios of issue #3:

  A. batch 32, concurrency 4        -> server tokens/s vs engine tokens/s (target >= 90%)
  B. batch 1, concurrency 16        -> server tokens/s vs engine tokens/s (target >= 75%)
  C. one 16-token input, concurrency 1 -> p50 latency (target <= 5 ms)

The engine runs right before and right after scenario A in every round, and each round's ratio
is A over the mean of the two (B over the engine run just before it), so a host whose speed drifts
over minutes (shared cloud vCPUs) affects both sides alike; the summary gives the median of the
per-round ratios. Prints each result and a summary; the last line is JSON. Needs target/release/openembed and
target/bench/venv (make bench prepares both). Usage: scripts/bench_server.py [--duration S] [--rounds N] [--dtype D]
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.join(ROOT, "target/release/openembed")
BENCH_BIN = os.path.join(ROOT, "target", "release", "openembed-bench")
PY = os.path.join(ROOT, "target/bench/venv/bin/python")
CORPUS = os.path.join(ROOT, "../shared/bench/corpus/mixed.jsonl")
LOADGEN = os.path.join(ROOT, "../shared/bench/loadgen.py")
MODEL = os.path.join(ROOT, "models/all-MiniLM-L6-v2")


def last_json(text):
    for line in reversed(text.strip().splitlines()):
        try:
            return json.loads(line)
        except json.JSONDecodeError:
            continue
    raise RuntimeError("no JSON line in output:\n" + text[-2000:])


def engine_tokens_per_s(limit, dtype):
    out = subprocess.run(
        [BENCH_BIN, "--model", MODEL, "--corpus", CORPUS, "--limit", str(limit), "--threads", "2",
         "--workloads", "corpus", "--batch", "32", "--dtype", dtype],
        check=True, capture_output=True, text=True, cwd=ROOT).stdout
    results = last_json(out)["results"]
    return max(r["tokens_per_s"] for r in results if "tokens_per_s" in r)


def start_server(extra):
    proc = subprocess.Popen([BIN, "serve", "--port", "0", "--threads", "2", "--auto-truncate", "--model", MODEL + "=all-MiniLM-L6-v2", *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, cwd=ROOT,
                            env={**os.environ, "RUST_LOG": "warn"})
    line = proc.stdout.readline()
    if "listening on" not in line:
        proc.kill()
        raise RuntimeError("server did not start")
    return proc, line.split("listening on ")[1].strip()


def loadgen(url, corpus, batch, concurrency, duration, limit=None):
    cmd = [PY, LOADGEN, "--url", url, "--model", "all-MiniLM-L6-v2", "--corpus", corpus, "--batch", str(batch),
           "--concurrency", str(concurrency), "--duration", str(duration), "--quiet"]
    if limit:
        cmd += ["--limit", str(limit)]
    return last_json(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--duration", type=float, default=20)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--limit", type=int, default=2000, help="corpus texts for each engine run")
    ap.add_argument("--server-arg", action="append", default=[], help="extra flag for openembed serve")
    ap.add_argument("--dtype", default="float32", help="precision for both the engine and the server")
    args = ap.parse_args()

    short = os.path.join(ROOT, "target/bench/short16.jsonl")
    # "The quick brown fox ..." is 16 tokens with [CLS]/[SEP] for all-MiniLM-L6-v2.
    with open(short, "w") as f:
        f.write(json.dumps("the quick brown fox jumps over the lazy dog near the river bank today") + "\n")

    rows = {"engine": [], "A": [], "B": [], "C": [], "A_ratio": [], "B_ratio": []}
    for r in range(args.rounds):
        before = engine_tokens_per_s(args.limit, args.dtype)
        proc, url = start_server(["--dtype", args.dtype, *args.server_arg])
        try:
            a = loadgen(url, CORPUS, 32, 4, args.duration)
            after = engine_tokens_per_s(args.limit, args.dtype)  # the server idles meanwhile
            b = loadgen(url, CORPUS, 1, 16, args.duration)
            c = loadgen(url, short, 1, 1, min(args.duration, 10))
        finally:
            proc.terminate()
            proc.wait(timeout=60)
        rows["engine"] += [before, after]
        rows["A"].append(a)
        rows["B"].append(b)
        rows["C"].append(c)
        rows["A_ratio"].append(a.get("prompt_tokens_per_s", 0) / ((before + after) / 2))
        rows["B_ratio"].append(b.get("prompt_tokens_per_s", 0) / after)
        print(f"round {r + 1}: engine {before:.0f} / {after:.0f} tok/s (before / after A) | A "
              f"{a.get('prompt_tokens_per_s', 0):.0f} tok/s ({rows['A_ratio'][-1]:.2f}x) | B "
              f"{b.get('prompt_tokens_per_s', 0):.0f} tok/s ({rows['B_ratio'][-1]:.2f}x) | C p50 "
              f"{c['latency_ms']['p50']} ms", flush=True)

    def med(key, scen):
        vals = [x.get(key) for x in rows[scen] if x.get(key) is not None]
        return statistics.median(vals) if vals else None

    engine = statistics.median(rows["engine"])
    summary = {
        "dtype": args.dtype,
        "engine_tokens_per_s": engine,
        "A_batch32_c4_tokens_per_s": med("prompt_tokens_per_s", "A"),
        "B_batch1_c16_tokens_per_s": med("prompt_tokens_per_s", "B"),
        "C_p50_ms": statistics.median(x["latency_ms"]["p50"] for x in rows["C"]),
        "C_p99_ms": statistics.median(x["latency_ms"]["p99"] for x in rows["C"]),
        "errors": [x.get("errors") for s in "ABC" for x in rows[s]],
        "A_ratio": statistics.median(rows["A_ratio"]),
        "B_ratio": statistics.median(rows["B_ratio"]),
        "A_ratio_rounds": [round(x, 3) for x in rows["A_ratio"]],
        "B_ratio_rounds": [round(x, 3) for x in rows["B_ratio"]],
    }
    print(f"medians over {args.rounds} rounds: engine {engine:.0f} tok/s; "
          f"A {summary['A_batch32_c4_tokens_per_s']:.0f} tok/s, per-round ratio {summary['A_ratio']:.2f}x; "
          f"B {summary['B_batch1_c16_tokens_per_s']:.0f} tok/s, {summary['B_ratio']:.2f}x; "
          f"C p50 {summary['C_p50_ms']:.2f} ms")
    print(json.dumps(summary))


if __name__ == "__main__":
    sys.exit(main())
