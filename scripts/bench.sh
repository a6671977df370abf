#!/usr/bin/env bash
# The measurements of docs/BENCHMARKS.md, with the release build: caps (durable
# and ephemeral), the Node socket.io peer and the echo ceiling, measured in
# turns in one run. Raw JSON lines go to docs/bench/, the chart to
# docs/bench/latency.svg. Takes a few minutes on 2 cores.
set -euo pipefail
cd "$(dirname "$0")/.."
caps=target/release/caps
out=docs/bench
mkdir -p "$out"

echo "== closed loop: 4 vendors x 2,500 orders, 4 drivers, 3 rounds"
$caps bench --targets caps,caps-ephemeral,node,echo --rounds 3 \
  --vendors 4 --drivers 4 --orders 2500 | tee "$out/closed-loop.txt"

echo "== open loop: offered rates, p99 latency"
: > "$out/rates.jsonl"
for rate in 500 1000 2000 4000; do
  orders=$rate   # per vendor: four vendors, so four seconds of load
  $caps bench --targets caps,node --rounds 2 --vendors 4 --drivers 4 \
    --orders "$orders" --rate "$rate" | tee "$out/rate-$rate.txt"
  grep '^{' "$out/rate-$rate.txt" | sed "s/^{/{\"offered\":$rate,/" >> "$out/rates.jsonl"
done

echo "== 19,000 idle drivers (the open-file limit is 20,000 per process): memory per connection, connection rate"
$caps bench --targets caps,node --rounds 3 --conns 19000 \
  --vendors 1 --drivers 1 --orders 100 | tee "$out/connections.txt"

python3 scripts/latency_chart.py "$out/rates.jsonl" "$out/latency.svg"
echo "wrote $out/"
