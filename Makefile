# `make demo` and `make test` work on a fresh machine: they create .venv and install pinned dependencies.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo demo-zh test bench clean

$(STAMP): requirements.txt requirements-dev.txt requirements-nodeps.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet torch==2.13.0
	CMAKE_POLICY_VERSION_MINIMUM=3.5 $(PY) -m pip install --quiet -r requirements.txt -r requirements-dev.txt
	$(PY) -m pip install --quiet --no-deps -r requirements-nodeps.txt
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/lmlab demo

# The same demo on People's Daily 1998 (Chinese characters), in Chinese (README.zh.md).
demo-zh: $(STAMP)
	$(VENV)/bin/lmlab demo --zh --out runs/demo-zh

# pytest exits 5 when it collects no test; make then fails, so "no tests" never passes silently.
test: $(STAMP)
	$(PY) -m pytest -q tests

bench: $(STAMP)
	$(PY) benchmarks/train_throughput.py

clean:
	rm -rf $(VENV) runs build src/*.egg-info
