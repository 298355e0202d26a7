"""The clients written for Text Embeddings Inference against a running openembed server, as their
users point them at TEI: huggingface_hub's InferenceClient (feature_extraction,
sentence_similarity, text_classification), llama-index's TextEmbeddingsInference and Haystack's
HuggingFaceAPI text and document embedders (api_type text_embeddings_inference).

Usage: tei_clients.py EMBED_URL CLASSIFY_URL REFERENCE_JSONL CLASSIFIER_REFERENCE_JSON
EMBED_URL serves all-MiniLM-L6-v2 first; CLASSIFY_URL serves the tiny classifier_bert fixture
first. Every vector must equal the one /v1/embeddings gives for the same text (cosine to the
sentence-transformers reference >= 0.99999), similarities the cosine of those vectors, and labels
and scores transformers' pipeline within 1e-5. Exits 1 on a mismatch.
"""
import base64
import json
import sys
import urllib.request

import numpy as np
from haystack import Document
from haystack_integrations.components.embedders.huggingface_api import (
    HuggingFaceAPIDocumentEmbedder,
    HuggingFaceAPITextEmbedder,
)
from huggingface_hub import InferenceClient
from llama_index.embeddings.text_embeddings_inference import TextEmbeddingsInference
from reference import untruncated_lines


def openai_vectors(base_url, texts):
    body = json.dumps({"model": "all-MiniLM-L6-v2", "input": texts, "encoding_format": "base64"}).encode()
    request = urllib.request.Request(base_url + "/v1/embeddings", data=body, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request) as response:
        data = json.load(response)["data"]
    return np.stack([np.frombuffer(base64.b64decode(d["embedding"]), dtype="<f4") for d in data])


def main() -> int:
    embed_url, classify_url, reference, classifier_reference = sys.argv[1:5]
    lines = untruncated_lines(reference)
    texts = [l["text"] for l in lines]
    want = np.array([l["embedding"] for l in lines], dtype=np.float32)
    same = openai_vectors(embed_url, texts)
    failures = []

    def check(label, got, exact):
        got = np.asarray(got, dtype=np.float32).reshape(exact.shape[0], -1)
        cos_same = np.sum(got * exact, axis=1) / (np.linalg.norm(got, axis=1) * np.linalg.norm(exact, axis=1))
        ref = want[: len(got)]
        cos = np.sum(got * ref, axis=1) / (np.linalg.norm(got, axis=1) * np.linalg.norm(ref, axis=1))
        print(f"{label}: {len(got)} vectors, min cosine to /v1/embeddings {cos_same.min():.7f}, to the reference {cos.min():.7f}")
        if cos_same.min() < 0.999999 or cos.min() < 0.99999:
            failures.append(f"{label}: min cosine {cos_same.min()} / {cos.min()}")

    client = InferenceClient(model=embed_url)
    check("InferenceClient.feature_extraction (list)", client.feature_extraction(texts), same)
    check("InferenceClient.feature_extraction (one)", client.feature_extraction(texts[0]), same[:1])
    check("InferenceClient.feature_extraction (normalize, truncate)",
          client.feature_extraction(texts[:3], normalize=True, truncate=True, truncation_direction="right"), same[:3])
    sims = np.asarray(client.sentence_similarity(texts[0], texts[1:6]), dtype=np.float32)
    unit = same / np.linalg.norm(same, axis=1, keepdims=True)
    want_sims = unit[1:6] @ unit[0]
    print(f"InferenceClient.sentence_similarity: max diff {np.abs(sims - want_sims).max():.2e}")
    if sims.shape != want_sims.shape or np.abs(sims - want_sims).max() > 1e-5:
        failures.append(f"sentence_similarity: {sims} vs {want_sims}")

    llama = TextEmbeddingsInference(model_name="all-MiniLM-L6-v2", base_url=embed_url, embed_batch_size=7)
    check("llama-index get_text_embedding_batch", llama.get_text_embedding_batch(texts), same)
    check("llama-index get_query_embedding", [llama.get_query_embedding(texts[0])], same[:1])

    haystack_text = HuggingFaceAPITextEmbedder(api_type="text_embeddings_inference", api_params={"url": embed_url})
    check("Haystack text embedder", [haystack_text.run(text=texts[0])["embedding"]], same[:1])
    haystack_docs = HuggingFaceAPIDocumentEmbedder(
        api_type="text_embeddings_inference", api_params={"url": embed_url}, batch_size=5
    )
    docs = haystack_docs.run(documents=[Document(content=t) for t in texts])["documents"]
    check("Haystack document embedder", [d.embedding for d in docs], same)

    with open(classifier_reference, encoding="utf-8") as f:
        cases = json.load(f)["cases"]
    classify = InferenceClient(model=classify_url)
    worst = 0.0
    for case in cases:
        if not case["text"]:
            continue  # the client refuses an empty text before sending it
        got = classify.text_classification(case["text"])
        expected = case["pipeline_top_k_none"]
        if [g.label for g in got] != [e["label"] for e in expected]:
            failures.append(f"text_classification {case['text'][:30]!r}: {got} vs {expected}")
            continue
        worst = max(worst, max(abs(g.score - e["score"]) for g, e in zip(got, expected)))
        top = classify.text_classification(case["text"], top_k=1)
        if len(top) != 1 or top[0].label != case["pipeline_default"]["label"]:
            failures.append(f"text_classification top_k=1: {top}")
    print(f"InferenceClient.text_classification: {len(cases) - 1} texts, labels in the pipeline's order, max score diff {worst:.2e}")
    if worst > 1e-5:
        failures.append(f"text_classification: score diff {worst}")

    for failure in failures:
        print("FAIL", failure)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
