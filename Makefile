# Everything runs inside one virtual environment at .venv, created on first use.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.requirements-installed
DATA_DIR ?= data
DEMO_DIR ?= train_log/demo

HOROVOD_STAMP := $(VENV)/.horovod-installed
# CPU build with Gloo; for GPUs add HOROVOD_GPU_OPERATIONS=NCCL (see README).
HOROVOD_ENV := HOROVOD_WITH_TENSORFLOW=1 HOROVOD_WITH_GLOO=1 HOROVOD_WITHOUT_MPI=1 \
	HOROVOD_WITHOUT_PYTORCH=1 HOROVOD_WITHOUT_MXNET=1

.PHONY: venv horovod demo test lint bench

venv: $(STAMP)

# Horovod compiles against the installed TensorFlow (about 7 minutes on 2 cores; needs g++ and cmake).
horovod: $(HOROVOD_STAMP)

$(HOROVOD_STAMP): $(STAMP)
	$(HOROVOD_ENV) $(PY) -m pip install --quiet --no-build-isolation horovod==0.28.1
	$(VENV)/bin/horovodrun --check-build
	touch $(HOROVOD_STAMP)

$(STAMP): requirements.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip wheel setuptools
	$(PY) -m pip install --quiet -r requirements.txt
	touch $(STAMP)

# The main job on the embedded default: the synthetic shapes dataset.
demo: venv
	$(PY) -m dataset.shapes $(DATA_DIR)/shapes

test: venv horovod
	$(PY) -m ruff check .
	$(PY) -m pytest tests -q

lint: venv
	$(PY) -m ruff check .

bench: venv
	$(PY) bench/bench_dataflow.py
