# Everything runs inside one virtual environment at .venv, created on first use.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.requirements-installed
DATA_DIR ?= data
DEMO_DIR ?= train_log/demo

.PHONY: venv demo test lint bench clean-demo

venv: $(STAMP)

$(STAMP): requirements.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip wheel setuptools
	$(PY) -m pip install --quiet -r requirements.txt
	touch $(STAMP)

# The main job on the embedded default: the synthetic shapes dataset.
demo: venv
	$(PY) -m dataset.shapes $(DATA_DIR)/shapes

test: venv
	$(PY) -m ruff check .
	$(PY) -m pytest tests -q

lint: venv
	$(PY) -m ruff check .

bench: venv
	$(PY) bench/bench_dataflow.py
