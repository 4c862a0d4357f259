# Two entry points for a fresh machine: `make demo` and `make test`.
# The venv is (re)installed only when the requirements change (stamp keyed on their hash).
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
REQS := requirements.txt requirements-dev.txt requirements-suite.txt pyproject.toml
STAMP := $(VENV)/.installed-$(shell cat $(REQS) | sha256sum | cut -c1-16)
FASHION_MNIST := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz
DEMO_DATA := artifacts/fashion-mnist
DEMO_RUN := runs/demo_fashion_mnist
# Every spawned rank uses one thread: 2 ranks on a 2-core machine.
LAUNCH := OMP_NUM_THREADS=1 ACCELERATE_USE_CPU=1 $(VENV)/bin/accelerate launch \
	--config_file ds_configs/accelerate_cpu_2proc.yaml

.PHONY: setup demo demo-openclip test test-fast lint fashion-mnist gpu-wheels

setup: $(STAMP) fashion-mnist

# pip says what it fetches and installs (no -q): a fresh install takes minutes and should not look hung.
PIP := $(PY) -m pip install --progress-bar off
$(STAMP): $(REQS)
	@test -x $(PY) || (echo "setup: creating $(VENV) with $(PYTHON)" && $(PYTHON) -m venv $(VENV))
	@echo "setup: installing the pinned stack (requirements.txt, requirements-dev.txt: torch, DeepSpeed, ...) into $(VENV); a few minutes on a fresh machine"
	$(PIP) --upgrade pip
	$(PIP) -r requirements.txt -r requirements-dev.txt
	@echo "setup: installing clip_benchmark without its dependencies (requirements-suite.txt)"
	$(PIP) --no-deps -r requirements-suite.txt
	@echo "setup: installing this repository (editable) into $(VENV)"
	$(PIP) --no-deps --no-build-isolation -e .
	@echo "setup: done ($(VENV) is reinstalled only when requirements*.txt or pyproject.toml change)"
	@rm -f $(VENV)/.installed-*
	@touch $@

fashion-mnist:
	@test -f $(FASHION_MNIST) || (echo "setup: installing Fashion-MNIST (apt-get install dataset-fashion-mnist)" \
	  && apt-get install -y -q dataset-fashion-mnist \
	  || (apt-get update -q && apt-get install -y -q dataset-fashion-mnist))

$(DEMO_DATA)/train/manifest.json: | setup
	$(PY) tools/make_shards.py fashion-mnist --out $(DEMO_DATA)

# The CPU demo: 2 processes, tiny CLIP, FastCLIP-v3 + FLIP 50% masking + unmasked tuning, zero-shot at the end.
demo: setup $(DEMO_DATA)/train/manifest.json
	rm -rf $(DEMO_RUN)
	$(LAUNCH) recipes/fastclip_demo.py --config recipes/configs/demo_fashion_mnist.yaml

# The demo's OpenCLIP twin for scale: the same recipe with the mini-batch OpenCLIP loss (tau at the model lr).
demo-openclip: setup $(DEMO_DATA)/train/manifest.json
	rm -rf $(DEMO_RUN)_openclip
	$(LAUNCH) recipes/fastclip_demo.py --config recipes/configs/demo_fashion_mnist.yaml loss.name=openclip \
	  loss.version=null loss.lr_tau=null run.name=demo_fashion_mnist_openclip run.output_dir=$(DEMO_RUN)_openclip

# Every test: ruff (lint and format), then the whole suite (multi-rank gloo tests included).
test: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(PY) -m pytest -q tests

# The tier without spawned ranks or subprocesses (tests marked slow are left out): under 90 s.
test-fast: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(PY) -m pytest -q -m "not slow" tests

# Wheels the GPU machine (python 3.12, no internet) lacks, into the ignored .whl/ that the GPU check carries
# (benchmarks/gpu_check.sh installs them; README "The GPU check").
gpu-wheels: setup
	PYTHON=$(PY) bash benchmarks/gpu_wheels.sh

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
