# PF-2 Sync — the only entry points. `make test` is what CI runs (.ci/run).
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
CARGO ?= cargo
SIM_SOAK_CASES ?= 20000
FUZZ_SECONDS ?= 60
FUZZ_TARGETS := protocol_json protocol_msgpack apply_engine clocks
# Must match the `wasm-bindgen` pin in sdk-wasm/Cargo.toml.
WASM_BINDGEN_VERSION := 0.2.130

.PHONY: help run example example-build bench-live demo-core bench-browser bench-realtime bench-documents bench-bus bench-rules bench-cluster cluster test wasm-prereqs prereqs fmt-check clippy unit wasm-build wasm-test js-build js-test soak bench fuzz fuzz-prereqs docs openapi-check

help:
	@echo "make run    - the sync server on embedded SQLite with the demo app at http://127.0.0.1:3000"
	@echo "make test   - fmt, clippy -D warnings, every test incl. the Chromium suites (what CI runs)"
	@echo "make soak   - the convergence simulator at $(SIM_SOAK_CASES) cases per strategy (release)"
	@echo "make bench  - sdk-core and server benchmarks (docs/benchmarks.md)"
	@echo "make example - the React example (examples/react-todo) on Vite's dev server, :5173, against make run's server"
	@echo "make demo-core - the two-client offline tour of sdk-core (no server)"
	@echo "make bench-browser - IndexedDB enqueue through @pf2/sync vs raw IndexedDB, in Chromium"
	@echo "make bench-live - 20 live queries over 10,000 entities vs re-running them, in Chromium"
	@echo "make bench-realtime - fan-out vs a tokio-tungstenite floor and socket.io, two workloads (docs/benchmarks.md)"
	@echo "make bench-bus - event bus publish/consume vs a bare SQL queue, SQLite and PostgreSQL"
	@echo "make bench-documents - an editing trace: in-process Automerge vs PF-2 vs automerge-repo 2.5"
	@echo "make bench-cluster - room fan-out: one process vs two processes over Redis (PostgreSQL + Redis)"
	@echo "make cluster - three server processes on PostgreSQL + Redis (docs/runbooks/deploying-and-scaling.md)"
	@echo "make fuzz   - every fuzz target for $(FUZZ_SECONDS) s (nightly + cargo-fuzz, installed if missing)"
	@echo "make docs   - rustdoc for the workspace"

PF2_DATABASE_URL ?= sqlite://./data/pf2.db
PF2_LISTEN ?= 127.0.0.1:3000
export PF2_DATABASE_URL PF2_LISTEN

run: wasm-prereqs js-build
	$(CARGO) build --release -p sync-server
	node demo/stage.mjs data/www ./target/release/sync-server demo
	@echo
	@echo "PF-2 Sync on http://$(PF2_LISTEN)  (SQLite at $(PF2_DATABASE_URL))"
	@echo "Demo: http://$(PF2_LISTEN)/ (alice; ?user=bob in another browser or window)."
	@echo "API token for the curl walkthrough in README.md, in another shell:"
	@echo "  TOKEN=\$$(./target/release/sync-server token --tenant demo --user alice)"
	@echo "Ctrl-C stops the server."
	@echo
	PF2_STATIC_DIR=data/www PF2_STRATEGIES=todo=field-merge-manual PF2_SYNC_RULES=demo/rules.toml \
	  PF2_CORS_ALLOWED_ORIGINS=$(EXAMPLE_ORIGINS) ./target/release/sync-server serve

# The React example's origins (Vite's dev server and `vite preview`), allowed by `make run`.
EXAMPLE_ORIGINS ?= http://127.0.0.1:5173,http://localhost:5173

# The React example: its own origin, against `make run`'s server (start that first).
example: example-build
	cd examples/react-todo && npm run dev

example-build: js-build
	@test -d examples/react-todo/node_modules/vite || npm ci --prefix examples/react-todo --no-audit --no-fund
	cd examples/react-todo && npm run build

demo-core:
	$(CARGO) run -q -p sdk-core --example two_clients

# Installs what a fresh machine lacks, skipping what is present.
wasm-prereqs:
	@rustup target list --installed | grep -qx wasm32-unknown-unknown \
	  || rustup target add wasm32-unknown-unknown
	@command -v node >/dev/null || { echo "node (20+) and npm are required (the npm package, the browser and Socket.IO tests)"; exit 1; }
	@# The pinned wasm-bindgen CLI (TOOLCHAIN.md: without --locked; ~2.5 min the first time).
	@wasm-bindgen --version 2>/dev/null | grep -qx 'wasm-bindgen $(WASM_BINDGEN_VERSION)' \
	  || $(CARGO) install wasm-bindgen-cli --version $(WASM_BINDGEN_VERSION)

prereqs: wasm-prereqs
	@test -d sync-server/tests/socketio/node_modules/socket.io-client \
	  || npm ci --prefix sync-server/tests/socketio --no-audit --no-fund
	@test -d sync-server/tests/automerge/node_modules/@automerge/automerge \
	  || npm ci --prefix sync-server/tests/automerge --no-audit --no-fund
	@# The multi-process tests start their own Redis for the outage test: Debian's redis-server.
	@command -v redis-server >/dev/null \
	  || { apt-get update -qq && apt-get install -y -qq redis-server >/dev/null; }
	@# The browser suites: Debian's Chromium + ChromeDriver.
	@# schemathesis for the OpenAPI check, in a venv of its own under target/.
	@target/schemathesis/bin/st --version 2>/dev/null | grep -q '$(SCHEMATHESIS_VERSION)' \
	  || { { python3 -m venv target/schemathesis 2>/dev/null \
	         || { apt-get update -qq && apt-get install -y -qq python3-venv >/dev/null && python3 -m venv target/schemathesis; }; } \
	       && target/schemathesis/bin/pip install -q 'schemathesis==$(SCHEMATHESIS_VERSION)'; }
	@test -x /usr/bin/chromium -a -x /usr/bin/chromedriver \
	  || { apt-get update -qq && apt-get install -y -qq chromium chromium-driver >/dev/null; }

