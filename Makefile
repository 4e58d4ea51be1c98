# meshserve — the two commands are `make dev` and `make test`; both set everything up from zero.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
TRITON_VENV := .venv-triton
TRITON_STAMP := $(TRITON_VENV)/.installed
PROTO_STAMP := libs/common/src/meshserve/common/proto/.generated
EXAMPLES_STAMP := examples/models/.generated
AZURITE_VERSION := 3.35.0
# Envoy's xDS messages for the router's control plane, in a folder of their own: the wheel
# also carries copies of googleapis-common-protos and opentelemetry-proto modules that would
# overwrite the ones MLServer imports. Only envoy/, udpa/, validate/, xds/ and cel/ are kept;
# meshserve.router.envoy puts the folder on sys.path.
XDS_PROTOS_VERSION := 1.85.0
XDS_PROTOS := $(VENV)/xds-protos
XDS_STAMP := $(XDS_PROTOS)/.installed
AZURITE := .tools/azurite/node_modules/.bin/azurite-blob
# Debian's headless Chromium for the placement page's browser tests, unpacked without root
CHROMIUM := .tools/chromium/.installed
PROTOS := $(shell find proto -name '*.proto')
PYTEST_ARGS ?=

.PHONY: dev test venv azurite chromium proto examples lock lint bench bench-placement bench-router bench-sizes bench-sizes-pod bench-cold bench-storage bench-soak chaos images compose-check manifests clean distclean

dev: $(STAMP) $(XDS_STAMP) $(TRITON_STAMP) $(PROTO_STAMP) $(EXAMPLES_STAMP) ## start the whole local stack (Ctrl-C stops it)
	$(BIN)/meshserve dev

test: $(STAMP) $(XDS_STAMP) $(TRITON_STAMP) $(PROTO_STAMP) $(EXAMPLES_STAMP) $(AZURITE) $(CHROMIUM) ## run every test (unit + integration) on real processes
	$(BIN)/python -m pytest $(PYTEST_ARGS)

venv: $(STAMP)

# One environment for the monorepo, installed from the pinned lock file with uv (fast),
# then the project itself in editable mode (hatchling dev-mode-dirs put every src/ on sys.path).
$(STAMP): pyproject.toml requirements.lock overrides.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check 'uv>=0.4'
	$(BIN)/uv pip install --python $(BIN)/python --quiet --override overrides.txt -r requirements.lock
	$(BIN)/uv pip install --python $(BIN)/python --quiet --no-deps -e .
	@touch $@

$(XDS_STAMP): $(STAMP) Makefile
	rm -rf $(XDS_PROTOS)
	$(BIN)/uv pip install --quiet --no-deps --target $(XDS_PROTOS) "xds-protos==$(XDS_PROTOS_VERSION)"
	cd $(XDS_PROTOS) && rm -rf google opentelemetry opencensus test bin
	@touch $@

# Triton Inference Server (nvidia-pytriton's tritonserver binary, python backend) in its own
# environment: it pins numpy<2, which MLServer's environment cannot take.
$(TRITON_STAMP): requirements-triton.lock $(STAMP)
	@test -x $(TRITON_VENV)/bin/python || $(PYTHON) -m venv $(TRITON_VENV)
	grep -v '^torch==' requirements-triton.lock > $(TRITON_VENV)/requirements-no-torch.txt
	$(BIN)/uv pip install --python $(TRITON_VENV)/bin/python --quiet -r $(TRITON_VENV)/requirements-no-torch.txt
	@# torch through pip: it honours the machine's pip config, whose find-links hold the CPU wheel
	$(TRITON_VENV)/bin/python -m pip install --quiet --disable-pip-version-check --no-deps \
	  "torch==$$(sed -n 's/^torch==\([0-9.]*\).*/\1/p' requirements-triton.lock)"
	@touch $@

# Azurite, Microsoft's Azure Blob emulator, from npm (Node.js 18+), for the storage tests
chromium: $(CHROMIUM) ## Debian's headless Chromium for the placement page tests (apt-get download + dpkg -x, no root)

$(CHROMIUM): scripts/chromium.sh
	scripts/chromium.sh
	@touch $@

azurite: $(AZURITE)

$(AZURITE):
	npm install --silent --prefix .tools/azurite --no-audit --no-fund --save-exact azurite@$(AZURITE_VERSION)
	@test -x $@

