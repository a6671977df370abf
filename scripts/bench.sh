#!/usr/bin/env bash
# The measurements of docs/BENCHMARKS.md, with the release build: caps (durable
# and ephemeral) against the Node socket.io peer and socketioxide's floors (the
# same peer's work on the library caps is built on, in memory and with each event
# appended to an SQLite log before it is answered), each
# driven by both load generators (caps bench's Rust client and
# bench/generator.mjs on the official socket.io-client), measured in turns in
# one run. Raw JSON lines go to docs/bench/, the charts to docs/bench/*.svg.
# Takes about 30 minutes on 2 cores.
set -euo pipefail
cd "$(dirname "$0")/.."
caps=target/release/caps
out=docs/bench
mkdir -p "$out"
both="--generators rust,node"

echo "== closed loop: 4 vendors x 2,500 orders (window 64), 4 drivers, 3 rounds"
$caps bench --targets caps,caps-ephemeral,rust-peer,rust-durable-peer,node $both --rounds 3 \
  --vendors 4 --drivers 4 --orders 2500 | tee "$out/closed-loop.txt"

echo "== fixed rates: 500 to 4,000 offered orders a second, 4 seconds each"
: > "$out/rates.jsonl"
for rate in 500 1000 2000 4000; do
  rounds=1; [ "$rate" = 2000 ] && rounds=3
  $caps bench --targets caps,caps-ephemeral,rust-peer,rust-durable-peer,node $both --rounds "$rounds" \
    --vendors 4 --drivers 4 --orders "$rate" --rate "$rate" | tee "$out/rate-$rate.txt"
  grep '^{' "$out/rate-$rate.txt" | sed "s/^{/{\"offered\":$rate,/" >> "$out/rates.jsonl"
done

echo "== 2,000 orders a second with no commit delay: the least latency a durable hub has here"
CAPS_COMMIT_DELAY=0s $caps bench --targets caps,rust-durable-peer,rust-peer,node $both --rounds 3 \
  --vendors 4 --drivers 4 --orders 2000 --rate 2000 | tee "$out/rate-2000-no-delay.txt"

echo "== the lab's shape (10 shops, 2 couriers, window 20) and the bench's, both phases, against a journal"
: > "$out/journal-peer-lab-and-bench.jsonl"
: > "$out/journal-peer.txt"
for scenario in lab bench; do
  for phase in 2 3; do
    if [ "$scenario" = lab ]; then per=1000; rate_per=400; else per=2500; rate_per=1000; fi
    for load in "--orders $per" "--orders $rate_per --rate 2000"; do
      # shellcheck disable=SC2086 # $load is two flags
      $caps bench --targets node,node-journal,caps,caps-tables,caps-ephemeral $both --rounds 3 \
        --scenario "$scenario" --phase "$phase" $load | tee -a "$out/journal-peer.txt" \
        | grep '^{' >> "$out/journal-peer-lab-and-bench.jsonl"
    done
  done
done

echo "== idle drivers: memory per connection, connection rate (10,000 x 3 rounds, then 19,000)"
$caps bench --targets caps,rust-peer,node $both --rounds 3 --conns 10000 \
  --vendors 1 --drivers 1 --orders 100 | tee "$out/connections.txt"
# The open-file limit is 20,000 per process here.
$caps bench --targets caps,node $both --rounds 1 --conns 19000 \
  --vendors 1 --drivers 1 --orders 100 | tee "$out/connections-19000.txt"

# A group of hubs on PostgreSQL against one hub on SQLite (a private cluster).
scripts/pg_cluster.sh $caps bench --targets caps,caps-pg1,caps-pg2,caps-pg3 $both --rounds 3 \
  --vendors 6 --drivers 6 --orders 1000 | tee "$out/group.txt"
scripts/pg_cluster.sh $caps bench --targets caps,caps-pg1,caps-pg3 $both --rounds 2 \
  --vendors 6 --drivers 6 --orders 300 --rate 500 | tee "$out/group-rate500.txt"

python3 scripts/latency_chart.py "$out/rates.jsonl" "$out/latency.svg" p99Ms
python3 scripts/latency_chart.py "$out/rates.jsonl" "$out/cpu.svg" cpuMsPer1000
echo "wrote $out/"
