#!/usr/bin/env python3
"""Lists third-party dependencies whose features differ between what `make run` builds
(`-p openembed`), what the Python package builds (`-p openembed-python`) and what `make test`
builds (the workspace with dev-dependencies). Each one listed would compile twice; add its
features to crates/workspace-hack/Cargo.toml. Exits 1 when there is any.

Usage: scripts/check-feature-unification.py
"""
import collections
import subprocess
import sys

OURS = ("openembed", "openembed-engine", "openembed-pipeline", "openembed-server", "openembed-python", "workspace-hack")


def graph(args):
    out = subprocess.run(["cargo", "tree", "--prefix", "none", "-f", "{p}|{f}"] + args,
                         capture_output=True, text=True, check=True).stdout
    features = collections.defaultdict(set)
    for line in out.splitlines():
        if "|" not in line:
            continue
        package, feats = line.split("|", 1)
        name_version = " ".join(package.replace(" (*)", "").split()[:2])
        features[name_version] |= {f for f in feats.replace(" (*)", "").strip().split(",") if f}
    return features


def main():
    test = graph(["--workspace", "-e", "normal,dev"])
    differences = 0
    for package in ("openembed", "openembed-python"):
        for name, feats in sorted(graph(["-p", package, "-e", "normal"]).items()):
            if name.split()[0] in OURS or name not in test or test[name] == feats:
                continue
            differences += 1
            print(f"{package}: {name}: the tests add {sorted(test[name] - feats)}"
                  + (f", lack {sorted(feats - test[name])}" if feats - test[name] else ""))
    if differences == 0:
        print("every shared dependency has the same features in run, test and Python builds")
    return 1 if differences else 0


if __name__ == "__main__":
    sys.exit(main())
