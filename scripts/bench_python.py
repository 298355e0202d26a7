#!/usr/bin/env python3
"""`openembed.Model.encode` beside `openembed-bench` on the same texts: the first --limit texts of
the mixed corpus, 2 threads, float32 (or --dtype). Python's figure is end to end (tokenization
included), so it is compared with the engine's text-to-vectors figure of the same run.
sentence-transformers' own encode is measured too when it is installed in the same interpreter.

Usage: target/python/venv/bin/python scripts/bench_python.py [--limit N] [--rounds R] [--dtype D]
(after `make test` or scripts/test-python.sh, which build the package into that venv).
"""
import argparse
import json
import os
import statistics
import subprocess
import time

import openembed

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.join(ROOT, "target/release/openembed")
BENCH_BIN = os.path.join(ROOT, "target", "release", "openembed-bench")
MODEL = os.path.join(ROOT, "models/all-MiniLM-L6-v2")
CORPUS = os.path.join(ROOT, "../shared/bench/corpus/mixed.jsonl")


def texts(limit):
    out = []
    with open(CORPUS) as f:
        for line in f:
            v = json.loads(line)
            out.append(v if isinstance(v, str) else v.get("text") or v.get("input"))
            if len(out) == limit:
                break
    return out


def engine(limit, dtype):
    out = subprocess.run([BENCH_BIN, "--model", MODEL, "--workloads", "packed", "--threads", "2",
                          "--limit", str(limit), "--dtype", dtype, "--batch-tokens", "8192"],
                         check=True, capture_output=True, text=True, cwd=ROOT).stdout
    results = json.loads(out.strip().splitlines()[-1])["results"]
    return next(r["tokens_per_s"] for r in results if r["workload"].endswith("from text"))


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--limit", type=int, default=2000)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--dtype", default="float32")
    a = p.parse_args()
    corpus = texts(a.limit)
    model = openembed.Model(MODEL, threads=2, dtype=a.dtype)
    tokens = sum(len(t) for t in model.tokenize(corpus))
    model.encode(corpus[:200])  # warm-up
    st_model = None
    try:
        import torch
        from sentence_transformers import SentenceTransformer
        torch.set_num_threads(2)
        st_model = SentenceTransformer(MODEL, device="cpu")
    except ImportError:
        pass
    py, eng, st = [], [], []
    for _ in range(a.rounds):
        start = time.perf_counter()
        model.encode(corpus, batch_size=256)
        py.append(tokens / (time.perf_counter() - start))
        eng.append(engine(a.limit, a.dtype))
        line = f"openembed.encode {py[-1]:.0f} tok/s, openembed bench (text to vectors) {eng[-1]:.0f} tok/s"
        if st_model is not None:
            start = time.perf_counter()
            st_model.encode(corpus, batch_size=32)
            st.append(tokens / (time.perf_counter() - start))
            line += f", sentence-transformers {st[-1]:.0f} tok/s"
        print(line, flush=True)
    result = {"texts": len(corpus), "tokens": tokens, "encode_tok_s": statistics.median(py),
              "engine_tok_s": statistics.median(eng), "encode_vs_engine": statistics.median(py) / statistics.median(eng)}
    if st:
        result["sentence_transformers_tok_s"] = statistics.median(st)
        result["encode_vs_sentence_transformers"] = statistics.median(py) / statistics.median(st)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
