"""GroupNorm's forward + backward time, the layer (modeling/norms.py) beside tensorpack's formula
that it replaced (utils/group_norm_reference.tensorpack_formula), per feature-map shape, in one run.

    .venv/bin/python bench/bench_norms.py [--repeats 7] [--steps 10]

Shapes are those of the demo model (Makefile DEMO_CONFIG, 256 px, 32 groups): the GN backbone's
stages, the FPN's levels, the box head's [128 rois, 7, 7, 64] and the mask head's [32, 14, 14, 64],
and the backbone shapes at 4 images. A step computes the output and the gradients wrt x, gamma and
beta of sum(output * weights). Repeats interleave the two (layer, formula, layer, ...) so that
load from other processes falls on both alike; figures are medians. oneDNN follows
TF_ENABLE_ONEDNN_OPTS; run once with =1 and once with =0.
"""
import argparse
import os
import sys
import time

import benchlib  # noqa: F401  (the project root on sys.path)

import logging  # noqa: E402

import numpy as np  # noqa: E402

from utils.tf_compat import onednn_status, tf  # noqa: E402

from modeling.norms import GroupNorm  # noqa: E402
from utils.group_norm_reference import tensorpack_formula  # noqa: E402

SHAPES = [(1, 128, 128, 64), (1, 64, 64, 256), (1, 32, 32, 512), (1, 8, 8, 2048), (1, 64, 64, 64),
          (128, 7, 7, 64), (32, 14, 14, 64),
          (4, 128, 128, 64), (4, 64, 64, 256), (4, 32, 32, 512), (4, 8, 8, 2048)]


class Step:
    """One graph and session computing GroupNorm (`use_layer`) or the formula, forward + backward."""

    def __init__(self, shape, use_layer):
        rng = np.random.RandomState(0)
        self.graph = tf.Graph()
        with self.graph.as_default():
            self.sess = tf.Session()
            x = tf.Variable(rng.randn(*shape).astype(np.float32) * 2 + 0.5)
            out = GroupNorm('gn', x)
            self.sess.run(tf.global_variables_initializer())
            variables = {v.op.name: v for v in tf.global_variables()}
            gamma, beta = variables['gn/gamma'], variables['gn/beta']
            # gamma and beta away from 1 and 0, so that their gradients are compared in general
            gamma.load(1 + 0.5 * rng.randn(shape[3]).astype(np.float32), self.sess)
            beta.load(0.5 * rng.randn(shape[3]).astype(np.float32), self.sess)
            if not use_layer:
                out = tensorpack_formula(x, gamma, beta, 32, 'NHWC')
            loss = tf.reduce_sum(out * rng.randn(*shape).astype(np.float32))
            grads = tf.gradients(loss, [x, gamma, beta])
            self.fetches = [out.op] + [g.op for g in grads]
            self.values = [out] + grads
        self.time(2)   # graph optimization and warm-up

    def time(self, steps):
        start = time.perf_counter()
        for _ in range(steps):
            self.sess.run(self.fetches)
        return (time.perf_counter() - start) / steps


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--repeats', type=int, default=7, help='interleaved rounds per shape')
    parser.add_argument('--steps', type=int, default=10, help='steps timed per round')
    args = parser.parse_args()
    logging.getLogger('tensorpack').setLevel(logging.WARNING)
    print('TensorFlow {}; {}; {} cores; load average {}'.format(
        tf.__version__, onednn_status(), os.cpu_count(), ' '.join('{:.2f}'.format(x) for x in os.getloadavg())))
    print('GroupNorm (32 groups) forward + backward, ms (median of {} x {} steps):'.format(args.repeats, args.steps))
    print('  {:>16s} {:>9s} {:>9s} {:>8s} {:>16s}'.format('N x h x w x C', 'formula', 'layer', 'speedup',
                                                         'max |difference|'))
    totals = [0., 0.]
    for shape in SHAPES:
        steps = [Step(shape, use_layer=False), Step(shape, use_layer=True)]
        times = [[], []]
        for _ in range(args.repeats):
            for step, record in zip(steps, times):
                record.append(step.time(args.steps))
        medians = [np.median(t) * 1e3 for t in times]
        totals = [total + median for total, median in zip(totals, medians)]
        formula_values, layer_values = (step.sess.run(step.values) for step in steps)
        # largest difference over the output and the three gradients, relative to each one's scale
        difference = max(np.abs(a - b).max() / np.abs(a).max() for a, b in zip(formula_values, layer_values))
        print('  {:>16s} {:9.2f} {:9.2f} {:7.2f}x {:16.1e}'.format(
            'x'.join(str(d) for d in shape), medians[0], medians[1], medians[0] / medians[1], difference))
        for step in steps:
            step.sess.close()
        sys.stdout.flush()
    print('  {:>16s} {:9.2f} {:9.2f} {:7.2f}x'.format('sum', totals[0], totals[1], totals[0] / totals[1]))
    print('load average at the end: {}'.format(' '.join('{:.2f}'.format(x) for x in os.getloadavg())))


if __name__ == '__main__':
    main()
