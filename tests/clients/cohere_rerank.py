"""Cohere's official SDK (its v2 client) and a Jina-style HTTP request against openembed's
rerank routes: scores equal the tiny cross-encoder's reference, ordered best first, top_n
honoured, and an unknown model raises the SDK's not-found error.

usage: cohere_rerank.py BASE_URL REFERENCE_JSON MODEL_NAME
"""

import json
import sys
import urllib.request

import cohere

base, reference_path, model = sys.argv[1], sys.argv[2], sys.argv[3]
reference = json.load(open(reference_path))
cases = reference["pair_cases"]
query = cases[0]["query"]
same = [c for c in cases if c["query"] == query]
docs = [c["document"] for c in same]
want = [c["predict_default"] for c in same]

co = cohere.ClientV2(api_key="unused", base_url=base)
response = co.rerank(model=model, query=query, documents=docs)
assert len(response.results) == len(docs), response
scores = [r.relevance_score for r in response.results]
assert scores == sorted(scores, reverse=True), scores
for r in response.results:
    assert abs(r.relevance_score - want[r.index]) <= 1e-5, (r, want[r.index])

top = co.rerank(model=model, query=query, documents=docs, top_n=1)
assert len(top.results) == 1 and top.results[0].index == response.results[0].index

try:
    co.rerank(model="no-such-model", query=query, documents=docs)
    raise SystemExit("an unknown model must fail")
except cohere.errors.NotFoundError:
    pass

# Jina's request shape (documents as objects, return_documents) on /v1/rerank: same numbers.
body = json.dumps({"model": model, "query": query, "documents": [{"text": d} for d in docs],
                   "top_n": len(docs), "return_documents": True}).encode()
request = urllib.request.Request(base + "/v1/rerank", data=body, headers={"Content-Type": "application/json"})
jina = json.load(urllib.request.urlopen(request))
assert [r["index"] for r in jina["results"]] == [r.index for r in response.results]
for r in jina["results"]:
    assert abs(r["relevance_score"] - want[r["index"]]) <= 1e-5
    assert r["document"]["text"] == docs[r["index"]]
assert jina["usage"]["total_tokens"] > 0
print(f"cohere SDK {cohere.__version__}: {len(docs)} documents ranked as the reference")
