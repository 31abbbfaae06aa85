#!/bin/sh
# Train and evaluate the demo recipe once per (precision, seed), one run at a time, at the
# lowest priority, to measure the run-to-run spread of TRAIN.AMP against float32.
#   sh bench/experiments/amp_seeds.sh DATA_DIR LOG_ROOT "amp:1 fp32:1 amp:2 fp32:2"
# Each run writes LOG_ROOT/<precision>-seed<seed>/ (train log, eval json, eval log) and appends a
# line "precision seed start end load" to LOG_ROOT/runs.txt. oneDNN is set on explicitly: the
# CPU's bfloat16 path needs it. Evaluation is float32 for both.
set -eu
DATA_DIR=$1
LOG_ROOT=$2
RUNS=$3
DEMO_CONFIG=$(.venv/bin/python -m tools.demo_recipe "$DATA_DIR")
export TF_ENABLE_ONEDNN_OPTS=1
mkdir -p "$LOG_ROOT"
for run in $RUNS; do
	prec=${run%%:*}
	seed=${run##*:}
	dir=$LOG_ROOT/$prec-seed$seed
	if [ -e "$dir" ]; then
		echo "$dir exists; choose another LOG_ROOT" >&2
		exit 1
	fi
	amp=False
	[ "$prec" = amp ] && amp=True
	start=$(date +%s)
	nice -n 19 .venv/bin/python train.py --logdir "$dir" \
		--config $DEMO_CONFIG DATA.SEED="$seed" TRAIN.AMP=$amp >"$dir.train.log" 2>&1
	nice -n 19 .venv/bin/python predict.py --load "$dir" --evaluate "$dir/eval.json" \
		--config $DEMO_CONFIG >"$dir/eval.log" 2>&1
	end=$(date +%s)
	echo "$prec $seed $start $end $(cut -d' ' -f1-3 /proc/loadavg)" >>"$LOG_ROOT/runs.txt"
done
