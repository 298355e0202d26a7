"""One request pipeline behind every front end: the same inputs through the HTTP server, ``openembed
embed``, ``openembed batch`` and ``openembed.Model.encode`` give identical vectors, and the same
bad input gets the same category of error from each (400 / exit 1 / a 400 line / ValueError).

Uses the release binary that ``make test`` builds (``cargo test --release``; in ``$CARGO_TARGET_DIR``
when set) and starts its server on 127.0.0.1 with a free port.
"""

import base64
import json
import os
import subprocess
import threading
import urllib.error
import urllib.request

import numpy as np
import pytest

import openembed

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TARGET = os.environ.get("CARGO_TARGET_DIR") or os.path.join(ROOT, "target")
BINARY = os.path.join(TARGET, "release", "openembed")
MINILM = os.path.join(ROOT, "models", "all-MiniLM-L6-v2")
TINY = os.path.join(ROOT, "..", "shared", "fixtures", "tiny")
GEMMA = os.path.join(TINY, "gemma3_embedding")
JINA_V3 = os.path.join(TINY, "jina_v3")

LONG = "a long text about nothing in particular " * 60  # over MiniLM's 256 tokens
TEXTS = ["The quick brown fox.", "Ein kurzer deutscher Satz über Katzen.", "x", "Hello, world! " * 5]
IDS = [[101, 7592, 2088, 102], [101, 2023, 2003, 1037, 3231, 102]]  # MiniLM's own ids


@pytest.fixture(scope="module", autouse=True)
def binary():
    """The release binary `make test` built; built here when missing (a run of this file alone)."""
    if not os.access(BINARY, os.X_OK):
        subprocess.run(["cargo", "build", "--release", "-p", "openembed"], cwd=ROOT, check=True)
    assert os.access(BINARY, os.X_OK), f"{BINARY} is missing after cargo build"


class Server:
    """`openembed serve` on a free loopback port for the models given, stopped on exit."""

    def __init__(self, models):
        args = [BINARY, "serve", "--host", "127.0.0.1", "--port", "0", "--threads", "2", "--token-ids", "native"]
        for path, name in models:
            args += ["--model", f"{path}={name}"]
        env = {k: v for k, v in os.environ.items() if k != "OPENEMBED_API_KEYS"}
        self.proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
        found = threading.Event()
        self.url = None

        def read():
            for line in self.proc.stdout:
                if line.startswith("openembed listening on "):
                    self.url = line.split("openembed listening on ", 1)[1].strip()
                    found.set()

        threading.Thread(target=read, daemon=True).start()
        if not found.wait(120):
            self.proc.kill()
            raise AssertionError("the server did not start")

    def embed(self, body):
        request = urllib.request.Request(self.url + "/v1/embeddings", data=json.dumps(body).encode(),
                                         headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=120) as response:
                data = json.load(response)["data"]
                return "ok", np.stack([np.frombuffer(base64.b64decode(d["embedding"]), dtype="<f4") for d in data])
        except urllib.error.HTTPError as e:
            return category_of_status(e.code), json.load(e)["error"]["message"]

    def close(self):
        self.proc.terminate()
        self.proc.wait(30)


def category_of_status(status):
    return {400: "invalid", 404: "invalid", 429: "busy", 500: "internal", 503: "busy"}.get(status, f"status {status}")


def cli_embed(model, inputs, options, tmp_path):
    source = tmp_path / "inputs.jsonl"
    source.write_text("".join(json.dumps({"input": i}) + "\n" for i in inputs))
    out = tmp_path / "vectors.npy"
    if out.exists():
        out.unlink()
    args = [BINARY, "embed", "--threads", "2", "--token-ids", "native", "--model", model, "-i", str(source), "-o", str(out)]
    for flag, value in [("--prompt-name", options.get("prompt_name")), ("--task", options.get("task")),
                        ("--dimensions", options.get("dimensions"))]:
        if value is not None:
            args += [flag, str(value)]
    if options.get("truncate"):
        args.append("--truncate")
    run = subprocess.run(args, capture_output=True, text=True, timeout=300)
    if run.returncode != 0:
        assert run.returncode == 1, run.stderr
        return "invalid", run.stderr
    return "ok", np.load(out)


