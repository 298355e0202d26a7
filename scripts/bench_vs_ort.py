#!/usr/bin/env python3
"""Engine benchmark beside the yardstick: runs ONNX Runtime (../shared/bench/engine_ort.py, fp32)
and `openembed bench` alternately, several rounds, on the same inputs, and prints medians and
ratios. This machine is noisy, so only ratios measured in the same run mean anything.

usage: scripts/bench_vs_ort.py [--rounds 3] [--limit 2000] [--threads 2]
(run `make bench`, which prepares the ONNX model and builds the release binary first)
"""
import argparse, json, os, statistics, subprocess, sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED = os.path.join(ROOT, "..", "shared", "bench")
PY = os.path.join(ROOT, "target", "bench", "venv", "bin", "python")
ONNX = os.path.join(ROOT, "target", "bench", "onnx-model")
BIN = os.path.join(ROOT, "target", "release", "openembed")
MODEL = os.path.join(ROOT, "models", "all-MiniLM-L6-v2")


def last_json(cmd):
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=ROOT).stdout
    return json.loads(out.strip().splitlines()[-1])


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--limit", type=int, default=2000)
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args()
    mixed = os.path.join(SHARED, "corpus", "mixed.jsonl")
    long = os.path.join(SHARED, "corpus", "long.jsonl")
    rows = {"ort_mixed": [], "ours_mixed": [], "ours_packed": [], "ort_32x128": [], "ours_32x128": []}
    for r in range(a.rounds):
        ort = last_json([PY, os.path.join(SHARED, "engine_ort.py"), "--model-dir", ONNX, "--corpus", mixed,
                         "--batch", "32", "--threads", str(a.threads), "--variants", "fp32", "--limit", str(a.limit)])
        rows["ort_mixed"].append(ort["results"]["fp32"]["tokens_per_s"])
        ours = last_json([BIN, "bench", "--model", MODEL, "--corpus", mixed, "--long-corpus", long, "--limit", str(a.limit),
                          "--threads", str(a.threads), "--workloads", "corpus,packed,full"])
        for res in ours["results"]:
            key = {"corpus sorted batches": "ours_mixed", "corpus token-budget batches": "ours_packed", "32x128": "ours_32x128"}[res["workload"]]
            rows[key].append(res["tokens_per_s"])
        ort = last_json([PY, os.path.join(SHARED, "engine_ort.py"), "--model-dir", ONNX, "--corpus", long, "--max-length", "128",
                         "--batch", "32", "--threads", str(a.threads), "--variants", "fp32", "--limit", "320"])
        rows["ort_32x128"].append(ort["results"]["fp32"]["tokens_per_s"])
        print(f"round {r + 1}: " + ", ".join(f"{k} {v[-1]:.0f}" for k, v in rows.items()), flush=True)
    med = {k: statistics.median(v) for k, v in rows.items()}
    ratios = {
        "mixed_sorted32_vs_ort": med["ours_mixed"] / med["ort_mixed"],
        "mixed_packed_vs_ort": med["ours_packed"] / med["ort_mixed"],
        "32x128_vs_ort": med["ours_32x128"] / med["ort_32x128"],
    }
    print("medians (tokens/s): " + ", ".join(f"{k} {v:.0f}" for k, v in med.items()))
    print("ratios: " + ", ".join(f"{k} {v:.2f}" for k, v in ratios.items()))
    print(json.dumps({"threads": a.threads, "limit": a.limit, "rounds": a.rounds, "medians": med, "ratios": ratios}))


if __name__ == "__main__":
    sys.exit(main())
