# The two commands of caps: `make demo` to watch it work, `make test` to run
# every test. Both install what they need first (scripts/setup.sh).

CARGO ?= cargo

.PHONY: demo demo-group test setup setup-demo build lint bench bench-abuse soak

## Build, then run a hub with two shops and two couriers in this terminal.
demo: setup-demo
	$(CARGO) run --quiet -- demo

## Three hubs on one PostgreSQL (a private cluster for the run), with shops
## and couriers spread over them.
demo-group: setup
	$(CARGO) build --quiet
	scripts/pg_cluster.sh target/debug/caps demo --hubs 3 --vendors 3 --drivers 3

## Build once, then run the Rust tests, the JavaScript tests, a small
## benchmark (it fails on any lost or duplicated order, never on a timing),
## and the scale suite (thousands of orders at the default limits). Tests
## that need PostgreSQL skip themselves where it is missing, but not here.
test: export CAPS_REQUIRE_POSTGRES = 1
test: setup
	$(CARGO) build --locked --all-targets
	$(CARGO) test --locked
	target/debug/caps bench --targets caps,node,rust-peer,echo --generators rust,node --vendors 2 --drivers 2 --orders 150
	npm test
	$(CARGO) test --locked --test scale_e2e --test group_e2e -- --ignored

## The benchmark of docs/BENCHMARKS.md (release build).
bench: setup
	$(CARGO) build --locked --release
	scripts/bench.sh

## The abuse benchmark of docs/BENCHMARKS.md: clients that flood and never
## read, beside an honest shop and its couriers (about three minutes).
bench-abuse: setup
	$(CARGO) build --locked --release
	node bench/abuse.mjs --caps target/release/caps

## The soak of docs/BENCHMARKS.md: 1,000,000 orders through one durable hub.
soak: setup
	$(CARGO) build --locked --release
	scripts/soak.sh
	python3 scripts/soak_chart.py docs/bench/soak.jsonl docs/bench/soak.svg

## Install system packages (if missing) and the npm packages from the lockfile.
setup:
	@scripts/setup.sh

## Only what `make demo` runs: the build's packages.
setup-demo:
	@scripts/setup.sh demo

## What CI checks besides the tests.
lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --locked --all-targets -- -D warnings
