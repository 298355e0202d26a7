#!/usr/bin/env python3
"""Rerank throughput, engine beside server, on the same pairs: 10 queries × 100 documents of the
mixed corpus (the pairs of `openembed bench --workloads rerank`).

The reranker is a cross-encoder at ms-marco-MiniLM-L-6-v2's shape: the default model's encoder
and tokenizer with a random pooler and classifier (the cost does not depend on the values),
written to target/bench/cross-encoder-minilm. The server gets one request per query (100
documents), 4 at a time, for --rounds rounds; the figure is pairs/s over the whole run.

Usage: scripts/bench_rerank.py [--rounds N]. Needs target/release/openembed and the default model.
"""
import argparse
import concurrent.futures
import json
import os
import random
import shutil
import statistics
import struct
import subprocess
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.join(ROOT, "target/release/openembed")
BENCH_BIN = os.path.join(ROOT, "target", "release", "openembed-bench")
CORPUS = os.path.join(ROOT, "../shared/bench/corpus/mixed.jsonl")
SOURCE = os.path.join(ROOT, "models/all-MiniLM-L6-v2")
MODEL = os.path.join(ROOT, "target/bench/cross-encoder-minilm")


def build_model():
    """The default model's weights plus a random pooler and one-label classifier."""
    if os.path.exists(os.path.join(MODEL, "model.safetensors")):
        return
    os.makedirs(MODEL, exist_ok=True)
    with open(os.path.join(SOURCE, "model.safetensors"), "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        data = f.read()
    header.pop("__metadata__", None)
    hidden = 384
    rng = random.Random(7)
    extra = {
        "pooler.dense.weight": [hidden, hidden], "pooler.dense.bias": [hidden],
        "classifier.weight": [1, hidden], "classifier.bias": [1],
    }
    blobs, out_header, offset = [], {}, 0
    for name, meta in header.items():
        if name.startswith("pooler."):
            continue
        start, end = meta["data_offsets"]
        blobs.append(data[start:end])
        out_header[name] = {"dtype": meta["dtype"], "shape": meta["shape"], "data_offsets": [offset, offset + end - start]}
        offset += end - start
    for name, shape in extra.items():
        count = 1
        for d in shape:
            count *= d
        blob = struct.pack(f"<{count}f", *(rng.uniform(-0.05, 0.05) for _ in range(count)))
        blobs.append(blob)
        out_header[name] = {"dtype": "F32", "shape": shape, "data_offsets": [offset, offset + len(blob)]}
        offset += len(blob)
    raw = json.dumps(out_header).encode()
    raw += b" " * ((8 - len(raw) % 8) % 8)
    with open(os.path.join(MODEL, "model.safetensors"), "wb") as f:
        f.write(struct.pack("<Q", len(raw)))
        f.write(raw)
        for b in blobs:
            f.write(b)
    config = json.load(open(os.path.join(SOURCE, "config.json")))
    config["architectures"] = ["BertForSequenceClassification"]
    config["id2label"] = {"0": "LABEL_0"}
    config["label2id"] = {"LABEL_0": 0}
    json.dump(config, open(os.path.join(MODEL, "config.json"), "w"))
    for f in ["tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"]:
        if os.path.exists(os.path.join(SOURCE, f)):
            shutil.copy(os.path.join(SOURCE, f), MODEL)


def texts():
    out = []
    with open(CORPUS) as f:
        for line in f:
            v = json.loads(line)
            out.append(v if isinstance(v, str) else v.get("text") or v.get("input"))
            if len(out) == 200:
                return out
    return out


def pairs():
    t = texts()
    docs = t[:100]
    queries = sorted(t[100:200], key=lambda s: (len(s.encode()), s.encode()))[:10]
    return [(q, docs) for q in queries]


def engine():
    out = subprocess.run([BENCH_BIN, "--model", MODEL, "--workloads", "rerank", "--threads", "2", "--limit", "200"],
                         check=True, capture_output=True, text=True, cwd=ROOT).stdout
    result = json.loads(out.strip().splitlines()[-1])["results"]
    return next(r["pairs_per_s"] for r in result if r.get("workload") == "rerank")


def server(rounds):
    proc = subprocess.Popen([BIN, "serve", "--port", "0", "--threads", "2", "--model", MODEL + "=reranker"],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, cwd=ROOT,
                            env={**os.environ, "RUST_LOG": "warn"})
    try:
        url = proc.stdout.readline().split("listening on ")[1].strip()
        work = pairs()

        def send(item):
            q, docs = item
            body = json.dumps({"model": "reranker", "query": q, "documents": docs}).encode()
            req = urllib.request.Request(url + "/v1/rerank", data=body, headers={"Content-Type": "application/json"})
            return len(json.load(urllib.request.urlopen(req))["results"])

        send(work[0])  # warm up
        start = time.perf_counter()
        done = 0
        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            for _ in range(rounds):
                done += sum(pool.map(send, work))
        return done / (time.perf_counter() - start)
    finally:
        proc.terminate()
        proc.wait()


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    build_model()
    eng, srv = [], []
    for _ in range(args.rounds):
        eng.append(engine())
        srv.append(server(1))
        print(f"engine {eng[-1]:.0f} pairs/s, server {srv[-1]:.0f} pairs/s ({srv[-1] / eng[-1]:.2f}x)", flush=True)
    e, s = statistics.median(eng), statistics.median(srv)
    print(f"median: engine {e:.0f} pairs/s, server {s:.0f} pairs/s, server/engine {s / e:.2f}")
    print(json.dumps({"engine_pairs_per_s": e, "server_pairs_per_s": s, "ratio": s / e}))


if __name__ == "__main__":
    main()
