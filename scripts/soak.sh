#!/usr/bin/env bash
# The soak of docs/BENCHMARKS.md ("Promises at any age"): one durable hub takes
# 1,000,000 orders. At 10k, 100k and 1M delivered it is stopped and started
# again on the same data dir, and we record the start-up time (until /healthz
# answers), its memory after start and after load, and the data dir's size.
# At 1M: an order from the very start is re-sent and read back, and dispatch
# latency at 2,000 orders/s is measured with and without 8 API pollers.
# Usage: scripts/soak.sh [caps-binary] [total-orders]   (release build; ~10 min)
set -euo pipefail
cd "$(dirname "$0")/.."
caps=${1:-target/release/caps}
total=${2:-1000000}
out=docs/bench
mkdir -p "$out"
work=$(mktemp -d)
data="$work/data"
port=$((20000 + RANDOM % 20000))
url="http://127.0.0.1:$port"
results="$out/soak.jsonl"
: > "$results"
trap 'kill "$pid" 2>/dev/null || true; rm -rf "$work"' EXIT

rss_kib() { awk '/^VmRSS/ {print $2}' "/proc/$1/status"; }

start_hub() {
  local began ready
  began=$(date +%s%N)
  "$caps" hub --port "$port" --data-dir "$data" --rate-limit 1000000 --api-rate-limit 1000000 \
    >/dev/null 2>>"$work/hub.err" &
  pid=$!
  until curl -sf "$url/healthz" >/dev/null; do sleep 0.005; done
  ready=$(date +%s%N)
  startup_ms=$(( (ready - began) / 1000000 ))
}

stop_hub() {
  kill -TERM "$pid"
  wait "$pid" || true
}

# Closed loop, 4 vendors and 4 drivers, `$1` orders in all.
load() {
  "$caps" bench --hub "$url" --hub-pid "$pid" --vendors 4 --drivers 4 \
    --orders $(( $1 / 4 )) --window 64 --patience 30s | grep '^{' | tail -1
}

start_hub
first='{"store":"c1-shop","orderId":"c1-order-1","customer":"Jamal Braun","address":"Schmittfurt, LA"}'
delivered=0
for size in 10000 100000 "$total"; do
  [ "$size" -le "$total" ] || continue
  batch=$(( size - delivered ))
  echo "== loading $batch orders (to $size)" >&2
  if [ "$delivered" -eq 0 ]; then
    # The first order of history, which the end of the soak sends again.
    ( sleep 1; curl -sf -X POST -H 'content-type: application/json' -d "$first" "$url/api/orders" >/dev/null ) &
  fi
  figures=$(load "$batch")
  delivered=$size
  loaded_rss=$(rss_kib "$pid")
  stop_hub
  disk=$(du -sb "$data" | cut -f1)
  start_hub
  idle_rss=$(rss_kib "$pid")
  echo "{\"delivered\":$size,\"startupMs\":$startup_ms,\"rssAfterStartKib\":$idle_rss,\"rssUnderLoadKib\":$loaded_rss,\"diskBytes\":$disk,\"bytesPerOrder\":$(( disk / size )),\"load\":$figures}" | tee -a "$results"
done

echo "== an order from the start of history, $delivered orders later" >&2
began=$(date +%s%N)
status=$(curl -s -o "$work/resend.json" -w '%{http_code}' -X POST -H 'content-type: application/json' -d "$first" "$url/api/orders")
resend_ms=$(( ($(date +%s%N) - began) / 1000000 ))
track=$(curl -s "$url/api/orders/c1-order-1")
echo "{\"resentFirstOrder\":$status,\"resendMs\":$resend_ms,\"firstOrder\":$track}" | tee -a "$results"

echo "== dispatch at 2,000 orders/s, without and with 8 API pollers (3 rounds each)" >&2
for round in 1 2 3; do
  for pollers in 0 8; do
    line=$("$caps" bench --hub "$url" --hub-pid "$pid" --vendors 4 --drivers 4 \
      --orders 2000 --rate 2000 --pollers "$pollers" | grep '^{' | tail -1)
    echo "{\"pollers\":$pollers,\"round\":$round,\"figures\":$line}" | tee -a "$results"
  done
done
stop_hub
echo "wrote $results" >&2
