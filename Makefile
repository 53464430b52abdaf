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
LINT_PATHS := $(wildcard src experiments/src experiments/tests tests examples benchmarks scripts)

.PHONY: demo test lint bench venv install-demo install-dev data clean

$(PY):
	@echo "setup: creating $(VENV) and installing $(TORCH_PIN) (CPU build; about 1 min)"
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --progress-bar off --upgrade pip
	$(PIP) install -q --progress-bar off "$(TORCH_PIN)"

venv: $(PY)

# Real data sets: Debian packages and the apt lists with English descriptions (docs/DATA.md).
# Checks every input, fetches what is missing, fails with the fix. Needs root (or sudo) to fetch.
data:
	@bash scripts/setup_data.sh

install-demo: $(PY) data
	@echo "setup: pip install -e . -e ./experiments (the library and the evidence suite; 1-3 min on a fresh machine)"
	$(PIP) install -q --progress-bar off -e . -e ./experiments "$(TORCH_PIN)"

install-dev: $(PY) data
	@echo "setup: pip install -e '.[dev,hf]' -e './experiments[ray]' (1-3 min on a fresh machine)"
	$(PIP) install -q --progress-bar off -e ".[dev,hf]" -e "./experiments[ray]" "$(TORCH_PIN)"

DEMO_OUT ?= runs/demo

# The main job: the quick evidence suite (every family, baseline vs R-Drop, 2 seeds each; about
# 1 minute on 2 cores), then the report table (also written to $(DEMO_OUT)/summary.md).
demo: install-demo
	$(VENV)/bin/rdrop run --all --quick --force --out $(DEMO_OUT)
	$(VENV)/bin/rdrop report --results $(DEMO_OUT)
	@echo "demo: quick runs check the pipeline, they are not evidence. Table and plots: $(DEMO_OUT)/; measured results: results/summary.md"

test: install-dev install-stacks
	$(PY) -m ruff check $(LINT_PATHS)
	DS_ACCELERATOR=cpu $(PY) -m pytest -q

# The code is hand-formatted (ruff line length 100); `ruff format --diff` shows what the
# formatter would change, for information only.
lint: install-dev
	$(PY) -m ruff check $(LINT_PATHS)

# Benchmarks (~35 min loss + ~12 min step on one CPU thread of a loaded 2-core machine); results go to benchmarks/results/.
bench: install-dev
	$(PY) benchmarks/bench_step.py
	$(PY) benchmarks/bench_loss.py

clean:
	rm -rf $(VENV) build dist src/*.egg-info experiments/src/*.egg-info .pytest_cache .ruff_cache

# The fine-tuning stacks (TRL, PEFT, Lightning, DeepSpeed; about 20 s and 65 MB from a local
# index) and their tests (a few minutes on 2 shared cores).
.PHONY: install-stacks test-stacks
install-stacks: install-dev
	@echo "setup: pip install -e '.[stacks]' (trl, peft, pytorch-lightning, deepspeed)"
	$(PIP) install -q --progress-bar off --no-build-isolation -e ".[stacks]" "$(TORCH_PIN)"

test-stacks: install-stacks
	DS_ACCELERATOR=cpu $(PY) -m pytest -q tests/integrations/test_trl.py \
		tests/integrations/test_lightning.py tests/integrations/test_deepspeed.py
	$(PY) -m pytest -q tests/test_examples.py -k "trl or peft or timm or lightning"
