"""Training-dataflow throughput (images / s) with 0 and N spawned workers, FPN + masks.

Shapes images (256 px) are resized to an 800 px short edge, as COCO images are by default.

Run: .venv/bin/python bench/bench_dataflow.py [--workers 2] [--images 50] [--warmup 5] [--basedir DIR]
"""
import argparse
import os
import sys
import tempfile
import time

from tabulate import tabulate

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import utils.tf_compat  # noqa: E402,F401  (configures TensorFlow before tensorpack imports it)
from tensorpack.dataflow import RepeatedData  # noqa: E402

import data  # noqa: E402
from config import config as cfg, finalize_configs, reset_config  # noqa: E402
from dataset import register_shapes  # noqa: E402


def configure(num_workers):
    reset_config()
    cfg.update_args(["DATA.TRAIN=('shapes_train',)", "DATA.VAL=('shapes_val',)", 'MODE_FPN=True',
                     'MODE_MASK=True', 'PREPROC.TRAIN_SHORT_EDGE_SIZE=[800,800]',
                     'DATA.NUM_WORKERS={}'.format(num_workers)])
    finalize_configs(is_training=True)


def images_per_second(num_workers, num_images, warmup):
    """(seconds, images / s) for `num_images` datapoints after `warmup` ones (worker start-up excluded)."""
    configure(num_workers)
    ds = data.get_train_dataflow()
    if num_workers == 0:
        ds = RepeatedData(ds, -1)   # one pass is one epoch without workers
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


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--workers', type=int, default=2, help='N, the worker count compared with 0')
    parser.add_argument('--images', type=int, default=50, help='datapoints timed per setting')
    parser.add_argument('--warmup', type=int, default=5, help='datapoints read before timing')
    parser.add_argument('--num-shapes', type=int, default=40, help='shapes_train images to generate')
    parser.add_argument('--basedir', default=None, help='where the shapes data is (created if missing)')
    args = parser.parse_args()

    basedir = args.basedir or os.path.join(tempfile.gettempdir(), 'bench_dataflow_shapes')
    register_shapes(basedir, num_train=args.num_shapes, num_val=2)
    rows = []
    for num_workers in sorted({0, args.workers}):
        seconds, rate = images_per_second(num_workers, args.images, args.warmup)
        rows.append([num_workers, args.images, '{:.2f}'.format(seconds), '{:.1f}'.format(rate)])
    print('Training dataflow, FPN + masks, shapes images resized to 800 px short edge '
          '({} warm-up datapoints, {} CPU cores)'.format(args.warmup, os.cpu_count()))
    print(tabulate(rows, headers=['workers', 'images', 'seconds', 'images / s']))


if __name__ == '__main__':
    main()
