#!/usr/bin/env python3
"""Engine benchmark beside the yardstick: runs ONNX Runtime (../shared/bench/engine_ort.py, fp32)
and `openembed bench` alternately, several rounds, on the same inputs, and prints medians and
ratios. This machine is noisy, so only ratios measured in the same run mean anything.

Both engines get the very same texts: the sample engine_ort.py itself would draw (--limit texts,
random.Random(--seed).sample, its defaults 5000 and 0; --limit 0 = the whole corpus) is written
to target/bench/ and handed to both whole. (engine_ort.py samples at random while `openembed
bench --limit` takes the first texts, so passing --limit to each would compare different texts,
and ONNX Runtime's padding depends on which.)

usage: scripts/bench_vs_ort.py [--rounds 3] [--limit 5000] [--seed 0] [--threads 2]
(run `make bench`, which prepares the ONNX model and builds the release binary first)
"""
import argparse, json, os, random, statistics, subprocess, sys

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
    p.add_argument("--limit", type=int, default=5000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args()
    corpus = os.path.join(SHARED, "corpus", "mixed.jsonl")
    long = os.path.join(SHARED, "corpus", "long.jsonl")
    # The sample engine_ort.py draws (same loader semantics: one JSON string per line).
    with open(corpus, encoding="utf-8") as f:
        texts = [json.loads(line) for line in f if line.strip()]
    texts = [t if isinstance(t, str) else (t.get("text") or t.get("input")) for t in texts]
    if a.limit and a.limit < len(texts):
        texts = random.Random(a.seed).sample(texts, a.limit)
    mixed = os.path.join(ROOT, "target", "bench", f"mixed-sample-{len(texts)}-seed{a.seed}.jsonl")
    with open(mixed, "w", encoding="utf-8") as f:
        f.writelines(json.dumps(t) + "\n" for t in texts)
    n = str(len(texts))
    rows = {"ort_mixed": [], "ours_mixed": [], "ours_packed": [], "ort_32x128": [], "ours_32x128": []}
    for r in range(a.rounds):
        ort = last_json([PY, os.path.join(SHARED, "engine_ort.py"), "--model-dir", ONNX, "--corpus", mixed,
                         "--batch", "32", "--threads", str(a.threads), "--variants", "fp32", "--limit", "0"])
        rows["ort_mixed"].append(ort["results"]["fp32"]["tokens_per_s"])
        ours = last_json([BIN, "bench", "--model", MODEL, "--corpus", mixed, "--long-corpus", long, "--limit", n,
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
    print(json.dumps({"threads": a.threads, "texts": len(texts), "seed": a.seed, "rounds": a.rounds, "medians": med, "ratios": ratios}))


if __name__ == "__main__":
    sys.exit(main())
