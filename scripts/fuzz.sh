#!/usr/bin/env bash
# Fuzzes the request decoder and the tokenizer with cargo-fuzz (libFuzzer) on stable Rust.
#   scripts/fuzz.sh [SECONDS_PER_TARGET] [TARGET...]     default: 600 s, both targets
# Seeds come from fuzz/corpus/<target> (kept in git); new inputs go to target/fuzz-corpus/<target>,
# crashes to fuzz/artifacts/<target>. Needs `cargo install cargo-fuzz` and the default model.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${1:-600}"
shift || true
targets=("$@")
[ ${#targets[@]} -eq 0 ] && targets=(decode_request tokenize)
make -s model >/dev/null
# cargo-fuzz needs nightly flags (-Z sanitizer, sancov); RUSTC_BOOTSTRAP lets stable accept them.
export RUSTC_BOOTSTRAP=1
for t in "${targets[@]}"; do
  mkdir -p "target/fuzz-corpus/$t"
  # Coverage instrumentation makes the tokenizer ~100x slower; shorter inputs keep it exploring.
  max_len=4096
  [ "$t" = tokenize ] && max_len=512
  cargo fuzz run --fuzz-dir fuzz --sanitizer none "$t" "target/fuzz-corpus/$t" "fuzz/corpus/$t" -- \
    -max_total_time="$seconds" -max_len="$max_len" -print_final_stats=1 2>&1 | tail -n 8
done
