"""Mixed precision against float32, side by side in one run: training step time with and
without TRAIN.AMP, and inference time with and without TEST.AMP.

    .venv/bin/python bench/bench_amp.py [--models demo r50-fpn-800] [--repeats 3] [--steps 2]

Models: `demo` is the Makefile's DEMO_CONFIG (read from the Makefile, 256 px); `r50-fpn-800` is
R50-FPN Mask R-CNN at config.py's defaults with 800 px images (long edge up to 1333). Both train
on one datapoint of the synthetic shapes set (written to a temporary directory, upscaled for
800 px), fed again at every step so the dataflow is not timed; inference times the graph on
that image with the score threshold at 0, so float32 and AMP both send RESULTS_PER_IM
detections through the mask head. Weights are random but the same in both precisions.
Repeats interleave the two precisions (fp32, AMP, fp32, AMP, ...) so that load from other
processes on a shared machine falls on both alike; the figures are medians over repeats.
"""
import argparse
import logging
import os
import re
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

from utils.tf_compat import amp_compute_dtype, amp_unsupported_reason, onednn_enabled, session_config, tf  # noqa: E402

from tensorpack.tfutils.tower import TowerContext  # noqa: E402

from config import config as cfg, finalize_configs, reset_config  # noqa: E402
from utils import tensor_names as names  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
R50_FPN_800 = ['MODE_FPN=True', 'MODE_MASK=True', 'PREPROC.TRAIN_SHORT_EDGE_SIZE=[800,800]',
               'PREPROC.TEST_SHORT_EDGE_SIZE=800', 'TRAIN.ACCUMULATE_STEPS=1']


def demo_config(data_dir):
    """The Makefile's DEMO_CONFIG overrides, with $(DATA_DIR) set to `data_dir`."""
    with open(os.path.join(ROOT, 'Makefile')) as f:
        text = f.read()
    match = re.search(r'^DEMO_CONFIG := ((?:.*\\\n)*.*)$', text, re.M)
    if match is None:
        raise ValueError('No DEMO_CONFIG in {}/Makefile.'.format(ROOT))
    overrides = match.group(1).replace('\\\n', ' ').replace('$(DATA_DIR)', data_dir).split()
    return [o for o in overrides if not o.startswith('DATA.BASEDIR=')]


def configure(overrides, basedir, is_training):
    from dataset import register_shapes
    reset_config()
    register_shapes(basedir, num_train=4, num_val=1, image_size=256, seed=0)
    cfg.update_args(['DATA.TRAIN=shapes_train', 'DATA.VAL=shapes_val', 'DATA.NUM_WORKERS=0',
                     'DATA.BASEDIR=' + basedir, 'TEST.RESULT_SCORE_THRESH=0.0'])
    cfg.update_args(list(overrides))   # a second call may override the first (one call may not repeat a key)
    finalize_configs(is_training=is_training)


def first_datapoint():
    """A training datapoint with at least one box, as data.py makes it for the current config."""
    from data import get_train_dataflow
    dataflow = get_train_dataflow()
    dataflow.reset_state()
    for datapoint in dataflow:
        if len(datapoint[names.GT_BOXES]):
            return datapoint
    raise ValueError('The shapes training split has no image with boxes.')


def build_model():
    from modeling.generalized_rcnn import build_model as build_rcnn
    return build_rcnn(cfg)


class Runner:
    """One graph and session for one precision; `time(n)` runs n steps, returns s/step."""

    def __init__(self, training, amp, datapoint):
        self.graph = tf.Graph()
        with self.graph.as_default():
            tf.set_random_seed(0)   # the same random weights in both precisions
            cfg.update_args(['TRAIN.AMP={}'.format(amp and training), 'TEST.AMP={}'.format(amp and not training)])
            model = build_model()
            inputs = {spec.name: tf.placeholder(spec.dtype, spec.shape, name=spec.name) for spec in model.inputs()}
            with TowerContext('', is_training=training):
                cost = model.build_graph(*[inputs[name] for name in model.input_names])
            if training:
                self.fetches = [cost, model.optimizer().minimize(cost)]
                self.feed = {inputs[name]: value for name, value in datapoint.items() if name in inputs}
            else:
                self.fetches = [self.graph.get_tensor_by_name(name + ':0')
                                for name in model.get_inference_tensor_names()[1]]
                self.feed = {inputs[names.IMAGE]: datapoint[names.IMAGE]}
            self.sess = tf.Session(config=session_config(amp=amp))
            self.sess.run(tf.global_variables_initializer())
        self.last = None
        self.first_run = self.time(1)   # graph optimization and warm-up

    def time(self, steps):
        start = time.perf_counter()
        for _ in range(steps):
            self.last = self.sess.run(self.fetches, self.feed)
        return (time.perf_counter() - start) / steps

    def describe_last(self, training):
        if training:
            return 'loss {:.4g}'.format(float(self.last[0]))
        return '{} detections'.format(len(self.last[0]))


def bench(name, overrides, basedir, training, repeats, steps, amp_ok):
    configure(overrides, basedir, is_training=training)
    datapoint = first_datapoint() if training else _inference_datapoint(overrides, basedir)
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


def _inference_datapoint(overrides, basedir):
    """The first training image, resized as at test time (the predictor's input)."""
    from common import CustomResize
    configure(overrides, basedir, is_training=True)
    image = first_datapoint()[names.IMAGE]
    configure(overrides, basedir, is_training=False)
    resized = CustomResize(cfg.PREPROC.TEST_SHORT_EDGE_SIZE, cfg.derived.max_size).augment(image.astype(np.uint8))
    return {names.IMAGE: resized.astype(np.float32)}


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
            overrides = demo_config(basedir) if name == 'demo' else R50_FPN_800
            if not args.skip_training:
                bench(name, overrides, basedir, True, args.repeats, args.steps, reason is None)
            if not args.skip_inference:
                bench(name, overrides, basedir, False, args.repeats, args.steps, reason is None)


if __name__ == '__main__':
    main()
