"""The official `ollama` Python client and langchain-ollama's OllamaEmbeddings against a running
openembed server, as an Ollama user would point them at it.

Usage: ollama_client.py BASE_URL REFERENCE_JSONL
The model is served as `all-MiniLM-L6-v2` with the alias `all-minilm:latest`. Checks embed (list
and single input, dimensions, truncate), the legacy embeddings call, list / ps / show, Ollama's
errors (404 unknown model, 400 over-long input without truncation), and that every vector equals
the one /v1/embeddings gives for the same text, and the sentence-transformers reference.
Exits 1 on a mismatch.
"""
import base64
import json
import sys
import urllib.request

import numpy as np
import ollama
from langchain_ollama import OllamaEmbeddings
from reference import untruncated_lines


def openai_vectors(base_url, texts, **fields):
    body = json.dumps({"model": "all-MiniLM-L6-v2", "input": texts, "encoding_format": "base64", **fields}).encode()
    request = urllib.request.Request(base_url + "/v1/embeddings", data=body, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request) as response:
        data = json.load(response)["data"]
    return np.stack([np.frombuffer(base64.b64decode(d["embedding"]), dtype="<f4") for d in data])


def main() -> int:
    base_url, reference = sys.argv[1], sys.argv[2]
    lines = untruncated_lines(reference)
    texts = [l["text"] for l in lines]
    want = np.array([l["embedding"] for l in lines], dtype=np.float32)
    same = openai_vectors(base_url, texts)
    client = ollama.Client(host=base_url)
    failures = []

    def check(label, got, exact):
        got = np.asarray(got, dtype=np.float32)
        if got.shape != exact.shape or not np.array_equal(got, exact):
            failures.append(f"{label}: differs from /v1/embeddings")
            return
        ref = want[: len(got)]
        cos = np.sum(got * ref, axis=1) / (np.linalg.norm(got, axis=1) * np.linalg.norm(ref, axis=1))
        print(f"{label}: {len(got)} vectors, equal to /v1/embeddings, min cosine to the reference {cos.min():.7f}")
        if cos.min() < 0.99999:
            failures.append(f"{label}: min cosine {cos.min()}")

    for name in ["all-MiniLM-L6-v2", "all-minilm:latest", "all-minilm"]:
        resp = client.embed(model=name, input=texts)
        check(f"embed as {name}", resp.embeddings, same)
        if resp.model != name or resp.prompt_eval_count != sum(l["tokens"] for l in lines):
            failures.append(f"embed as {name}: model {resp.model}, prompt_eval_count {resp.prompt_eval_count}")
    one = client.embed(model="all-minilm", input=texts[0])
    check("embed of one string", one.embeddings, same[:1])
    legacy = client.embeddings(model="all-minilm", prompt=texts[0])
    check("legacy embeddings", [legacy.embedding], same[:1])
    cut = client.embed(model="all-minilm", input=texts[:2], dimensions=32)
    if not np.array_equal(np.asarray(cut.embeddings, dtype=np.float32), openai_vectors(base_url, texts[:2], dimensions=32)):
        failures.append("dimensions: differ from /v1/embeddings")

    lc = OllamaEmbeddings(model="all-minilm", base_url=base_url)
    check("langchain embed_documents", lc.embed_documents(texts), same)
    check("langchain embed_query", [lc.embed_query(texts[0])], same[:1])

    names = {m.model for m in client.list().models}
    if not {"all-MiniLM-L6-v2:latest", "all-minilm:latest"} <= names:
        failures.append(f"list: {names}")
    if not {m.model for m in client.ps().models} == names:
        failures.append("ps differs from list")
    shown = client.show("all-minilm")
    if shown.modelinfo.get("bert.embedding_length") != 384 or "embedding" not in (shown.capabilities or []):
        failures.append(f"show: {shown.modelinfo} {shown.capabilities}")

    long = "word " * 600
    truncated = client.embed(model="all-minilm", input=long)
    if len(truncated.embeddings[0]) != 384:
        failures.append("a long input is not cut by default")
    for label, call, status in [
        ("unknown model", lambda: client.embed(model="no-such-model", input="x"), 404),
        ("over-long, truncate=False", lambda: client.embed(model="all-minilm", input=long, truncate=False), 400),
        ("dimensions 0", lambda: client.embed(model="all-minilm", input="x", dimensions=0), 400),
    ]:
        try:
            call()
            failures.append(f"{label}: no error")
        except ollama.ResponseError as e:
            print(f"{label}: {e.status_code} {e.error}")
            if e.status_code != status or not e.error:
                failures.append(f"{label}: {e.status_code} {e.error!r}")

    for f in failures:
        print("FAIL:", f)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
