# Secateurs: `make demo` and `make test` work from a fresh clone; both create .venv and install first.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
# This machine keeps these wheels on disk; pyproject.toml itself declares ranges.
TORCH_PIN ?= torch==2.14.1 torchvision==0.29.1
STAMP := $(VENV)/.installed
NNI_VENV ?= .nni-venv
NNI_STAMP := $(NNI_VENV)/.installed

.PHONY: install demo test lint bench bench-continue bench-quick nni-venv clean

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
	bash scripts/debian-tools.sh chromium
	$(VENV)/bin/pytest -q --durations=25

# Benchmarks rewrite their own sections of BENCHMARKS.md (see bench/common.py); bench/run_all.py lists what
# each target runs. bench-quick (a small form of each, under 10 minutes) writes sections and plots of its own.
# Timed figures: run them alone, e.g. `flock /tmp/secateurs-timing.lock nice -n -10 make bench-quick`.
bench-quick: $(STAMP)
	bash scripts/services.sh
	bash scripts/debian-tools.sh wrk hey
	$(PY) bench/run_all.py quick

bench: $(STAMP) $(NNI_STAMP)
	bash scripts/services.sh
	bash scripts/debian-tools.sh wrk hey
	$(PY) bench/run_all.py full --nni-python $(NNI_VENV)/bin/python

# A full run takes hours: after an interruption this takes it up at its first unfinished script.
bench-continue: $(STAMP) $(NNI_STAMP)
	bash scripts/services.sh
	bash scripts/debian-tools.sh wrk hey
	$(PY) bench/run_all.py full --continue --nni-python $(NNI_VENV)/bin/python

# NNI for the comparison (bench/nni_prune.py), in a virtual environment of its own that also sees the
# project's torch and secateurs (NNI's dependencies stay out of .venv).
$(NNI_STAMP): $(STAMP)
	test -x $(NNI_VENV)/bin/python || $(PYTHON) -m venv $(NNI_VENV)
	$(NNI_VENV)/bin/pip install -q 'nni==3.0'
	$(PY) -c "import sysconfig; print('import site; site.addsitedir(%r)' % sysconfig.get_paths()['purelib'])" \
		> "$$($(NNI_VENV)/bin/python -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")/secateurs-project.pth"
	touch $(NNI_STAMP)

nni-venv: $(NNI_STAMP)

clean:
	rm -rf $(VENV) $(NNI_VENV) .demo demo-output .pytest_cache
