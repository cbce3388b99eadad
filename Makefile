# Secateurs: `make demo` and `make test` work from a fresh clone; both create .venv and install first.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
# This machine keeps these wheels on disk; pyproject.toml itself declares ranges.
TORCH_PIN ?= torch==2.14.1 torchvision==0.29.1
STAMP := $(VENV)/.installed

.PHONY: install demo test lint bench bench-quick clean

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q $(TORCH_PIN)
	$(PIP) install -q -e '.[server,test]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(PY) bench/demo.py

lint: $(STAMP)
	$(VENV)/bin/ruff check _secateurs pruning api db worker client tests bench
	bash scripts/lint-imports.sh

test: $(STAMP) lint
	bash scripts/services.sh
	bash scripts/chromium.sh
	$(VENV)/bin/pytest -q

# Benchmarks rewrite their own sections of BENCHMARKS.md (see bench/common.py).
bench-quick: $(STAMP)
	$(PY) bench/latency_vs_macs.py --rounds auto,16 --threads 1 --repeats 30 --seconds 2 --no-extra
	$(PY) bench/cifar_vs_torch_pruning.py --targets 0.7 --signals l2_norm,fpgm --no-extra

bench: $(STAMP)
	$(PY) bench/latency_vs_macs.py
	$(PY) bench/cifar_vs_torch_pruning.py
	$(PY) bench/cifar_recovery.py

clean:
	rm -rf $(VENV) .demo demo-output .pytest_cache
