"""Mixed precision against float32, side by side in one run: training step time with and
without TRAIN.AMP, and inference time with and without TEST.AMP.

    .venv/bin/python bench/bench_amp.py [--models demo r50-fpn-800] [--repeats 3] [--steps 2]

Models (bench/benchlib.py): `demo` is make demo's recipe (256 px), `r50-fpn-800` is R50-FPN
Mask R-CNN at config.py's defaults with 800 px images. Both train on one datapoint of the
synthetic shapes set (written to a temporary directory), fed again at every step so the
dataflow is not timed; inference times the graph on that image with the score threshold at 0,
so float32 and AMP both send RESULTS_PER_IM detections through the mask head. Weights are
random but the same in both precisions. Repeats interleave the two precisions (fp32, AMP, fp32,
AMP, ...) so that load from other processes on a shared machine falls on both alike; the figures
are medians over repeats.
"""
import argparse
import logging
import os
import sys
import tempfile

from benchlib import Runner, configure, first_datapoint, inference_datapoint, model_overrides  # first: sys.path

import numpy as np

from utils.tf_compat import amp_compute_dtype, amp_unsupported_reason, onednn_enabled, tf

from utils import tensor_names as names


def bench(name, overrides, basedir, training, repeats, steps, amp_ok):
    configure(overrides, basedir, is_training=training)
    datapoint = first_datapoint() if training else inference_datapoint(overrides, basedir)
    shape = datapoint[names.IMAGE].shape
    runners = {'float32': Runner(training, False, datapoint)}
    if amp_ok:
        runners['AMP'] = Runner(training, True, datapoint)
    times = {key: [] for key in runners}
    for _ in range(repeats):
        for key, runner in runners.items():
            times[key].append(runner.time(steps))
    what = 'training step (TRAIN.AMP)' if training else 'inference (TEST.AMP)'
    print('{} {}, image {}x{}:'.format(name, what, shape[0], shape[1]))
    for key, runner in runners.items():
        print('  {:<8s} {:8.3f} s  (median of {} x {} runs; min {:.3f}; first run {:.1f} s; {})'.format(
            key, np.median(times[key]), repeats, steps, min(times[key]), runner.first_run,
            runner.describe_last(training)))
        runner.sess.close()
    if amp_ok:
        print('  AMP / float32 time ratio: {:.2f}'.format(np.median(times['AMP']) / np.median(times['float32'])))
    sys.stdout.flush()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--models', nargs='+', choices=['demo', 'r50-fpn-800'], default=['demo', 'r50-fpn-800'])
    parser.add_argument('--repeats', type=int, default=3, help='interleaved rounds per precision')
    parser.add_argument('--steps', type=int, default=2, help='runs timed per round')
    parser.add_argument('--skip-training', action='store_true')
    parser.add_argument('--skip-inference', action='store_true')
    args = parser.parse_args()
    logging.getLogger('tensorpack').setLevel(logging.WARNING)   # not the config dump of every build

    reason = amp_unsupported_reason()
    print('TensorFlow {}; oneDNN {} (TF_ENABLE_ONEDNN_OPTS={}); {} cores; AMP computes in {}{}'.format(
        tf.__version__, 'on' if onednn_enabled() else 'off', os.environ.get('TF_ENABLE_ONEDNN_OPTS', 'unset'),
        os.cpu_count(), amp_compute_dtype(), '' if reason is None else ' -- but cannot run here: ' + reason))
    with tempfile.TemporaryDirectory(prefix='bench_amp_') as basedir:
        for name in args.models:
            overrides = model_overrides(name, basedir)
            if not args.skip_training:
                bench(name, overrides, basedir, True, args.repeats, args.steps, reason is None)
            if not args.skip_inference:
                bench(name, overrides, basedir, False, args.repeats, args.steps, reason is None)


if __name__ == '__main__':
    main()
