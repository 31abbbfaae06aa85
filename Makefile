# Everything runs inside one virtual environment at .venv, created on first use.
SHELL := /bin/bash
.SHELLFLAGS := -o pipefail -c
# The interpreter and its install stack (the pins) are chosen by tools/pick_python.sh: a
# python3.11/3.10 on the PATH with requirements.txt (TensorFlow 2.15.1), else python3 3.12/3.13
# with requirements-newest.txt (the newest TensorFlow). PYTHON=... chooses; an existing .venv
# keeps its stack.
PYTHON ?=
VENV ?= .venv
PY := $(VENV)/bin/python
PICKED := $(shell tools/pick_python.sh --venv '$(VENV)' $(if $(PYTHON),--python '$(PYTHON)') $(if $(NEWEST),--newest))
ifneq ($(firstword $(PICKED)),ok)
$(error $(wordlist 2,1000,$(PICKED)))
endif
BASE_PYTHON := $(word 2,$(PICKED))
STACK := $(word 3,$(PICKED))
REQUIREMENTS := $(word 4,$(PICKED))
$(info $(wordlist 5,1000,$(PICKED)))
STAMP := $(VENV)/.requirements-installed
DATA_DIR ?= data
DEMO_DIR ?= train_log/demo

HOROVOD_STAMP := $(VENV)/.horovod-installed

.PHONY: venv horovod demo test test-distributed check-stack lint bench bench-peers gpu-check

venv: $(STAMP)

# Horovod 0.28.1 compiles against the installed TensorFlow (about 7 minutes on 2 cores; needs g++
# and CMake); a CPU build with Gloo, for GPUs add HOROVOD_GPU_OPERATIONS=NCCL (see README).
horovod: $(HOROVOD_STAMP)

$(HOROVOD_STAMP): $(STAMP)
	tools/horovod/build.sh $(PY)
	$(VENV)/bin/horovodrun --check-build
	touch $(HOROVOD_STAMP)