def cli_batch(model, inputs, options, tmp_path):
    body = {"model": "m", "input": inputs, "encoding_format": "base64"}
    body.update({k: v for k, v in options.items() if v is not None})
    source = tmp_path / "requests.jsonl"
    source.write_text(json.dumps({"custom_id": "r", "method": "POST", "url": "/v1/embeddings", "body": body}) + "\n")
    out = tmp_path / "results.jsonl"
    if out.exists():
        out.unlink()
    run = subprocess.run([BINARY, "batch", "--threads", "2", "--token-ids", "native", "--model", f"{model}=m",
                          "-i", str(source), "-o", str(out)], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    response = json.loads(out.read_text().splitlines()[0])["response"]
    if response["status_code"] != 200:
        return category_of_status(response["status_code"]), response["body"]["error"]["message"]
    data = response["body"]["data"]
    return "ok", np.stack([np.frombuffer(base64.b64decode(d["embedding"]), dtype="<f4") for d in data])


def python_encode(model, inputs, options):
    dims = options.get("dimensions")
    try:
        vectors = model.encode(inputs, prompt_name=options.get("prompt_name"), task=options.get("task"),
                               truncate_dim=dims, truncate=bool(options.get("truncate")),
                               # OpenAI's `dimensions` normalize cut vectors of a normalizing model;
                               # sentence-transformers' truncate_dim leaves that to this flag.
                               normalize_embeddings=True if dims is not None and model.normalize else None)
        return "ok", np.asarray(vectors)
    except ValueError as e:
        return "invalid", str(e)


CASES = [
    # (model, inputs, options, expected category)
    ("minilm", TEXTS, {}, "ok"),
    ("minilm", IDS, {}, "ok"),
    ("minilm", TEXTS, {"dimensions": 64}, "ok"),
    ("minilm", [LONG, "short"], {"truncate": True}, "ok"),
    ("minilm", [LONG, "short"], {"truncate": False}, "invalid"),
    ("minilm", [[101, 999_999, 102]], {}, "invalid"),  # a token id outside the vocabulary
    ("minilm", TEXTS, {"dimensions": 4096}, "invalid"),
    ("minilm", TEXTS, {"prompt_name": "query"}, "invalid"),  # MiniLM has no prompts
    ("gemma", TEXTS, {"prompt_name": "query"}, "ok"),
    ("gemma", TEXTS, {"prompt_name": "document", "dimensions": 8}, "ok"),
    ("jina", TEXTS, {"task": "retrieval.query"}, "ok"),
    ("jina", TEXTS, {"task": "no.such.task"}, "invalid"),
]

PATHS = {"minilm": MINILM, "gemma": GEMMA, "jina": JINA_V3}


@pytest.fixture(scope="module")
def servers():
    running = {name: Server([(path, "m")]) for name, path in PATHS.items()}
    yield running
    for server in running.values():
        server.close()


@pytest.fixture(scope="module")
def models():
    return {name: openembed.Model(path, threads=2, token_ids="native") for name, path in PATHS.items()}


@pytest.mark.parametrize("case", range(len(CASES)))
def test_every_front_end_gives_the_same_answer(case, servers, models, tmp_path):
    name, inputs, options, expected = CASES[case]
    path = PATHS[name]
    body = {"model": "m", "input": inputs, "encoding_format": "base64"}
    body.update({k: v for k, v in options.items() if v is not None})
    answers = {
        "server": servers[name].embed(body),
        "embed": cli_embed(path, inputs, options, tmp_path),
        "batch": cli_batch(path, inputs, options, tmp_path),
        "python": python_encode(models[name], inputs, options),
    }
    categories = {front: answer[0] for front, answer in answers.items()}
    assert set(categories.values()) == {expected}, {f: a[1] if a[0] != "ok" else "ok" for f, a in answers.items()}
    if expected != "ok":
        return
    reference = answers["server"][1]
    assert reference.shape[0] == len(inputs)
    for front, (_, vectors) in answers.items():
        assert vectors.shape == reference.shape, front
        assert np.array_equal(vectors, reference), f"{front}: max difference {np.abs(vectors - reference).max()}"
