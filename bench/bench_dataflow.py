"""Training-dataflow throughput against the trainer's own consumption, side by side in one run.

For each model, on the synthetic shapes set (written once to --basedir):
  - images / s of the training dataflow in this process (DATA.NUM_WORKERS=0) and with each
    --workers count of spawned workers (worker start-up and their filled buffer excluded);
  - images / s the trainer consumes: steps / s of a real training step of the same model
    (session.run of the loss and the optimizer's update, one tower, random weights) fed one
    in-memory datapoint again at every step, times the images per step;
  - the ratio dataflow / trainer (it should be >= 2 with workers);
  - the bytes of one datapoint as a worker sends it (pickled), and what the format before
    the canvas format (float32 image, anchor grids of the whole MAX_SIZE canvas) would send for it.
Models (bench/benchlib.py): `demo` is make demo's recipe (256 px); `r50-fpn-800` is R50-FPN Mask
R-CNN at config.py's defaults with 800 px images, shapes images upscaled to it.

Run: .venv/bin/python bench/bench_dataflow.py [--models demo r50-fpn-800] [--workers 1 2]
     [--images 50] [--warmup 5] [--steps 3] [--basedir DIR]
"""
import argparse
import logging
import os
import pickle
import sys
import tempfile
import time

from benchlib import Runner, load_average, model_overrides  # first: sys.path

import numpy as np
from tabulate import tabulate

from utils.tf_compat import onednn_status  # (configures TensorFlow before tensorpack imports it)
from tensorpack.dataflow import RepeatedData

import data
from config import config as cfg, finalize_configs, reset_config
from dataflow.build import image_to_float32
from dataset import register_shapes
from utils import tensor_names as names
from utils.np_box_ops import anchor_grids


def configure(overrides, basedir, num_workers):
    reset_config()
    cfg.update_args(["DATA.TRAIN=('shapes_train',)", "DATA.VAL=('shapes_val',)", 'DATA.BASEDIR=' + basedir])
    cfg.update_args(list(overrides))   # each call may override the one before (one call may not repeat a key)
    cfg.update_args(['DATA.NUM_WORKERS={}'.format(num_workers)])
    finalize_configs(is_training=True)


def dataflow_rate(num_workers, num_images, warmup):
    """(seconds, images / s) for `num_images` datapoints after `warmup` ones (worker start-up excluded).

    With workers, the warm-up also drains the datapoints their buffer filled during start-up, so
    the timed ones are made while timing.
    """
    ds = data.get_train_dataflow()
    if num_workers == 0:
        ds = RepeatedData(ds, -1)   # one pass is one epoch without workers
    else:
        warmup += num_workers * data.TrainDataSettings.from_config(cfg).buffer_per_worker
    ds.reset_state()
    iterator = iter(ds)
    try:
        for _ in range(warmup):
            next(iterator)
        start = time.perf_counter()
        for _ in range(num_images):
            next(iterator)
        seconds = time.perf_counter() - start
    finally:
        if hasattr(ds, 'close'):
            ds.close()
    return seconds, num_images / seconds


