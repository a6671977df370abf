# The two commands of caps: `make demo` to watch it work, `make test` to run
# every test. Both install what they need first (scripts/setup.sh).

CARGO ?= cargo

.PHONY: demo test setup build lint

## Build, then run a hub with two shops and two couriers in this terminal.
demo: setup
	$(CARGO) run --quiet -- demo

## Build once, then run the Rust tests and the JavaScript tests against that build.
test: setup
	$(CARGO) build --locked --all-targets
	$(CARGO) test --locked
	npm test

## Install system packages (if missing) and the npm packages from the lockfile.
setup:
	@scripts/setup.sh

## What CI checks besides the tests.
lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --locked --all-targets -- -D warnings
