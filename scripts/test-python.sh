#!/usr/bin/env bash
# Builds the Python package (python/, maturin + PyO3, an abi3 wheel) into target/python/venv with
# `pip install ./python` and runs its pytest suite (Ray Data included: examples/ray_embed.py on a
# local Ray instance). Run by `make test`.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=target/python/venv
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
fi
"$venv/bin/pip" install --quiet --disable-pip-version-check numpy pytest tqdm "ray[data]" pyarrow
# Same target folder as the workspace, so the engine compiled for `make run` is reused.
CARGO_TARGET_DIR="$PWD/target" "$venv/bin/pip" install --quiet --disable-pip-version-check --force-reinstall --no-deps ./python
"$venv/bin/python" -m pytest -q python/tests "$@"
