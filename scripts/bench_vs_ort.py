#!/usr/bin/env python3
"""Engine benchmark beside the yardsticks: ONNX Runtime (../shared/bench/engine_ort.py) in fp32 and
dynamic int8, OpenVINO on the same ONNX in bf16 (`ov-bf16`, AMX tiles where the CPU has them) and
OpenVINO's static int8 (`ov-int8`: an IR quantized with NNCF by make_ov_int8.py, built on first
use), and `openembed-bench` in each --dtype, alternately, several rounds, on the same texts, at
the all-MiniLM-L6-v2 shape or the BERT-base shape. Prints medians in texts/s and tokens/s and
every dtype's ratio to each yardstick. These machines are noisy: only ratios from one run mean
anything.

Both engines get the very same texts: the sample engine_ort.py itself would draw (--limit texts,
random.Random(--seed).sample) is written to target/bench/ and handed to both whole, in sorted
batches of 32 (ORT pads each batch to its longest text; we pack without padding). Both warm up on
the same untimed batches first (--warmup-batches: by default every batch from the middle of the
sorted list to the longest, so neither engine's timing includes growing its buffers to a size it
keeps afterwards, as a serving process would have).

--shape bert-base builds target/bench/bert-base (random weights at bge-base / e5-base shape,
../shared/bench/make_random_bert.py) and its fp32 and int8 ONNX (make_onnx.py) on first use.

usage: scripts/bench_vs_ort.py [--shape minilm|bert-base] [--dtype float32,bfloat16,int8]
                               [--yardsticks fp32,int8,ov-fp32,ov-bf16,ov-int8]
                               [--rounds 3] [--limit 5000] [--seed 0] [--threads 2]
(run `make bench`, which prepares the venv and ONNX model and builds the release binary first)
"""
import argparse, json, os, random, statistics, subprocess, sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED = os.path.join(ROOT, "..", "shared", "bench")
BENCH = os.path.join(ROOT, "target", "bench")
PY = os.path.join(BENCH, "venv", "bin", "python")
BIN = os.path.join(ROOT, "target", "release", "openembed")
BENCH_BIN = os.path.join(ROOT, "target", "release", "openembed-bench")
MINILM = os.path.join(ROOT, "models", "all-MiniLM-L6-v2")


def last_json(cmd):
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=ROOT).stdout
    return json.loads(out.strip().splitlines()[-1])