$(STAMP): $(REQUIREMENTS)
	test -x $(PY) || $(BASE_PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip wheel setuptools
	$(PY) -m pip install --quiet -r $(REQUIREMENTS)
	touch $(STAMP)

# The main job on the embedded default, the synthetic shapes dataset: write it, train a small
# from-scratch Mask R-CNN on the CPU, evaluate COCO mAP, write the report (summary.md,
# curves.png, predictions.png in DEMO_DIR). The recipe is all command-line overrides;
# config.py's defaults stay those of tensorpack's example. Run again, it resumes (or finds the
# schedule done) and evaluates once more into new files; nothing is deleted or overwritten.
# The overrides, one per line, are in tools/demo_recipe.txt (the benchmarks read it too).
DEMO_CONFIG := $(subst $$(DATA_DIR),$(DATA_DIR),$(shell cat tools/demo_recipe.txt))
# DEMO_OVERRIDES: more overrides after the recipe's (the short demo of `check-stack`);
# DEMO_MIN_BBOX_AP: the report fails the run below this box mAP.
DEMO_OVERRIDES ?=
DEMO_MIN_BBOX_AP ?= 0
# the recipe without the keys DEMO_OVERRIDES sets (a key given twice is an error), then those
DEMO_RUN_CONFIG := $(filter-out $(foreach o,$(DEMO_OVERRIDES),$(firstword $(subst =, ,$(o)))=%),$(DEMO_CONFIG)) \
	$(DEMO_OVERRIDES)
DEMO_STARTED := $(shell date +%s)
# a new name for every evaluation, so that a second run keeps the first one's files
DEMO_EVAL := $(DEMO_DIR)/eval-$(shell date +%Y%m%d-%H%M%S).json

demo: venv
	$(PY) -m dataset.shapes $(DATA_DIR)/shapes
	$(PY) train.py --logdir $(DEMO_DIR) --config $(DEMO_RUN_CONFIG)
	$(PY) predict.py --load $(DEMO_DIR) --evaluate $(DEMO_EVAL) --config $(DEMO_RUN_CONFIG) 2>&1 \
		| tee $(DEMO_EVAL).log
	$(PY) -m tools.demo_report --logdir $(DEMO_DIR) --results $(DEMO_EVAL)-shapes_val \
		--gt-json $(DATA_DIR)/shapes/annotations/instances_shapes_val.json \
		--image-dir $(DATA_DIR)/shapes/shapes_val --started $(DEMO_STARTED) --min-bbox-ap $(DEMO_MIN_BBOX_AP) \
		--command "make demo DATA_DIR=$(DATA_DIR) DEMO_DIR=$(DEMO_DIR)$(if $(DEMO_OVERRIDES), DEMO_OVERRIDES='$(DEMO_OVERRIDES)')" \
		--config $(DEMO_RUN_CONFIG)

# oneDNN is set explicitly, never left to the host's CPU: the whole suite with it on (TensorFlow's
# default on CPUs with AVX512_VNNI/BF16/AMX), then the model and graph tests with it off. The
# end-to-end training on images without objects runs both settings itself.
# TEST_WORKERS pytest processes (pytest-xdist) share the test files, one file to a process so
# that a file's shared fixtures are built once; TEST_WORKERS=0 runs everything in one process.
TEST_WORKERS ?= 2
PYTEST := $(PY) -m pytest -q $(if $(filter-out 0,$(TEST_WORKERS)),-n $(TEST_WORKERS) --dist loadfile)
test: venv horovod
	$(PY) -m ruff check .
	TF_ENABLE_ONEDNN_OPTS=1 $(PYTEST) tests -m "not distributed"
	TF_ENABLE_ONEDNN_OPTS=0 $(PYTEST) tests/modeling

# Horovod on two hosts made of network namespaces, joined by a veth pair, with an sshd on the
# second (about 1.5 minutes; needs root; installs iproute2, util-linux and OpenSSH with apt-get;
# TWO_HOST_DEPS= leaves that out, and the test reports itself skipped where something is missing).
TWO_HOST_DEPS ?= tools/install_two_host_deps.sh
test-distributed: venv horovod
	$(TWO_HOST_DEPS)
	TF_ENABLE_ONEDNN_OPTS=1 $(PY) -m pytest -q -rs -m distributed tests/test_horovod_two_hosts.py

# What shows that a stack works, shorter than `test` (CI runs it on the newest corner with
# NEWEST=1 VENV=.venv-newest): the model tests with oneDNN on and off, the end-to-end
# train/predict/export tests and Horovod's, and a short demo whose report must show it learnt.
SHORT_DEMO_DIR ?= train_log/demo-short
check-stack: venv horovod
	$(PY) -m ruff check .
	TF_ENABLE_ONEDNN_OPTS=1 $(PYTEST) tests/modeling tests/test_end_to_end.py tests/test_horovod.py
	TF_ENABLE_ONEDNN_OPTS=0 $(PYTEST) tests/modeling
	$(MAKE) demo DEMO_DIR=$(SHORT_DEMO_DIR)-$(shell date +%Y%m%d-%H%M%S) DEMO_MIN_BBOX_AP=0.1 \
		DEMO_OVERRIDES='TRAIN.LR_SCHEDULE=[60,70,75]'

# On a GPU machine, before a long job (about 10 minutes; not part of `make test`). See README.
gpu-check: venv
	tools/gpu_check.sh

lint: venv
	$(PY) -m ruff check .

bench: venv
	$(PY) bench/bench_dataflow.py

# Side-by-side inference benchmark against torchvision's maskrcnn_resnet50_fpn. torch and
# torchvision go into their own venv (about 5.5 GB), never into .venv: no test needs them.
PEERS_VENV := .venv-peers
PEERS_STAMP := $(PEERS_VENV)/.peers-installed

$(PEERS_STAMP):
	test -x $(PEERS_VENV)/bin/python || $(BASE_PYTHON) -m venv $(PEERS_VENV)
	$(PEERS_VENV)/bin/python -m pip install --quiet torch==2.14.1 torchvision==0.29.1
	touch $(PEERS_STAMP)

bench-peers: venv $(PEERS_STAMP)
	$(PY) bench/bench_peers.py --peers-python $(PEERS_VENV)/bin/python $(BENCH_PEERS_ARGS)
