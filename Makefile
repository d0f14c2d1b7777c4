# gitfleet: every entry point. `make` (or `make help`) lists them.
.DEFAULT_GOAL := help
SHELL := /bin/bash
CARGO ?= cargo

.PHONY: help services services-stop services-status test-deps build lint fmt  test test-unit test-integration test-api test-ops helm-test helm-docs services-cluster services-cluster-stop test-chaos-cluster image test-image bench-scale bench-s3s-fs test-chaos test-fixtures demo bench openapi clean

help: ## List every target
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z0-9_-]+:.*## / {printf "  \033[1m%-18s\033[0m %s\n", $$1, $$2}' $(MAKEFILE_LIST)

services: ## Install (if missing) and start PostgreSQL, RabbitMQ and S3 (moto) on loopback; create db, vhost, bucket
	@scripts/services.sh up

services-stop: ## Stop only the services that `make services` started
	@scripts/services.sh down

services-status: ## Say which services answer
	@scripts/services.sh status

test-deps: ## Install what the build and tests need besides the services (libssl-dev, git, lighttpd, openssl)
	@scripts/test-deps.sh

build: test-deps ## Build every crate (debug)
	$(CARGO) build --workspace --all-targets

fmt: ## Format the code
	$(CARGO) fmt --all

lint: test-deps ## cargo fmt --check and clippy with warnings as errors
	$(CARGO) fmt --all --check
	$(CARGO) clippy --workspace --all-targets --all-features -- -D warnings

test-unit: ## Unit tests and contract tests (no services needed)
	scripts/cargo-test.sh --workspace --exclude gitfleet-tests

test-integration: services test-deps ## Integration tests against the real services
	scripts/cargo-test.sh -p gitfleet-tests

test-chaos: services test-deps ## The full chaos test: 3 worker processes, 300 events over 30 repositories, kills and restarts
	GITFLEET_CHAOS_EVENTS=300 GITFLEET_CHAOS_REPOS=30 scripts/cargo-test.sh -p gitfleet-tests --test chaos -- --nocapture

services-cluster: services ## A three-node RabbitMQ cluster on loopback (ports 5681-5683); prints its AMQP URLs
	@scripts/rabbitmq-cluster.sh up

services-cluster-stop: ## Stop the three-node RabbitMQ cluster
	@scripts/rabbitmq-cluster.sh down

test-chaos-cluster: services test-deps ## The chaos test on the three-node cluster: stops one node mid-load, then another
	GITFLEET_CHAOS_CLUSTER=$$(scripts/rabbitmq-cluster.sh up) GITFLEET_CHAOS_EVENTS=$${GITFLEET_CHAOS_EVENTS:-120} \
		GITFLEET_CHAOS_REPOS=$${GITFLEET_CHAOS_REPOS:-12} scripts/cargo-test.sh -p gitfleet-tests --test chaos -- --nocapture

test-fixtures: services test-deps ## Tests that read ../shared/fixtures (Nautobot's conformance fixtures, real repositories)
	scripts/cargo-test.sh -p gitfleet-worker --features shared-fixtures --test check_shared
	scripts/cargo-test.sh -p gitfleet-tests --features shared-fixtures --test integration shared_fixtures::

test-incremental: services test-deps ## The incremental-equals-full property test with more cases (GITFLEET_INCREMENTAL_CASES, default 20 here)
	GITFLEET_INCREMENTAL_CASES=$${GITFLEET_INCREMENTAL_CASES:-20} GITFLEET_INCREMENTAL_STEPS=$${GITFLEET_INCREMENTAL_STEPS:-15} \
		scripts/cargo-test.sh -p gitfleet-tests --test integration -- --exact incremental::incremental_syncs_equal_full_loads

test-api: services test-deps ## Fuzz a running producer serve from its OpenAPI document (schemathesis, bounded)
	scripts/test-api.sh

test-ops: test-deps ## Check the alerting rules (promtool check and its unit tests) and the Grafana dashboard
	scripts/test-ops.sh

helm-test: ## Check the Helm chart offline: render, lint, validate (Kubernetes and CRD schemas), yamllint, its promises
	scripts/helm-test.sh

helm-docs: ## Regenerate the chart README's values table and copy the ops files the chart ships
	python3 scripts/helm-docs.py

test: services test-deps lint ## Everything CI runs: lint, unit and integration tests, the API fuzz, the ops files, the chart
	scripts/test-ops.sh
	scripts/helm-test.sh
	scripts/cargo-test.sh --workspace
	scripts/test-api.sh

image: ## Build the container image (buildah; base images made locally from Debian's packages); prints its name
	@scripts/image.sh

test-image: services ## Build the image and run its producer and worker read-only against the loopback services: one sync succeeds
	scripts/test-image.sh

bench-scale: services test-deps ## The scale-out benchmark alone: 1 to 8 workers behind a 100 ms round trip, then a scale-down
	$(CARGO) build --profile perf -p gitfleet-tests --bins
	$(CARGO) run --profile perf -p gitfleet-tests --bin bench_scale -- --write BENCHMARKS.md

bench-s3s-fs: services test-deps ## The large-repository S3 runs against s3s-fs (a Rust S3 server, installed with cargo) instead of moto
	$(CARGO) build --profile perf -p gitfleet-tests --bins
	scripts/bench-s3s-fs.sh

demo: ## Start services, two workers and the relay; sync the example repository, print its JobResult and the UI's address (DEMO_UI=1: keep it running)
	@scripts/demo.sh

bench: services test-deps ## Benchmarks on an optimized build (profile perf); results written to BENCHMARKS.md
	$(CARGO) build --profile perf -p gitfleet-tests -p gitfleet-producer --bins
	$(CARGO) run --profile perf -p gitfleet-tests --bin bench -- --write BENCHMARKS.md
	$(CARGO) run --profile perf -p gitfleet-tests --bin bench_large -- --write BENCHMARKS.md
	$(CARGO) run --profile perf -p gitfleet-tests --bin bench_fleet -- --write BENCHMARKS.md
	$(CARGO) run --profile perf -p gitfleet-tests --bin bench_git -- --write BENCHMARKS.md
	$(CARGO) run --profile perf -p gitfleet-tests --bin bench_api -- --write BENCHMARKS.md
	$(CARGO) run --profile perf -p gitfleet-tests --bin bench_poll -- --write BENCHMARKS.md
	$(CARGO) run --profile perf -p gitfleet-tests --bin bench_scale -- --write BENCHMARKS.md

openapi: ## Regenerate schemas/openapi.json from the API's types (a test fails when it is stale)
	$(CARGO) run -q -p gitfleet-producer -- openapi > schemas/openapi.json

clean: ## Remove build output and demo state
	$(CARGO) clean
	rm -rf .state