test: prereqs fmt-check clippy unit openapi-check wasm-build wasm-test js-test

# The OpenAPI document against a live server: schemathesis (PyPI, pinned) with every check
# (tests/openapi/). Needs the debug sync-server that `unit` builds.
SCHEMATHESIS_VERSION := 4.32.5
openapi-check:
	$(CARGO) build -p sync-server --locked
	tests/openapi/schemathesis.sh

fmt-check:
	$(CARGO) fmt --all -- --check

clippy:
	$(CARGO) clippy --workspace --all-targets --locked -- -D warnings

unit:
	$(CARGO) test --workspace --locked

wasm-build:
	$(CARGO) build -p sdk-core -p sdk-wasm -p sdk-wasm-automerge --target wasm32-unknown-unknown --locked
	$(CARGO) clippy -p sdk-wasm -p sdk-wasm-automerge --target wasm32-unknown-unknown --all-targets --locked -- -D warnings

# The npm package (@pf2/sync): built, packed with `npm pack`, and driven in headless Chromium
# by playwright-core against a real sync-server (js/test/).
js-build: wasm-prereqs
	@test -d js/node_modules/esbuild && test -d js/node_modules/react || npm ci --prefix js --no-audit --no-fund
	cd js && node build.mjs

js-test: js-build example-build
	@# The same build as `unit` (so a no-op after it): it includes target/debug/sync-server.
	$(CARGO) test --workspace --no-run --locked
	@# The type tests: tsc must accept the typed uses and keep every @ts-expect-error an error.
	cd js && ./node_modules/.bin/tsc -p test/types
	cd js && node --test test/*.test.mjs

# sdk-wasm's tests in headless Chromium (wasm-bindgen-test-runner + ChromeDriver).
wasm-test:
	cd sdk-wasm && CHROMEDRIVER=/usr/bin/chromedriver $(CARGO) test --target wasm32-unknown-unknown --locked

soak:
	PF2_SIM_CASES=$(SIM_SOAK_CASES) $(CARGO) test --release -p sdk-core --test convergence

bench:
	$(CARGO) bench -p sdk-core --bench core
	$(CARGO) bench -p sync-server --bench apply
	$(CARGO) bench -p sync-server --bench bus

bench-bus:
	$(CARGO) bench -p sync-server --bench bus

# Partial sync under sync rules: 1 project of 1,000 in a tenant of 100,000 entities, pulled from
# zero, beside a tenant holding only that project (SQLite and PostgreSQL).
bench-rules:
	$(CARGO) bench -p sync-server --bench rules

bench-cluster:
	$(CARGO) build --release -p sync-server -p pf2-e2e
	./target/release/cluster-fanout --clock-ticks "$$(getconf CLK_TCK)" $(CLUSTER_ARGS)

# Three processes on one PostgreSQL and Redis, ports 3001-3003 (the runbook's cluster, locally).
CLUSTER_DB ?= postgres://postgres@127.0.0.1:5432/test
CLUSTER_REDIS ?= redis://127.0.0.1:6379
cluster:
	$(CARGO) build --release -p sync-server
	tests/scripts/cluster.sh "$(CLUSTER_DB)" "$(CLUSTER_REDIS)"

bench-browser: js-build
	$(CARGO) test --workspace --no-run --locked
	cd js && node bench/idb.mjs

bench-live: js-build
	$(CARGO) build -p sync-server --locked
	cd js && node bench/live.mjs

# Two workloads (issue 15): rooms of 10 with one sender at 20 msg/s, then rooms of 50 with ten
# senders each at 10 msg/s (about 98,000 deliveries/s); the idle-memory part runs with the first.
bench-realtime:
	tests/bench/fanout.sh 1000 10
	IDLE_CONNECTIONS=0 FANOUT_ARGS="--room-size 50 --senders-per-room 10 --rate 10" SKIP_BUILD=1 tests/bench/fanout.sh 1000 10

# Event streams: publishing with 0 / 1,000 / 10,000 live subscribers, 1,000 clients resuming
# 1,000 missed events (also across a restart), on SQLite and PostgreSQL.
bench-streams:
	tests/bench/streams.sh

# The 100,000-edit trace: in-process Automerge, PF-2's /v1/ws, automerge-repo 2.5's Node server.
DOC_OPS ?= 100000
bench-documents:
	$(CARGO) build --release -p sync-server
	@test -d tests/bench/node_modules/@automerge/automerge-repo || npm ci --prefix tests/bench --no-audit --no-fund >/dev/null
	node tests/bench/documents.mjs ./target/release/sync-server $(DOC_OPS)

fuzz-prereqs:
	@rustup toolchain list | grep -q '^nightly' || rustup toolchain install nightly --profile minimal
	@command -v cargo-fuzz >/dev/null || $(CARGO) install cargo-fuzz --locked

fuzz: fuzz-prereqs
	cd fuzz && for t in $(FUZZ_TARGETS); do \
	  echo "== $$t"; \
	  cargo +nightly fuzz run -O $$t -- -max_total_time=$(FUZZ_SECONDS) -print_final_stats=1 2>&1 \
	    | grep -E 'Done|stat::number_of_executed_units|ERROR|panicked' ; \
	done

docs:
	$(CARGO) doc --workspace --no-deps
