"""openembed.Model against sentence-transformers' reference vectors and the encode contract."""

import json
import os
import threading
import time

import numpy as np
import pytest

import openembed

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SHARED = os.path.join(ROOT, "..", "shared")
MINILM = os.path.join(ROOT, "models", "all-MiniLM-L6-v2")
GEMMA_TINY = os.path.join(SHARED, "fixtures", "tiny", "gemma3_embedding")


def reference():
    with open(os.path.join(SHARED, "fixtures", "reference", "all-MiniLM-L6-v2.jsonl")) as f:
        lines = [json.loads(line) for line in f if line.strip()]
    return lines[0], lines[1:]


@pytest.fixture(scope="module")
def model():
    return openembed.Model(MINILM, threads=2)


def cosines(a, b):
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    return (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))


def test_every_reference_line_as_a_batch_and_alone(model):
    header, cases = reference()
    assert model.dimension == header["dimension"]
    assert model.max_seq_length == header["max_seq_length"]
    texts = [c["text"] for c in cases]
    want = np.array([c["embedding"] for c in cases])
    batch = model.encode(texts, batch_size=8)
    assert batch.shape == (len(texts), model.dimension) and batch.dtype == np.float32
    assert batch.flags["C_CONTIGUOUS"]
    assert cosines(batch, want).min() >= 0.99999
    alone = np.stack([model.encode(t) for t in texts])
    assert cosines(alone, want).min() >= 0.99999
    assert model.tokenize(texts[0]) == [cases[0]["input_ids"]]


def test_shapes_normalization_and_truncate_dim(model):
    one = model.encode("hello world")
    assert one.shape == (model.dimension,) and one.dtype == np.float32
    listed = model.encode(["hello world"], convert_to_numpy=False)
    assert isinstance(listed, list) and np.allclose(listed[0], one)
    assert model.encode([]).shape == (0, model.dimension)
    assert model.normalize and abs(np.linalg.norm(one) - 1) < 1e-5
    cut = model.encode(["hello world"], truncate_dim=64)
    assert cut.shape == (1, 64) and np.allclose(cut[0], one[:64])
    cut_norm = model.encode(["hello world"], truncate_dim=64, normalize_embeddings=True)
    assert abs(np.linalg.norm(cut_norm[0]) - 1) < 1e-5
    assert model.pooling == ["mean"] and model.dtype == "float32"


def test_prompts_on_a_model_that_has_them():
    r = json.load(open(os.path.join(GEMMA_TINY, "reference.json")))
    m = openembed.Model(GEMMA_TINY, threads=1)
    assert set(m.prompts) == {"query", "document"}
    cases = r["text_cases"]
    texts = [c["text"] for c in cases]
    for name, key in [(None, "st_embedding"), ("query", "st_embedding_query"), ("document", "st_embedding_document")]:
        got = m.encode(texts, prompt_name=name)
        assert np.abs(got - np.array([c[key] for c in cases])).max() <= 1e-4, name
    same = m.encode(texts, prompt=m.prompts["query"])
    assert np.allclose(same, m.encode(texts, prompt_name="query"))


def test_errors_are_python_exceptions(model):
    with pytest.raises(FileNotFoundError):
        openembed.Model(os.path.join(ROOT, "models", "no-such-model"))
    with pytest.raises(ValueError):
        openembed.Model(MINILM, dtype="float13")
    with pytest.raises(ValueError):
        model.encode(["x"], batch_size=0)
    with pytest.raises(ValueError):
        model.encode(["x"], prompt_name="query")
    with pytest.raises(ValueError):
        model.encode([1, 2])
    with pytest.raises(ValueError):
        model.encode(["x"], truncate_dim=10_000)
    with pytest.raises(ValueError, match="task"):
        model.encode(["x"], task="retrieval.query")


def test_threads_share_one_model_and_the_gil_is_released(model):
    _, cases = reference()
    texts = [c["text"] for c in cases] * 4
    want = model.encode(texts)
    results = [None, None]

    def work(i):
        results[i] = model.encode(texts)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for r in results:
        assert np.array_equal(r, want)

    # A thread that only counts keeps counting while encode runs in another.
    counts = []
    done = threading.Event()

    def count():
        n = 0
        while not done.is_set():
            n += 1
            if n % 1000 == 0:
                counts.append(time.perf_counter())

    counter = threading.Thread(target=count)
    counter.start()
    time.sleep(0.05)
    start = time.perf_counter()
    model.encode(texts * 4)
    end = time.perf_counter()
    done.set()
    counter.join()
    during = [t for t in counts if start <= t <= end]
    assert len(during) >= 10, f"the counter advanced {len(during)} times during encode"


@pytest.mark.parametrize("fixture", ["classifier_bert", "classifier_multilabel"])
def test_classify_equals_the_transformers_pipeline(fixture):
    folder = os.path.join(SHARED, "fixtures", "tiny", fixture)
    with open(os.path.join(folder, "reference.json")) as f:
        reference = json.load(f)
    model = openembed.Model(folder)
    texts = [case["text"] for case in reference["cases"]]
    got = model.classify(texts)
    for labels, case in zip(got, reference["cases"]):
        want = case["pipeline_top_k_none"]
        assert [l["label"] for l in labels] == [w["label"] for w in want]
        assert max(abs(l["score"] - w["score"]) for l, w in zip(labels, want)) <= 1e-5
    top = model.classify(texts[0], top_k=1)
    assert top == [got[0][0]]
    raw = model.classify(texts[0], function_to_apply="none")
    logits = reference["cases"][0]["logits"]
    assert sorted(l["score"] for l in raw) == pytest.approx(sorted(logits), abs=1e-5)
    with pytest.raises(ValueError):
        model.classify(texts[0], function_to_apply="tanh")


