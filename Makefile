# One command each on a fresh machine: `make run`, `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
RESULTS ?= results

.PHONY: install run test test-slow lint bench bench-decode clean

$(STAMP): setup.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[test,hf]"
	touch $(STAMP)

install: $(STAMP)

# The main job: nanoGPT's shakespeare_char CPU setup, trained and evaluated.
run: install
	$(PY) -m gpt2_jax.main --config=configs/shakespeare_char.py:cpu --workdir=$(RESULTS)/shakespeare_char_cpu

test: install
	$(PY) -m pytest -q -m "not slow" tests

test-slow: install
	$(PY) -m pytest -q -m slow tests

bench: install
	$(PY) -m experiments.bench

lint: install
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache *.egg-info
