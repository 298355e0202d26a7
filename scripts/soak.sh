#!/usr/bin/env bash
# Soak test (not in CI): `openembed serve` at capacity for SECONDS (default 600) with
# ../shared/bench/loadgen.py (batch 32, concurrency 4, mixed corpus), sampling resident memory
# every 10 s. Prints start/end/max RSS and loadgen's summary; fails on any error other than 429.
#   scripts/soak.sh [SECONDS]      needs target/release/openembed and target/bench/venv (make bench)
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${1:-600}"
bin=target/release/openembed
[ -x "$bin" ] || cargo build --release -p openembed
log="$(mktemp)"
"$bin" serve --port 0 --auto-truncate --model models/all-MiniLM-L6-v2=all-MiniLM-L6-v2 >"$log" 2>/dev/null &
pid=$!
trap 'kill $pid 2>/dev/null || true; rm -f "$log"' EXIT
for _ in $(seq 100); do grep -q "listening on" "$log" && break; sleep 0.1; done
url="$(sed -n 's/.*listening on //p' "$log")"
rss() { awk '/VmRSS/ {printf "%.1f", $2/1024}' "/proc/$pid/status"; }
start_rss="$(rss)"
max_rss="$start_rss"
(
  while kill -0 $pid 2>/dev/null; do
    r="$(rss)"; echo "$(date +%T) rss_mb=$r"; sleep 10
  done
) >"$log.rss" &
sampler=$!
summary="$(target/bench/venv/bin/python ../shared/bench/loadgen.py --url "$url" --model all-MiniLM-L6-v2 \
  --corpus ../shared/bench/corpus/mixed.jsonl --batch 32 --concurrency 4 --duration "$seconds" --quiet | tail -n 1)"
end_rss="$(rss)"
kill $sampler 2>/dev/null || true
max_rss="$(awk -F= '{ if ($2 > m) m = $2 } END { print m }' "$log.rss")"
echo "RSS every 10 s (MB): $(sed 's/.*rss_mb=//' "$log.rss" | tr '\n' ' ')"
rm -f "$log.rss"
echo "soak ${seconds}s: RSS start ${start_rss} MB, end ${end_rss} MB, max ${max_rss} MB"
echo "$summary"
python3 - "$summary" <<'PY'
import json, sys
s = json.loads(sys.argv[1])
bad = {k: v for k, v in (s.get("errors") or {}).items() if k != "429"}
print(f"requests {s['requests']}, ok {s['requests_ok']}, tokens/s {s['prompt_tokens_per_s']}, p50 {s['latency_ms']['p50']} ms, errors {s.get('errors')}")
sys.exit(1 if bad else 0)
PY
