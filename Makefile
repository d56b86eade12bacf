# Quick start: `make demo` then `make test`. Both set everything up on a fresh Debian 12 machine.
# The venv is built from Debian's python3 with system site-packages so that the `bcc` module of
# the python3-bpfcc package (BCC has no PyPI build) imports inside it.
SYS_PYTHON ?= $(shell test -x /usr/bin/python3 && echo /usr/bin/python3 || command -v python3)
VENV ?= .venv
PY := $(VENV)/bin/python
OUT ?= out

.PHONY: setup system-deps demo test fuzz scenarios bench faults clean lint

setup: system-deps $(VENV)/.installed

system-deps:
	@bash .ci/install-system-deps

$(VENV)/.installed: pyproject.toml setup.py
	$(SYS_PYTHON) -m venv --system-site-packages $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test,export]'
	@touch $@

demo: setup
	@mkdir -p $(OUT)
	$(PY) -m diag.demo --out $(OUT)

test: setup
	$(PY) -m pytest $(PYTEST_ARGS)

# 10,000 hostile inputs (mutated real traces and captures, archive bombs) through `diag replay`:
# the table of outcomes; docs/fuzz-results.txt keeps the last full run. `make test` runs a slice.
fuzz: setup
	$(PY) tests/fuzz/campaign.py --table docs/fuzz-results.txt $(FUZZ_ARGS)

scenarios: setup
	DIAG_SCENARIO_ROUNDS=$${DIAG_SCENARIO_ROUNDS:-3} $(PY) -m pytest tests/scenarios -q $(PYTEST_ARGS)

bench: setup
	$(PY) -m bench.run $(BENCH_ARGS)

# kill -9 of diag at random moments, Ctrl-C at start-up, the target exiting or exec'ing, a full or
# read-only --out, two diags on one target: the target must come out alive and untraced, every time
faults: setup
	$(PY) tests/faults/campaign.py --table docs/fault-results.txt $(FAULTS_ARGS)

clean:
	rm -rf $(VENV) $(OUT) .pytest_cache build *.egg-info
