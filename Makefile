# overlay-switch-webhook — see README.md.
SHELL := /bin/bash
.DEFAULT_GOAL := build

CARGO        ?= cargo
# Builds use the versions in Cargo.lock, never newer ones.
LOCKED       ?= --locked
# make fuzz: how long, in seconds.
FUZZ_SECONDS ?= 300
BIN          := target/debug/overlay-switch-webhook
CERTS_DIR    ?= certs/out
LISTEN_PORT  ?= 9443
METRICS_PORT ?= 8080
# e2e tests each start their own kube-apiserver + etcd; two at a time fit 2 cores.
TEST_THREADS ?= 2

.PHONY: build test unit e2e fuzz certs run lint fmt controlplane helm webhook-config demo demo-gardener chart dev-up dev-down bench clean

build:
	$(CARGO) build $(LOCKED)

## Control plane for tests: kube-apiserver, etcd, kubectl built from the Go
## module proxy (or $KUBEBUILDER_ASSETS), cached outside the checkout.
controlplane:
	@tests/controlplane/build.sh >/dev/null

## helm, only to render the chart in its test (tests/chart.rs), cached like the control plane.
helm:
	@tests/helm/build.sh >/dev/null

## Everything: unit, property, integration and e2e tests.
test: controlplane helm
	$(CARGO) test $(LOCKED) --lib --bins --tests -- --test-threads=$(TEST_THREADS)

## Unit and property tests only (no control plane).
unit:
	$(CARGO) test $(LOCKED) --lib --bins

## Tests against the real kube-apiserver only.
e2e: controlplane
	$(CARGO) test $(LOCKED) --test 'e2e_*' -- --test-threads=$(TEST_THREADS)

## The review path fuzzed for $(FUZZ_SECONDS) s (a seed from the clock; a
## short fixed-seed run is part of `make test`).
fuzz:
	FUZZ_SECONDS=$(FUZZ_SECONDS) $(CARGO) test $(LOCKED) --release --test fuzz_review -- --nocapture

certs: build
	$(BIN) certs --out-dir $(CERTS_DIR)

webhook-config: build
	@$(BIN) webhook-config --mode service --ca-file $(CERTS_DIR)/ca.crt

run: build
	@test -f $(CERTS_DIR)/tls.crt || $(BIN) certs --out-dir $(CERTS_DIR)
	$(BIN) --log-format text serve --tls-cert-file $(CERTS_DIR)/tls.crt --tls-key-file $(CERTS_DIR)/tls.key \
	  --listen-addr 127.0.0.1:$(LISTEN_PORT) --metrics-addr 127.0.0.1:$(METRICS_PORT)

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy $(LOCKED) --all-targets -- -D warnings
	@command -v cargo-deny >/dev/null || { echo "cargo-deny is needed: cargo install --locked cargo-deny" >&2; exit 1; }
	$(CARGO) deny check licenses bans sources

fmt:
	$(CARGO) fmt --all

## The main job on a local control plane, start to end.
demo: build controlplane
	@scripts/demo.sh demo

## Gardener mode: a seed and a shoot, the server guarding the shoot.
demo-gardener: build controlplane
	@scripts/demo.sh gardener

## The Gardener extension's Helm chart, packaged; prints it base64-encoded
## (helm.rawChart of manifests/gardener/controllerdeployment.yaml).
chart:
	@scripts/package-chart.sh

## A local control plane + webhook left running; prints `export KUBECONFIG=...`.
dev-up: build controlplane
	@scripts/demo.sh up

dev-down:
	@scripts/demo.sh down

## Every bench, then BENCHMARKS.md from their sections (BENCH_QUICK=1: a
## fast look, written to target/BENCHMARKS-quick.md instead).
BENCH_REPORT = $(if $(filter-out 0,$(BENCH_QUICK)),target/BENCHMARKS-quick.md,BENCHMARKS.md)
bench: controlplane
	rm -rf target/bench-report
	$(CARGO) bench $(LOCKED)
	scripts/bench-report.sh > $(BENCH_REPORT)
	@echo "written: $(BENCH_REPORT)"

clean:
	$(CARGO) clean
	rm -rf $(CERTS_DIR)