def test_an_embedding_model_does_not_classify(model):
    with pytest.raises(ValueError, match="not a classifier"):
        model.classify("hello")


def test_precision_gives_the_servers_compressed_codes(model):
    texts = ["hello world", "a second text", "x"]
    floats = model.encode(texts)
    ubinary = model.encode(texts, precision="ubinary")
    assert ubinary.dtype == np.uint8 and ubinary.shape == (3, 48)
    assert np.array_equal(ubinary, np.packbits(floats > 0, axis=-1))
    binary = model.encode(texts, precision="binary")
    assert np.array_equal(binary.astype(np.int16), ubinary.astype(np.int16) - 128)
    int8 = model.encode(texts, precision="int8")
    assert int8.dtype == np.int8 and int8.shape == (3, 384)
    assert np.array_equal(model.encode(texts[1], precision="int8"), int8[1])
    uint8 = model.encode(texts, precision="uint8")
    assert np.array_equal(uint8.astype(np.int16), int8.astype(np.int16) + 128)
    cos = np.sum(int8 * floats, axis=1) / (np.linalg.norm(int8, axis=1) * np.linalg.norm(floats, axis=1))
    assert cos.min() > 0.99
    with pytest.raises(ValueError):
        model.encode(texts, precision="int4")


@pytest.mark.parametrize("fixture,field,is_query", [
    ("splade", "encode", False),
    ("sparse_inference_free", "encode_document", False),
    ("sparse_inference_free", "encode_query", True),
])
def test_encode_sparse_equals_the_sparse_encoder(fixture, field, is_query):
    folder = os.path.join(SHARED, "fixtures", "tiny", fixture)
    with open(os.path.join(folder, "reference.json")) as f:
        cases = json.load(f)["cases"]
    model = openembed.Model(folder)
    got = model.encode_sparse([c["text"] for c in cases], is_query=is_query)
    for weights, case in zip(got, cases):
        want = {e["index"]: e["value"] for e in case[field]}
        for index in set(weights) | set(want):
            assert abs(weights.get(index, 0.0) - want.get(index, 0.0)) <= 1e-5
        assert all(v > 0 for v in weights.values())
    assert model.encode_sparse(cases[0]["text"], is_query=is_query) == got[0]
    # max_active_dims keeps the largest weights, as SparseEncoder.encode(max_active_dims=...).
    top = model.encode_sparse([c["text"] for c in cases], is_query=is_query, max_active_dims=3)
    for weights, full in zip(top, got):
        best = sorted(full.items(), key=lambda e: (-e[1], e[0]))[:3]
        assert weights == dict(best)
    assert model.encode(cases[0]["text"], output="sparse", is_query=is_query, min_weight=1e9) == {}


def test_a_dense_model_has_no_sparse_output(model):
    with pytest.raises(ValueError, match="no sparse output"):
        model.encode_sparse("hello")


@pytest.mark.parametrize("is_query,side", [(True, "query"), (False, "document")])
def test_colbert_token_vectors_equal_pylate(is_query, side):
    folder = os.path.join(SHARED, "fixtures", "tiny", "colbert")
    with open(os.path.join(folder, "reference.json")) as f:
        cases = json.load(f)["cases"]
    model = openembed.Model(folder)
    assert model.outputs == ["multi_vector"]
    texts = [c["text"] for c in cases]
    got = model.encode(texts, output="multi", is_query=is_query)
    # PyLate-style call: the model's own output for its side.
    same = model.encode_query(texts) if is_query else model.encode_document(texts)
    for vectors, again, case in zip(got, same, cases):
        want = np.array(case[side]["vectors"], dtype=np.float32)
        assert vectors.shape == want.shape
        assert np.abs(vectors - want).max() <= 1e-5
        assert np.array_equal(vectors, again)


def test_bge_m3_dense_sparse_and_colbert_outputs_equal_flag_embedding():
    folder = os.path.join(SHARED, "fixtures", "tiny", "bge_m3")
    with open(os.path.join(folder, "reference.json")) as f:
        cases = [c for c in json.load(f)["cases"] if c["text"]]
    model = openembed.Model(folder)
    assert model.outputs == ["dense", "sparse", "multi_vector"]
    texts = [c["text"] for c in cases]
    dense = model.encode(texts)
    sparse = model.encode(texts, output="sparse")
    multi = model.encode(texts, output="multi")
    for i, case in enumerate(cases):
        assert np.abs(dense[i] - np.array(case["dense_vecs"], dtype=np.float32)).max() <= 1e-5
        want = {int(k): float(v) for k, v in case["lexical_weights"].items()}
        assert set(sparse[i]) == set(want)
        assert all(abs(sparse[i][k] - want[k]) <= 1e-5 for k in want)
        assert np.abs(multi[i] - np.array(case["colbert_vecs"], dtype=np.float32)).max() <= 1e-5
    with pytest.raises(ValueError, match="output must be"):
        model.encode(texts, output="colbert")