proto: $(STAMP)
	$(BIN)/python scripts/gen_protos.py
	@touch $(PROTO_STAMP)

$(PROTO_STAMP): $(STAMP) $(PROTOS) scripts/gen_protos.py
	$(BIN)/python scripts/gen_protos.py
	@touch $@

examples: $(EXAMPLES_STAMP)

$(EXAMPLES_STAMP): $(STAMP) $(TRITON_STAMP) examples/make_models.py examples/make_framework_models.py
	$(BIN)/python examples/make_models.py --out examples/models
	TF_CPP_MIN_LOG_LEVEL=3 $(TRITON_VENV)/bin/python examples/make_framework_models.py --out examples/models
	@touch $@

lock: ## re-pin requirements.lock from pyproject.toml
	$(BIN)/uv pip compile pyproject.toml --override overrides.txt --extra local --extra dev --python-version 3.11 --quiet -o requirements.lock
	$(BIN)/uv pip compile requirements-triton.in --python-version 3.11 --find-links /opt/wheels --quiet -o requirements-triton.lock
	$(BIN)/uv pip compile pyproject.toml docker/requirements.in --override overrides.txt --constraint requirements.lock --python-version 3.11 --quiet -o docker/requirements.lock

lint: $(STAMP) $(PROTO_STAMP)
	$(BIN)/ruff check .
	$(BIN)/lint-imports
	$(BIN)/mypy  # strict on the files listed in pyproject [tool.mypy]

bench: bench-placement bench-router bench-sizes bench-cold bench-storage

bench-placement: $(STAMP) $(PROTO_STAMP)
	$(BIN)/python -m bench.placement $(BENCH_ARGS)

bench-router: $(STAMP) $(PROTO_STAMP) $(EXAMPLES_STAMP)
	$(BIN)/python -m bench.router

bench-sizes: $(STAMP) $(PROTO_STAMP) $(TRITON_STAMP) $(EXAMPLES_STAMP)
	$(BIN)/python -m bench.sizes $(BENCH_ARGS)

bench-sizes-pod: $(STAMP) $(PROTO_STAMP) $(EXAMPLES_STAMP) ## model sizes measured inside a Podman runtime pod vs a local pod (root + Podman; not in make test)
	TARGETS="puller mlserver" IMAGES_FROM=HEAD scripts/images.sh meshserve
	$(BIN)/python -m bench.sizes --in-pod $(BENCH_ARGS)

bench-cold: $(STAMP) $(PROTO_STAMP) $(TRITON_STAMP) $(EXAMPLES_STAMP)
	$(BIN)/python -m bench.cold $(BENCH_ARGS)

bench-storage: $(STAMP) $(PROTO_STAMP) ## cold load from S3 vs reload from the node's model cache vs cat
	$(BIN)/python -m bench.storage $(BENCH_ARGS)

bench-soak: $(STAMP) $(XDS_STAMP) $(PROTO_STAMP) $(EXAMPLES_STAMP) ## the stack under steady gRPC + REST load and model churn for 10 min: errors, RSS and fds per process, Redis keys and Postgres rows per hour (BENCH_ARGS=--quick: 2 min)
	$(BIN)/python -m bench.soak $(BENCH_ARGS)

chaos: $(STAMP) $(XDS_STAMP) $(PROTO_STAMP) $(EXAMPLES_STAMP) ## the fault suite under load: failures, p99, time to serve again, leaks (BENCH_ARGS=--quick: short)
	$(BIN)/python -m bench.chaos $(BENCH_ARGS)

images: ## build the images with Podman from a locally made Debian base (root; no Docker engine, no registry)
	IMAGES_FROM=$${IMAGES_FROM:-} scripts/images.sh all

compose-check: $(STAMP) $(EXAMPLES_STAMP) ## run docker-compose.yml (+ docker-compose.local.yml) with podman-compose and infer through it (root)
	$(BIN)/python scripts/compose_check.py

manifests: ## build the kustomize overlays offline
	kubectl kustomize deploy/kustomize/base >/dev/null

clean:
	rm -rf .dev .pytest_cache .hypothesis $(PROTO_STAMP) libs/common/src/meshserve/common/proto examples/models

distclean: clean
	rm -rf $(VENV) $(TRITON_VENV) .tools