def folders(shape):
    """(our model folder, ONNX folder) for a shape, building the BERT-base pair when missing."""
    if shape == "minilm":
        return MINILM, os.path.join(BENCH, "onnx-model")
    model, onnx = os.path.join(BENCH, "bert-base"), os.path.join(BENCH, "bert-base-onnx")
    if not os.path.exists(os.path.join(model, "model.safetensors")):
        subprocess.run([PY, os.path.join(SHARED, "make_random_bert.py"), MINILM, model], check=True)
    if not os.path.isdir(onnx):
        subprocess.run([PY, os.path.join(SHARED, "make_onnx.py"), model, onnx], check=True)
    return model, onnx


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--shape", choices=["minilm", "bert-base"], default="minilm")
    p.add_argument("--dtype", default="float32,bfloat16,int8", help="our dtypes, comma-separated")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--limit", type=int, default=5000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--warmup-batches", type=int, default=10**6,
                   help="untimed batches each engine runs first, from the middle of the sorted batches on "
                        "(the default takes all of them up to the longest: both engines' buffers have reached "
                        "their steady-state size, as in a serving process, before the clock starts)")
    p.add_argument("--yardsticks", default="fp32,int8",
                   help="engine_ort.py variants (fp32, int8, ov-fp32, ov-bf16) and ov-int8 (NNCF static int8 IR)")
    a = p.parse_args()
    model, onnx = folders(a.shape)
    yardsticks = [y.strip() for y in a.yardsticks.split(",") if y.strip()]
    variants = []
    for y in yardsticks:
        if y == "ov-int8":
            ir = os.path.join(BENCH, f"{a.shape}-ov-int8.xml")
            if not os.path.exists(ir):
                subprocess.run([PY, os.path.join(SHARED, "make_ov_int8.py"), onnx, ir], check=True)
            variants.append(ir)
        else:
            variants.append(y)
    corpus = os.path.join(SHARED, "corpus", "mixed.jsonl")
    with open(corpus, encoding="utf-8") as f:
        texts = [json.loads(line) for line in f if line.strip()]
    texts = [t if isinstance(t, str) else (t.get("text") or t.get("input")) for t in texts]
    if a.limit and a.limit < len(texts):
        texts = random.Random(a.seed).sample(texts, a.limit)
    mixed = os.path.join(BENCH, f"mixed-sample-{len(texts)}-seed{a.seed}.jsonl")
    with open(mixed, "w", encoding="utf-8") as f:
        f.writelines(json.dumps(t) + "\n" for t in texts)
    dtypes = [d.strip() for d in a.dtype.split(",") if d.strip()]
    names = {v: ("ort " + y if not y.startswith("ov-") else y) for y, v in zip(yardsticks, variants)}
    rows = {**{n: [] for n in names.values()}, **{f"ours {d}": [] for d in dtypes}}
    text_rows = {k: [] for k in rows}
    resident = {}
    for r in range(a.rounds):
        ort = last_json([PY, os.path.join(SHARED, "engine_ort.py"), "--model-dir", onnx, "--corpus", mixed,
                         "--batch", "32", "--threads", str(a.threads), "--variants", ",".join(variants), "--limit", "0",
                         "--warmup-batches", str(a.warmup_batches)])
        for v, name in names.items():
            rows[name].append(ort["results"][v]["tokens_per_s"])
            text_rows[name].append(ort["results"][v]["texts_per_s"])
        for d in dtypes:
            ours = last_json([BENCH_BIN, "--model", model, "--corpus", mixed, "--limit", str(len(texts)),
                              "--threads", str(a.threads), "--workloads", "corpus", "--dtype", d,
                              "--warmup-batches", str(a.warmup_batches)])
            for res in ours["results"]:
                if res["workload"] == "corpus sorted batches":
                    rows[f"ours {d}"].append(res["tokens_per_s"])
                    text_rows[f"ours {d}"].append(res["texts_per_s"])
                if res["workload"] == "load":
                    resident[d] = res["resident_mib"]
            kernels = ours.get("kernels", "?")
        print(f"round {r + 1} (texts/s): " + ", ".join(f"{k} {v[-1]:.0f}" for k, v in text_rows.items()), flush=True)
    med = {k: statistics.median(v) for k, v in rows.items()}
    texts_med = {k: statistics.median(v) for k, v in text_rows.items()}
    ratios = {f"{d} vs {n}": texts_med[f"ours {d}"] / texts_med[n] for d in dtypes for n in names.values()}
    print(f"shape {a.shape}, {len(texts)} texts, {a.threads} threads, our kernels {kernels}")
    print("medians (texts/s): " + ", ".join(f"{k} {v:.0f}" for k, v in texts_med.items()))
    print("medians (tokens/s, each engine's own count): " + ", ".join(f"{k} {v:.0f}" for k, v in med.items()))
    print("ratios: " + ", ".join(f"{k} {v:.2f}" for k, v in ratios.items()))
    print("resident after load (MiB): " + ", ".join(f"{d} {v:.0f}" for d, v in resident.items()))
    print(json.dumps({"shape": a.shape, "threads": a.threads, "texts": len(texts), "seed": a.seed, "rounds": a.rounds,
                      "kernels": kernels, "medians": med, "texts_per_s": texts_med, "ratios": ratios, "resident_mib": resident}))


if __name__ == "__main__":
    sys.exit(main())
