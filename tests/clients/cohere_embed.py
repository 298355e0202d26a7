"""Cohere's official SDK against openembed's embed routes, as a Cohere user calls them:
ClientV2.embed with every embedding type and Client.embed (v1). Checks that floats equal
/v1/embeddings', base64 decodes to them, binary / ubinary are numpy's packbits of the signs
(sentence-transformers' quantize_embeddings), int8 / uint8 codes of a text do not depend on the
batch it is in, that retrieval with compressed vectors finds what float retrieval finds (top-10
overlap: int8 dot products >= 0.95, binary Hamming search with 10x oversampling and float
rescoring >= 0.9, on 2,000 corpus texts and 200 queries),
and Cohere's errors. Exits 1 on a failure.

usage: cohere_embed.py BASE_URL CORPUS_JSONL
"""
import base64
import json
import sys
import urllib.request

import cohere
import numpy as np

MODEL = "all-MiniLM-L6-v2"
TYPES = ["float", "int8", "uint8", "binary", "ubinary", "base64"]


def openai_vectors(base_url, texts):
    body = json.dumps({"model": MODEL, "input": texts, "encoding_format": "base64", "truncate": True}).encode()
    request = urllib.request.Request(base_url + "/v1/embeddings", data=body, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request) as response:
        data = json.load(response)["data"]
    return np.stack([np.frombuffer(base64.b64decode(d["embedding"]), dtype="<f4") for d in data])


def embed_all(co, texts, input_type, types):
    """Embeddings of every text by type, 96 texts per call (Cohere's documented batch)."""
    out = {t: [] for t in types}
    for i in range(0, len(texts), 96):
        resp = co.embed(model=MODEL, texts=texts[i : i + 96], input_type=input_type, embedding_types=types)
        for t in types:
            out[t].extend(getattr(resp.embeddings, "float_" if t == "float" else t))
    return {t: np.asarray(v) if t != "base64" else v for t, v in out.items()}


def top10(scores):
    return np.argsort(-scores, axis=1, kind="stable")[:, :10]


def overlap(a, b):
    return float(np.mean([len(set(x) & set(y)) / 10 for x, y in zip(a, b)]))


