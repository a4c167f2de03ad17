# dbproxy: build, lint and test. CI runs `make lint` and `make test` (.ci/run).
#
#   make build             bin/dbproxy
#   make lint              gofmt, go vet, staticcheck
#   make deps              Debian packages for the integration tests (root installs)
#   make vault             Vault + database plugins, cached (scripts/build-vault.sh)
#   make test-unit         every package but test/integration
#   make test-integration  real PostgreSQL, MariaDB and Vault (slow)
#   make fuzz              every fuzz target for FUZZTIME (default 20s) each (scripts/fuzz.sh)
#   make test              all of the above but build and lint
#   make demo              deps + vault, then dbproxy + PostgreSQL + Vault with short TTLs: a client
#                          loop across live rotations, left running in ./demo (scripts/demo.sh)
#   make demo-stop         stop the demo (pid files in ./demo)
#   make bench             pgbench: direct vs PgBouncer vs the Go floor (bench/floor) vs dbproxy, strace,
#                          pprof, idle-client RSS, Go runtime settings; then bench-mysql -> bench/RESULTS.md
#                          (about 15 minutes at the default BENCH_TIME=10)
#   make bench-mysql       sysbench oltp_read_only: MariaDB direct vs the floor vs dbproxy session and
#                          transaction pools -> its section of bench/RESULTS.md (about 3 minutes)
#   make bench-fleet       fleet mode's benefit: N = 1, 3, 10 dbproxy processes with and without fleet
#                          mode, FLEET_BENCH_TIME (default 10m) each (about an hour): a markdown table
#                          on stdout (bench/fleet; docs/fleet.md#benchmark)

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := build

GO ?= go
# staticcheck 2026.2.2; go run pkg@version builds it outside our go.mod.
STATICCHECK ?= honnef.co/go/tools/cmd/staticcheck@v0.8.2
# The race detector needs cgo; use it when cgo works here.
RACE ?= $(shell [ "$$($(GO) env CGO_ENABLED 2>/dev/null)" = 1 ] && echo -race)
UNIT_FLAGS ?= -count=1 $(RACE)
INTEGRATION_FLAGS ?= -count=1 -timeout 40m -v
# The integration tests run a race-detector build of dbproxy too: a data
# race found there fails the test that saw it.
export DBPROXY_BUILD_FLAGS ?= $(RACE)
LOGDIR ?= .cache
FUZZTIME ?= 20s

.PHONY: build lint deps vault test-unit test-integration fuzz soak stall test clean

build:
	$(GO) build -o bin/dbproxy ./cmd/dbproxy

lint:
	@echo '>> gofmt -l'
	@files="$$(find . -path './.*' -prune -o -path ./bin -prune -o -name '*.go' -print)"; \
	out="$$(gofmt -l $$files)"; \
	if [ -n "$$out" ]; then echo "gofmt needed on:"; echo "$$out"; exit 1; fi
	@echo '>> go vet ./...'
	$(GO) vet ./...
	@echo '>> staticcheck ./...'
	$(GO) run $(STATICCHECK) ./...

deps:
	scripts/install-deps.sh

vault:
	scripts/build-vault.sh

test-unit:
	pkgs="$$($(GO) list ./... | grep -v /test/integration)"; \
	$(GO) test $(UNIT_FLAGS) $$pkgs

# Every fuzz target for FUZZTIME each (scripts/fuzz.sh). A failing input
# is written to the package's testdata/fuzz/NAME/ and the run fails: fix
# the bug and commit the file as a seed.
fuzz:
	FUZZTIME=$(FUZZTIME) GO=$(GO) scripts/fuzz.sh

# The full log stays in $(LOGDIR)/test-integration.log; the summary follows.
test-integration:
	@mkdir -p $(LOGDIR)
	@st=0; \
	$(GO) test $(INTEGRATION_FLAGS) ./test/integration/... 2>&1 | tee $(LOGDIR)/test-integration.log || st=$$?; \
	echo; echo '>> integration summary (full log: $(LOGDIR)/test-integration.log)'; \
	scripts/test-summary.sh $(LOGDIR)/test-integration.log; \
	exit $$st

# make soak: TestSoak alone for SOAK (default 10m): real clients of both
# protocols through transaction pools while pooled connections are
# killed, Vault pauses and rotations are asked for; make test runs it
# for 2m.
SOAK ?= 10m
soak:
	$(MAKE) -j2 --output-sync=target deps vault
	DBPROXY_SOAK=$(SOAK) $(GO) test -count=1 -timeout 60m -v -run 'TestSoak$$' ./test/integration/

# make stall: the stall tests alone with STALLS (default 20) stalls of
# 1-5 s each (SIGSTOP of the whole database) under pgbench and sysbench,
# both protocols and pool modes; make test runs 5 short ones.
STALLS ?= 20
stall:
	$(MAKE) -j2 --output-sync=target deps vault
	DBPROXY_STALLS=$(STALLS) $(GO) test -count=1 -timeout 60m -v -run 'StalledDatabaseLosesNoRequest$$' ./test/integration/

# deps (apt, mostly I/O) and the Vault build (CPU) overlap; the tests run
# one after the other (unit, fuzz, integration), and each runs even when
# an earlier one failed.
test:
	$(MAKE) -j2 --output-sync=target deps vault
	@st=0; \
	$(MAKE) test-unit || st=1; \
	$(MAKE) fuzz || st=1; \
	$(MAKE) test-integration || st=1; \
	exit $$st

clean:
	rm -rf bin

.PHONY: demo demo-stop bench bench-mysql bench-fleet

# Like test, demo first makes sure the packages and the Vault build exist,
# so it is one command on a fresh machine too.
demo:
	$(MAKE) -j2 --output-sync=target deps vault
	scripts/demo.sh start

demo-stop:
	scripts/demo.sh stop

# bench.sh rewrites bench/RESULTS.md whole; bench-mysql.sh then appends
# (or replaces) its MySQL/MariaDB section at the end.
bench:
	scripts/bench.sh
	scripts/bench-mysql.sh

bench-mysql:
	scripts/bench-mysql.sh

# A normal build of dbproxy (DBPROXY_BUILD_FLAGS cleared: the tests' -race
# would be measured too); Vault comes from scripts/build-vault.sh's cache.
# FLEET_BENCH_FLAGS passes more flags (-n 1,3, -keep).
FLEET_BENCH_TIME ?= 10m
FLEET_BENCH_FLAGS ?=
bench-fleet:
	DBPROXY_BUILD_FLAGS= $(GO) run ./bench/fleet -duration $(FLEET_BENCH_TIME) $(FLEET_BENCH_FLAGS)
