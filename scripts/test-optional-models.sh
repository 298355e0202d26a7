#!/usr/bin/env bash
# Runs the reference tests of the optional models that are present (they are #[ignore]d so that,
# without their model, cargo test lists them as ignored with the reason instead of passing).
# Run by `make test` after the main suite.
set -euo pipefail
cd "$(dirname "$0")/.."
ran=0
if [ -f models/all-mpnet-base-v2/model.safetensors ]; then
  cargo test --release --workspace -- --ignored mpnet
  ran=1
fi
if [ -f models/embeddinggemma-300m/model.safetensors ]; then
  cargo test --release --workspace -- --ignored embeddinggemma
  ran=1
fi
if [ "$ran" = 0 ]; then
  echo "optional model tests: none of models/all-mpnet-base-v2, models/embeddinggemma-300m is present (make fetch-mpnet / make fetch-embeddinggemma); their tests stay ignored"
fi