def main() -> int:
    base_url, corpus_path = sys.argv[1], sys.argv[2]
    with open(corpus_path, encoding="utf-8") as f:
        lines = [json.loads(line) for _, line in zip(range(2200), f)]
    corpus, queries = lines[:2000], lines[2000:2200]
    failures = []
    co = cohere.ClientV2(api_key="unused", base_url=base_url)

    texts = corpus[:40]
    resp = co.embed(model=MODEL, texts=texts, input_type="search_document", embedding_types=TYPES)
    floats = np.asarray(resp.embeddings.float_, dtype=np.float32)
    same = openai_vectors(base_url, texts)
    cos = np.sum(floats * same, axis=1) / (np.linalg.norm(floats, axis=1) * np.linalg.norm(same, axis=1))
    print(f"v2 float: {len(floats)} vectors, min cosine to /v1/embeddings {cos.min():.7f}")
    if cos.min() < 0.999999:
        failures.append(f"float: cosine {cos.min()}")
    decoded = np.stack([np.frombuffer(base64.b64decode(b), dtype="<f4") for b in resp.embeddings.base64])
    if not np.array_equal(decoded, same):
        failures.append("base64 does not decode to /v1/embeddings' floats")
    packed = np.packbits(same > 0, axis=-1)
    if not np.array_equal(np.asarray(resp.embeddings.ubinary), packed):
        failures.append("ubinary is not packbits(x > 0)")
    if not np.array_equal(np.asarray(resp.embeddings.binary), packed.astype(np.int16) - 128):
        failures.append("binary is not packbits(x > 0) - 128")
    int8 = np.asarray(resp.embeddings.int8)
    uint8 = np.asarray(resp.embeddings.uint8)
    if int8.shape != same.shape or int8.min() < -128 or int8.max() > 127 or uint8.min() < 0 or uint8.max() > 255:
        failures.append(f"int8 / uint8 out of range: {int8.shape}")
    alone = co.embed(model=MODEL, texts=[texts[7]], input_type="search_document", embedding_types=["int8", "uint8"])
    if alone.embeddings.int8[0] != int8[7].tolist() or alone.embeddings.uint8[0] != uint8[7].tolist():
        failures.append("a text's int8 / uint8 codes depend on the batch it is in")
    print(f"v2 types {TYPES}: base64, binary, ubinary exact; int8/uint8 codes independent of the batch")

    # The same codes through the other protocols' extension field.
    def post(path, body):
        request = urllib.request.Request(base_url + path, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request) as response:
            return json.load(response)

    for t in ["int8", "uint8", "binary", "ubinary"]:
        openai = post("/v1/embeddings", {"model": MODEL, "input": texts, "embedding_type": t, "truncate": True})
        tei = post("/embed", {"inputs": texts, "embedding_type": t, "truncate": True})
        want = getattr(resp.embeddings, t)
        if [d["embedding"] for d in openai["data"]] != want or tei != want:
            failures.append(f"{t}: /v1/embeddings or /embed codes differ from Cohere's")
    print("embedding_type on /v1/embeddings and /embed: the same codes")

    v1 = cohere.Client(api_key="unused", base_url=base_url).embed(texts=texts[:3], model=MODEL, input_type="search_query")
    if not np.allclose(np.asarray(v1.embeddings, dtype=np.float32), same[:3], atol=1e-6):
        failures.append("v1 embed floats differ")
    cut = co.embed(model=MODEL, texts=texts[:2], input_type="search_query", embedding_types=["float"], output_dimension=64)
    if np.asarray(cut.embeddings.float_).shape != (2, 64):
        failures.append("output_dimension")

    docs = embed_all(co, corpus, "search_document", ["float", "int8", "ubinary"])
    qs = embed_all(co, queries, "search_query", ["float", "int8", "ubinary"])
    exact = top10(qs["float"] @ docs["float"].T)
    # int8: dot products of the codes, as a vector database with int8 storage computes them.
    int8_top = top10(qs["int8"].astype(np.float32) @ docs["int8"].astype(np.float32).T)
    # binary: Hamming distance for 100 candidates (10x oversampling), rescored with the float
    # vectors (a vector database's binary quantization with rescoring). 384 bits are few:
    # all-MiniLM-L6-v2 keeps 0.83 of the top 10 with 4x oversampling, 0.95 with 10x.
    doc_bits = np.unpackbits(docs["ubinary"].astype(np.uint8), axis=1)[:, : docs["float"].shape[1]]
    q_bits = np.unpackbits(qs["ubinary"].astype(np.uint8), axis=1)[:, : docs["float"].shape[1]]
    hamming = (q_bits[:, None, :] != doc_bits[None, :, :]).sum(axis=2)
    candidates = np.argsort(hamming, axis=1, kind="stable")[:, :100]
    binary_top = []
    for q, cand in zip(qs["float"], candidates):
        rescored = docs["float"][cand] @ q
        binary_top.append(cand[np.argsort(-rescored, kind="stable")[:10]])
    o_int8, o_binary = overlap(int8_top, exact), overlap(binary_top, exact)
    print(f"retrieval, 2,000 texts, 200 queries: top-10 overlap with float int8 {o_int8:.3f}, binary + rescoring {o_binary:.3f}")
    if o_int8 < 0.95 or o_binary < 0.9:
        failures.append(f"retrieval overlap int8 {o_int8}, binary {o_binary}")

    for label, call, error in [
        ("unknown type", lambda: co.embed(model=MODEL, texts=["x"], input_type="search_query", embedding_types=["int4"]), cohere.errors.BadRequestError),
        ("unknown model", lambda: co.embed(model="nope", texts=["x"], input_type="search_query"), cohere.errors.NotFoundError),
        ("unknown input type", lambda: co.embed(model=MODEL, texts=["x"], input_type="image"), cohere.errors.BadRequestError),
        ("over-long with NONE", lambda: co.embed(model=MODEL, texts=["word " * 600], input_type="search_query", truncate="NONE"), cohere.errors.BadRequestError),
    ]:
        try:
            call()
            failures.append(f"{label}: accepted")
        except error as e:
            if not isinstance(e.body, dict) or not e.body.get("message"):
                failures.append(f"{label}: not Cohere's error shape: {e.body}")
    long = co.embed(model=MODEL, texts=["word " * 600], input_type="search_query", embedding_types=["float"])
    if len(long.embeddings.float_[0]) != 384:
        failures.append("over-long text not cut by default (truncate END)")

    for failure in failures:
        print("FAIL", failure)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
