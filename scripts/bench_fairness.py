#!/usr/bin/env python3
"""Fair scheduling benchmark (head-of-line blocking): starts `openembed serve` (release build,
default flags) and runs ../shared/bench/headofline.py against it ROUNDS times: one bulk request of
1,100 long texts with `truncate: true` while a short query arrives every 0.2 s, then the same bulk
request alone. Prints each round and the medians of the short queries' p50/p99/max and of the bulk
request's throughput beside them relative to alone (targets: p99 <= 250 ms, >= 90 %); the last
line is JSON.

Usage: scripts/bench_fairness.py [--rounds 3] [--bulk 1100]   (needs target/release/openembed)
"""
import argparse
import json
import os
import statistics
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.join(ROOT, "target/release/openembed")
MODEL = os.path.join(ROOT, "models/all-MiniLM-L6-v2")
HEADOFLINE = os.path.join(ROOT, "../shared/bench/headofline.py")


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--bulk", type=int, default=1100)
    p.add_argument("--serve-args", default="", help="extra flags for openembed serve")
    a = p.parse_args()
    server = subprocess.Popen([BIN, "serve", "--port", "0", "--model", MODEL + "=all-MiniLM-L6-v2", *a.serve_args.split()],
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, cwd=ROOT,
                              env={**os.environ, "RUST_LOG": "warn"})
    try:
        line = server.stdout.readline()
        if "listening on" not in line:
            sys.exit("server did not start")
        url = line.split("listening on ")[1].strip()
        rounds = []
        for r in range(a.rounds):
            out = subprocess.run([sys.executable, HEADOFLINE, "--url", url, "--model", "all-MiniLM-L6-v2",
                                  "--bulk", str(a.bulk)], check=True, capture_output=True, text=True).stdout
            res = json.loads(out.strip().splitlines()[-1])
            res["bulk_ratio"] = res["bulk_alone_s"] / res["bulk_shared_s"]
            print(f"round {r + 1}: small p50 {res['small_p50_ms']} ms, p99 {res['small_p99_ms']} ms, "
                  f"max {res['small_max_ms']} ms ({res['small_n']} queries, {res['small_statuses']}); bulk "
                  f"{res['bulk_shared_s']} s shared vs {res['bulk_alone_s']} s alone ({res['bulk_ratio']:.1%})", flush=True)
            rounds.append(res)
    finally:
        server.terminate()
        server.wait()
    med = {k: statistics.median(r[k] for r in rounds)
           for k in ["small_p50_ms", "small_p99_ms", "small_max_ms", "bulk_ratio", "bulk_shared_s", "bulk_alone_s"]}
    print(f"medians of {len(rounds)}: small p50 {med['small_p50_ms']} ms, p99 {med['small_p99_ms']} ms, "
          f"max {med['small_max_ms']} ms; bulk throughput beside the queries {med['bulk_ratio']:.1%} of alone")
    print(json.dumps({"rounds": rounds, "medians": med}))


if __name__ == "__main__":
    main()