def canvas_format_bytes(datapoint):
    """Bytes of the image and anchor arrays of `datapoint` in the canvas format: a float32
    image and anchor labels (int32) and boxes (float32 x 4) over the whole MAX_SIZE canvas."""
    grids = anchor_grids(cfg.MODE_FPN, cfg.RPN.ANCHOR_STRIDE, cfg.FPN.ANCHOR_STRIDES, cfg.RPN.ANCHOR_SIZES,
                         cfg.RPN.ANCHOR_RATIOS, cfg.derived.max_size)
    return datapoint[names.IMAGE].size * 4 + sum(grid.size // 4 * (4 + 16) for grid in grids)


def datapoint_sizes(count):
    """Mean MB of `count` datapoints as a worker pickles them, of their image and anchor arrays, and
    of those arrays in the canvas format; and the first datapoint with boxes (float32 image)."""
    mapper = data.training_mapper(data.TrainDataSettings.from_config(cfg), rank=0)
    roidbs = data.get_train_dataflow().ds
    roidbs.reset_state()
    pickled, arrays, canvas, first = [], [], [], None
    for roidb in roidbs:
        datapoint = mapper(roidb)
        if datapoint is None:
            continue
        pickled.append(len(pickle.dumps(datapoint, protocol=-1)))
        arrays.append(sum(v.nbytes for k, v in datapoint.items() if k == names.IMAGE or k.startswith('anchor_')))
        canvas.append(canvas_format_bytes(datapoint))
        if first is None and len(datapoint[names.GT_BOXES]):
            first = image_to_float32(datapoint)
        if len(pickled) == count:
            break
    return [np.mean(x) / 1e6 for x in (pickled, arrays, canvas)], first


def trainer_rate(datapoint, steps):
    """(s / step, images / step, images / s) of the model's training step in this process."""
    runner = Runner(True, False, datapoint)
    try:
        seconds = runner.time(steps)
    finally:
        runner.sess.close()
    images_per_step = 1   # one datapoint per session.run, one tower (TRAIN.BATCH_SIZE_PER_GPU=1)
    return seconds, images_per_step, images_per_step / seconds


def bench(name, overrides, args):
    print('== {} (load average {})'.format(name, load_average()))
    configure(overrides, args.basedir, 0)
    (pickled, arrays, canvas), datapoint = datapoint_sizes(10)
    print('datapoint from a worker, mean of 10: {:.2f} MB pickled ({:.2f} MB image + anchor arrays); '
          'the same arrays in the canvas format (float32 image, whole-canvas anchor grids): '
          '{:.2f} MB'.format(pickled, arrays, canvas))
    sys.stdout.flush()
    rows = []
    for num_workers in [0] + sorted(set(args.workers) - {0}):
        configure(overrides, args.basedir, num_workers)
        seconds, rate = dataflow_rate(num_workers, args.images, args.warmup)
        rows.append(['dataflow, {} worker(s)'.format(num_workers) if num_workers else 'dataflow, in-process',
                     args.images, '{:.2f}'.format(seconds), '{:.2f}'.format(rate)])
        print('  ' + ', '.join(map(str, rows[-1])))
        sys.stdout.flush()
    configure(overrides, args.basedir, 0)
    step_seconds, images_per_step, consumed = trainer_rate(datapoint, args.steps)
    rows.append(['trainer ({:.3f} s/step x {} image/step)'.format(step_seconds, images_per_step),
                 args.steps * images_per_step, '{:.2f}'.format(step_seconds * args.steps), '{:.2f}'.format(consumed)])
    for row in rows[:-1]:
        row.append('{:.1f}'.format(float(row[3]) / consumed))
    rows[-1].append('')
    shape = datapoint[names.IMAGE].shape
    print('{}: training dataflow against the trainer, images around {}x{} (load average {} after)'.format(
        name, shape[0], shape[1], load_average()))
    print(tabulate(rows, headers=['', 'images', 'seconds', 'images / s', 'dataflow / trainer']))
    print()
    sys.stdout.flush()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--models', nargs='+', choices=['demo', 'r50-fpn-800'], default=['r50-fpn-800', 'demo'])
    parser.add_argument('--workers', type=int, nargs='+', default=[1, 2], help='worker counts besides 0')
    parser.add_argument('--images', type=int, default=50, help='datapoints timed per dataflow setting')
    parser.add_argument('--warmup', type=int, default=5, help='datapoints read before timing')
    parser.add_argument('--steps', type=int, default=3, help='training steps timed (after one warm-up step)')
    parser.add_argument('--num-shapes', type=int, default=40, help='shapes_train images to generate')
    parser.add_argument('--basedir', default=None, help='where the shapes data is (created if missing)')
    args = parser.parse_args()
    logging.getLogger('tensorpack').setLevel(logging.WARNING)   # not the config dump of every build

    args.basedir = args.basedir or os.path.join(tempfile.gettempdir(), 'bench_dataflow_shapes')
    register_shapes(args.basedir, num_train=args.num_shapes, num_val=2)
    print('{}; {} CPU cores; load average {}'.format(onednn_status(), os.cpu_count(), load_average()))
    for name in args.models:
        bench(name, model_overrides(name, args.basedir), args)


if __name__ == '__main__':
    main()
