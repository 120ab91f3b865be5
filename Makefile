# One command each on a fresh machine: `make run`, `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
RESULTS ?= results

.PHONY: install run test test-slow lint bench bench-decode profile clean

$(STAMP): setup.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[test,hf,cluster]"
	touch $(STAMP)

install: $(STAMP)

# The main job: a quick T5-Table-2-style architecture comparison (about ten minutes on two
# CPU cores); prints the table and leaves report.md and the plots in $(RESULTS)/arch_table_quick.
run: install
	$(PY) -m experiments.sweep --sweep=configs/sweeps/arch_table.py:quick --workdir=$(RESULTS)/arch_table_quick
	@echo "report and plots: $(RESULTS)/arch_table_quick/report.md"

# Two workers: XLA compiles on one core, so two test processes keep both cores busy.
test: install
	$(PY) -m pytest -q -n 2 -m "not slow" tests

test-slow: install
	$(PY) -m pytest -q -n 2 -m slow tests

bench: install
	$(PY) -m experiments.bench

bench-decode: install
	$(PY) -m experiments.bench_decode

# Where the bench's decoder-only train step spends its time (jax.profiler trace, per op and category).
profile: install
	$(PY) -m experiments.profile_step

lint: install
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache *.egg-info
