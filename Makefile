# Two entry points, both usable on a fresh machine:
#   make demo   set up .venv and run the main job
#   make test   set up .venv (dev extras) and run the test suite
# Here torch comes from the CPU wheel on disk (torch==2.13.0); the package metadata keeps torch>=2.2.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
TORCH_PIN ?= torch==2.13.0
LINT_PATHS := $(wildcard src tests examples benchmarks)
DEBIAN_DATA := dataset-fashion-mnist sword-text-sparv sword-text-web libsword-utils

.PHONY: demo test lint bench venv install-demo install-dev data clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q "$(TORCH_PIN)"

venv: $(PY)

# Real data sets that ship as Debian packages (docs/DATA.md). Needs root (or sudo); skipped if present.
data:
	@if [ -d /usr/share/datasets/fashion-mnist ] && command -v mod2imp >/dev/null \
	    && [ -d /usr/share/sword/modules/texts/ztext/spaRV1909eb ]; then \
	  echo "data: Debian data packages present"; \
	else \
	  SUDO=""; [ "$$(id -u)" = 0 ] || SUDO="sudo"; \
	  $$SUDO apt-get update -qq -o Acquire::Languages=en && \
	  DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $(DEBIAN_DATA) >/dev/null && \
	  echo "data: installed $(DEBIAN_DATA)"; \
	fi

install-demo: $(PY) data
	$(PIP) install -q -e ".[experiments]" "$(TORCH_PIN)"

install-dev: $(PY) data
	$(PIP) install -q -e ".[dev,hf,experiments]" "$(TORCH_PIN)"

DEMO_OUT ?= runs/demo

# The main job: the quick evidence suite (every family, baseline vs R-Drop, 2 seeds each; about
# 1 minute on 2 cores), then the report table (also written to $(DEMO_OUT)/summary.md).
demo: install-demo
	$(VENV)/bin/rdrop run --all --quick --force --out $(DEMO_OUT)
	$(VENV)/bin/rdrop report --results $(DEMO_OUT)
	@echo "demo: quick runs check the pipeline, they are not evidence. Table and plots: $(DEMO_OUT)/; measured results: results/summary.md"

test: install-dev
	$(PY) -m ruff check $(LINT_PATHS)
	$(PY) -m pytest -q

# The code is hand-formatted (ruff line length 100); `ruff format --diff` shows what the
# formatter would change, for information only.
lint: install-dev
	$(PY) -m ruff check $(LINT_PATHS)

# Benchmarks (long: ~5 + ~40 minutes on one CPU thread); results go to benchmarks/results/.
bench: install-dev
	$(PY) benchmarks/bench_step.py
	$(PY) benchmarks/bench_loss.py

clean:
	rm -rf $(VENV) build dist src/*.egg-info .pytest_cache .ruff_cache
