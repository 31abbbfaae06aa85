"""Several images per tower: training images/second at TRAIN.BATCH_SIZE_PER_GPU = 1, 2, 4, side by
side in one run, with the ratio to N = 1.

    .venv/bin/python bench/bench_batch.py [--models demo r50-fpn-800] [--sizes 1 2 4] [--repeats 3]
                                          [--steps 2] [--profile 2]

Models (bench/benchlib.py): `demo` is make demo's recipe (256 px), `r50-fpn-800` is R50-FPN Mask
R-CNN at config.py's defaults at 800 px. Each N trains on one batch of the first N
images of the real training dataflow (the synthetic shapes set, padded by dataflow/batching.py),
fed again at every step, so the dataflow is not timed. Repeats interleave the sizes (1, 2, 4, 1,
2, 4, ...) so that load from other processes falls on all alike; figures are medians.

Beside images/s the table prints the CPU seconds of this process per image (all threads; TF's
thread pools spin a little while they wait, which counts) and the cores that kept busy (CPU time
/ wall time): once both are ~2 here, a batch is faster only where it costs less CPU per image.

`--profile` also traces a few steps per N (RunOptions FULL_TRACE) and prints the summed run time
of all ops per image, the part of it that is per step whatever N (the momentum update and the
weight decay), how many ops ran at once on average (op time / wall time; an op may use both
cores), and the ratio a batch could reach if it shared only that per-step part.
"""
import argparse
import collections
import logging
import os
import sys
import tempfile
import time

from benchlib import Runner, configure, load_average, model_overrides  # first: sys.path

import numpy as np

from utils.tf_compat import onednn_status, tf

from config import combine_overrides
from utils import tensor_names as names


def first_batch():
    """The first N datapoints of the training dataflow of the current config, padded into one batch
    by dataflow/batching.py when N > 1 (the small shapes split is read again if it has fewer)."""
    from data import get_train_dataflow
    from dataflow.batching import AspectRatioGroupedBatches, pad_batch
    dataflow = get_train_dataflow()
    if not isinstance(dataflow, AspectRatioGroupedBatches):
        dataflow.reset_state()
        return next(iter(dataflow))
    map_step, params = dataflow.ds, dataflow.params
    map_step.reset_state()
    datapoints = []
    while len(datapoints) < params.batch_size:
        datapoints.extend(map_step)
    return pad_batch(datapoints[:params.batch_size], params.multiple)


def is_per_step_op(node_name):
    """Whether an op belongs to the work done once per step whatever the batch: the momentum update
    and the weight-decay term with its gradient."""
    return node_name.startswith('Momentum') or 'wd_cost' in node_name


def trace(runner, steps):
    """(wall s/step, op ms/step, per-step op ms/step, ops/step) over `steps` traced steps."""
    options = tf.RunOptions(trace_level=tf.RunOptions.FULL_TRACE)
    totals = collections.Counter()
    for _ in range(steps):
        metadata = tf.RunMetadata()
        start = time.perf_counter()
        runner.sess.run(runner.fetches, runner.feed, options=options, run_metadata=metadata)
        totals['wall'] += time.perf_counter() - start
        for device in metadata.step_stats.dev_stats:
            for node in device.node_stats:
                totals['op'] += node.all_end_rel_micros / 1e3
                totals['ops'] += 1
                if is_per_step_op(node.node_name):
                    totals['per_step'] += node.all_end_rel_micros / 1e3
    return tuple(totals[key] / steps for key in ('wall', 'op', 'per_step', 'ops'))


def print_profile(sizes, runners, steps):
    print('  where the CPU time goes ({} traced steps per N; op time summed over threads):'.format(steps))
    print('  {:>3s} {:>12s} {:>14s} {:>11s} {:>8s} {:>18s}'.format(
        'N', 'op ms/image', 'per-step ms', 'ops at once', 'ops', 'bound on ratio'))
    base = None
    for size in sizes:
        wall, op_ms, per_step_ms, ops = trace(runners[size], steps)
        if base is None:
            base = (op_ms, per_step_ms)
        # If the batch shared only the per-step work and every image cost what it costs alone:
        base_op, base_fixed = base
        bound = base_op / (base_op - base_fixed + base_fixed / size)
        print('  {:>3d} {:12.1f} {:14.1f} {:11.2f} {:8.0f} {:18.2f}'.format(
            size, op_ms / size, per_step_ms, op_ms / 1e3 / wall, ops, bound))


def bench(name, overrides, basedir, sizes, repeats, steps, profile_steps=0):
    runners, shapes = {}, {}
    for size in sizes:
        batching = ['TRAIN.BATCH_SIZE_PER_GPU={}'.format(size), 'TRAIN.ACCUMULATE_STEPS=1']
        configure(combine_overrides(overrides, batching), basedir, is_training=True)
        batch = first_batch()
        shapes[size] = batch[names.IMAGE].shape
        runners[size] = Runner(True, False, batch)
    times = {size: [] for size in sizes}
    cpu_times = {size: [] for size in sizes}
    for _ in range(repeats):
        for size in sizes:
            cpu_start = time.process_time()
            times[size].append(runners[size].time(steps))
            cpu_times[size].append((time.process_time() - cpu_start) / steps)
    base = None
    print('{}: training, {} ({} x {} timed steps per N)'.format(name, onednn_status(), repeats, steps))
    print('  {:>3s} {:>16s} {:>10s} {:>10s} {:>12s} {:>12s} {:>11s}'.format(
        'N', 'input', 's/step', 'images/s', 'ratio to N=1', 'CPU s/image', 'cores busy'))
    for size in sizes:
        step = float(np.median(times[size]))
        rate = size / step
        base = rate if base is None else base
        shape = shapes[size]
        cpu = float(np.median(cpu_times[size]))
        print('  {:>3d} {:>16s} {:10.3f} {:10.2f} {:12.2f} {:12.3f} {:11.2f}   ({})'.format(
            size, 'x'.join(str(d) for d in shape), step, rate, rate / base, cpu / size, cpu / step,
            runners[size].describe_last(True)))
    if profile_steps:
        print_profile(sizes, runners, profile_steps)
    for runner in runners.values():
        runner.sess.close()
    sys.stdout.flush()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--models', nargs='+', choices=['demo', 'r50-fpn-800'], default=['demo'])
    parser.add_argument('--sizes', nargs='+', type=int, default=[1, 2, 4],
                        help='images per tower; the first is the base')
    parser.add_argument('--repeats', type=int, default=3, help='interleaved rounds per size')
    parser.add_argument('--steps', type=int, default=2, help='steps timed per round')
    parser.add_argument('--profile', type=int, default=0, metavar='STEPS',
                        help='also trace STEPS steps per N and print where the CPU time goes')
    args = parser.parse_args()
    logging.getLogger('tensorpack').setLevel(logging.WARNING)
    print('TensorFlow {}; {}; {} cores; load average {}'.format(
        tf.__version__, onednn_status(), os.cpu_count(), load_average()))
    with tempfile.TemporaryDirectory(prefix='bench_batch_') as basedir:
        for name in args.models:
            overrides = model_overrides(name, basedir)
            bench(name, overrides, basedir, args.sizes, args.repeats, args.steps, args.profile)
    print('load average at the end: {}'.format(load_average()))


if __name__ == '__main__':
    main()
