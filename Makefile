# Everything runs inside one virtual environment at .venv, created on first use.
SHELL := /bin/bash
.SHELLFLAGS := -o pipefail -c
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

.PHONY: venv horovod demo test lint bench bench-peers

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

# The main job on the embedded default, the synthetic shapes dataset: write it, train a small
# from-scratch Mask R-CNN on the CPU, evaluate COCO mAP, draw predictions. The recipe is all
# command-line overrides; config.py's defaults stay those of tensorpack's example.
DEMO_CONFIG := MODE_FPN=True MODE_MASK=True DATA.BASEDIR=$(DATA_DIR)/shapes \
	DATA.TRAIN=shapes_train DATA.VAL=shapes_val DATA.NUM_WORKERS=0 \
	BACKBONE.RESNET_NUM_BLOCKS=[1,1,1,1] BACKBONE.NORM=GN BACKBONE.FREEZE_AT=0 FPN.NORM=GN \
	FPN.NUM_CHANNEL=64 FPN.FRCNN_FC_HEAD_DIM=256 MRCNN.HEAD_DIM=64 \
	RPN.ANCHOR_SIZES=[16,32,64,128,256] FRCNN.BATCH_PER_IM=128 \
	RPN.TRAIN_PER_LEVEL_NMS_TOPK=500 RPN.TEST_PER_LEVEL_NMS_TOPK=300 \
	PREPROC.TRAIN_SHORT_EDGE_SIZE=[256,256] PREPROC.TEST_SHORT_EDGE_SIZE=256 PREPROC.MAX_SIZE=256 \
	TRAIN.ACCUMULATE_STEPS=1 TRAIN.BASE_LR=0.15 TRAIN.WEIGHT_DECAY=5e-5 TRAIN.WARMUP=200 \
	TRAIN.WARMUP_INIT_LR=0.01 \
	TRAIN.STEPS_PER_EPOCH=100 TRAIN.LR_SCHEDULE=[160,200,225] TRAIN.EVAL_PERIOD=0 TRAIN.CHECKPOINT_PERIOD=3
DEMO_PICTURES := $(addprefix $(DATA_DIR)/shapes/shapes_val/,000002.jpg 000005.jpg 000009.jpg 000010.jpg)

demo: venv
	$(PY) -m dataset.shapes $(DATA_DIR)/shapes
	$(PY) train.py --logdir $(DEMO_DIR) --config $(DEMO_CONFIG)
	$(PY) predict.py --load $(DEMO_DIR) --evaluate $(DEMO_DIR)/eval.json --config $(DEMO_CONFIG) \
		| tee $(DEMO_DIR)/eval-summary.txt
	$(PY) predict.py --load $(DEMO_DIR) --predict $(DEMO_PICTURES) --output-dir $(DEMO_DIR)/pictures \
		--config $(DEMO_CONFIG)
	@echo
	@echo "Demo done. Model: $(DEMO_DIR); COCO metrics: $(DEMO_DIR)/eval-summary.txt;" \
		"pictures: $(DEMO_DIR)/pictures/"
	@grep "mAP(bbox)/IoU=0.5:0.95\|mAP(segm)/IoU=0.5:0.95" $(DEMO_DIR)/eval-summary.txt

test: venv horovod
	$(PY) -m ruff check .
	$(PY) -m pytest tests -q

lint: venv
	$(PY) -m ruff check .

bench: venv
	$(PY) bench/bench_dataflow.py

# Side-by-side inference benchmark against torchvision's maskrcnn_resnet50_fpn. torch and
# torchvision go into their own venv (about 5.5 GB), never into .venv: no test needs them.
PEERS_VENV := .venv-peers
PEERS_STAMP := $(PEERS_VENV)/.peers-installed

$(PEERS_STAMP):
	test -x $(PEERS_VENV)/bin/python || $(PYTHON) -m venv $(PEERS_VENV)
	$(PEERS_VENV)/bin/python -m pip install --quiet torch==2.14.1 torchvision==0.29.1
	touch $(PEERS_STAMP)

bench-peers: venv $(PEERS_STAMP)
	$(PY) bench/bench_peers.py --peers-python $(PEERS_VENV)/bin/python $(BENCH_PEERS_ARGS)
