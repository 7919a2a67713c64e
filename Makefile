# latentwire — `make demo` runs both services with sample images; `make test` runs the test suite.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: setup demo test test-fast browser compiler postgres cluster bench eval clean

setup: $(STAMP)

# torch is pinned to the build CompressAI 1.2.8 imports cleanly with (see pyproject.toml).
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.14.1 torchvision==0.29.1
	$(BIN)/pip install -q -e '.[test]'
	touch $(STAMP)

# Install Debian packages $(2) when command $(1) is missing (as root, or through sudo).
apt_need = command -v $(1) >/dev/null 2>&1 || { \
  if [ "$$(id -u)" = 0 ]; then apt-get install -y -q $(2) >/dev/null 2>&1 || \
    { apt-get update -q >/dev/null && apt-get install -y -q $(2) >/dev/null; }; \
  else sudo apt-get install -y -q $(2); fi; }

# Headless Chromium for the browser test (Debian packages; Playwright's own download is not used).
browser:
	@$(call apt_need,chromium,chromium chromium-driver)

# A C++ compiler for torch.compile (`latentwire train --compile` and its test).
compiler:
	@$(call apt_need,g++,g++)

# PostgreSQL for cluster mode's tests and `make cluster` (Debian keeps initdb out of PATH).
postgres:
	@ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || command -v initdb >/dev/null 2>&1 || \
	  $(call apt_need,initdb,postgresql)

demo: setup
	$(BIN)/latentwire demo

# Cluster mode on this machine: NATS JetStream, PostgreSQL, SeaweedFS S3, 1 sender, 2 receiver workers.
cluster: setup postgres
	$(BIN)/latentwire cluster

test: setup browser compiler postgres
	$(BIN)/python -m pytest -q

# The library and service tiers without the tests marked slow (the shipped model, training, fuzzing,
# waits on real time): about a minute and a half on a 2-core CPU.
test-fast: setup
	$(BIN)/python -m pytest -q -m "not slow" tests/unit tests/service

bench: setup
	$(BIN)/latentwire bench codec
	$(BIN)/latentwire bench e2e

eval: setup
	$(BIN)/latentwire eval ../shared/datasets/kodak --out results/kodak --reference-dir ../shared/reference/compressai_kodak

clean:
	rm -rf data/demo results .pytest_cache
