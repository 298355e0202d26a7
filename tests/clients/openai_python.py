"""The official openai Python client against a running openembed server.

Usage: openai_python.py BASE_URL REFERENCE_JSONL
Checks client.embeddings.create with default settings (the client asks for base64) and with
encoding_format="float" against the sentence-transformers reference vectors. Exits 1 on a mismatch.
"""
import sys

import numpy as np
import openai
from reference import untruncated_lines


def main() -> int:
    base_url, reference = sys.argv[1], sys.argv[2]
    lines = untruncated_lines(reference)
    texts = [l["text"] for l in lines]
    want = np.array([l["embedding"] for l in lines], dtype=np.float32)
    client = openai.OpenAI(base_url=base_url, api_key="sk-test", max_retries=0)

    failures = []
    for label, kwargs in [("default (base64)", {}), ("float", {"encoding_format": "float"})]:
        resp = client.embeddings.create(model="text-embedding-3-small", input=texts, **kwargs)
        got = np.array([d.embedding for d in resp.data], dtype=np.float32)
        if [d.index for d in resp.data] != list(range(len(texts))):
            failures.append(f"{label}: indices out of order")
        cos = np.sum(got * want, axis=1) / (np.linalg.norm(got, axis=1) * np.linalg.norm(want, axis=1))
        diff = np.abs(got - want).max()
        print(f"{label}: {len(texts)} vectors, min cosine {cos.min():.7f}, max abs diff {diff:.2e}")
        if cos.min() < 0.99999 or diff > 1e-4:
            failures.append(f"{label}: vectors differ from the reference")
        if resp.usage.prompt_tokens != sum(l["tokens"] for l in lines):
            failures.append(f"{label}: usage {resp.usage.prompt_tokens}")
        if resp.model != "text-embedding-3-small":
            failures.append(f"{label}: model {resp.model}")

    one = client.embeddings.create(model="text-embedding-3-small", input=texts[0], dimensions=32)
    v = np.array(one.data[0].embedding)
    if v.shape != (32,) or abs(np.linalg.norm(v) - 1) > 1e-5:
        failures.append(f"dimensions: shape {v.shape}, norm {np.linalg.norm(v)}")

    try:
        client.embeddings.create(model="no-such-model", input="x")
        failures.append("unknown model did not raise")
    except openai.NotFoundError as e:
        if e.body.get("code") != "model_not_found":
            failures.append(f"unknown model: {e.body}")
    try:
        client.embeddings.create(model="text-embedding-3-small", input="x " * 600)
        failures.append("over-long input did not raise")
    except openai.BadRequestError as e:
        if "maximum context length is 256 tokens" not in e.message:
            failures.append(f"over-long input: {e.message}")

    models = [m.id for m in client.models.list()]
    if "text-embedding-3-small" not in models:
        failures.append(f"models.list: {models}")
    if client.models.retrieve("all-MiniLM-L6-v2").id != "all-MiniLM-L6-v2":
        failures.append("models.retrieve")

    for f in failures:
        print("FAIL:", f)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
