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
Decoding (--decode, also run first by default): per-image milliseconds of the mapper's image
steps (read + decode, to float32, resize, back to uint8) for a 2048x1536 JPEG photo at the
short edges of the demo (256) and of R50-FPN (800), against a 256 px shapes PNG; and the same
with OpenCV's reduced JPEG decode (IMREAD_REDUCED_COLOR_2/4/8, the largest factor that keeps
the short edge at least the target), with the largest and mean difference of its result.
Models (bench/benchlib.py): `demo` is make demo's recipe (256 px); `r50-fpn-800` is R50-FPN Mask
R-CNN at config.py's defaults with 800 px images, shapes images upscaled to it.

Run: .venv/bin/python bench/bench_dataflow.py [--models demo r50-fpn-800] [--workers 1 2]
     [--images 50] [--warmup 5] [--steps 3] [--basedir DIR] [--decode | --no-decode]
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


def _photo_like(height, width, seed=0):
    """uint8 BGR [height, width, 3] with the smooth gradients, edges and fine texture of a photo."""
    import cv2
    rng = np.random.default_rng(seed)
    small = rng.uniform(0, 255, (height // 64 + 1, width // 64 + 1, 3)).astype(np.float32)
    image = cv2.resize(small, (width, height), interpolation=cv2.INTER_CUBIC)
    for _ in range(40):
        center = (int(rng.integers(0, width)), int(rng.integers(0, height)))
        cv2.circle(image, center, int(rng.integers(20, 300)), [float(v) for v in rng.uniform(0, 255, 3)], -1)
    image += rng.normal(0, 4, image.shape).astype(np.float32)
    return np.clip(image, 0, 255).astype(np.uint8)


def reduced_decode_flag(height, width, short_edge, max_size):
    """(factor, cv2 flag) of the largest JPEG reduction whose image still is at least the resize's
    target, or (1, IMREAD_COLOR)."""
    import cv2
    from dataflow.resize import resized_shape
    new_h, new_w = resized_shape(height, width, short_edge, max_size)
    for factor, flag in ((8, cv2.IMREAD_REDUCED_COLOR_8), (4, cv2.IMREAD_REDUCED_COLOR_4),
                         (2, cv2.IMREAD_REDUCED_COLOR_2)):
        if height // factor >= new_h and width // factor >= new_w:
            return factor, flag
    return 1, cv2.IMREAD_COLOR


def _mapper_image_steps(path, original_hw, short_edge, max_size, flag, repeat):
    """Mean ms of read, JPEG completeness check, decode, to-float32, resize, to-uint8 (the mapper's
    image steps, dataflow/image_io.py and dataflow/mapper.py); and the resulting uint8 image."""
    import cv2
    from dataflow.image_io import jpeg_is_complete
    from dataflow.resize import resized_shape
    times = np.zeros(6)
    for _ in range(repeat):
        t0 = time.perf_counter()
        raw = np.fromfile(path, dtype=np.uint8)
        t_read = time.perf_counter()
        if raw[:3].tobytes() == b'\xff\xd8\xff':
            jpeg_is_complete(raw.tobytes())
        t_check = time.perf_counter()
        image = cv2.imdecode(raw, flag)
        t1 = time.perf_counter()
        image = image.astype(np.float32)
        t2 = time.perf_counter()
        new_h, new_w = resized_shape(original_hw[0], original_hw[1], short_edge, max_size)
        image = cv2.resize(image, (new_w, new_h), interpolation=cv2.INTER_LINEAR)
        t3 = time.perf_counter()
        image = np.clip(np.round(image), 0, 255).astype(np.uint8)
        t4 = time.perf_counter()
        times += np.diff([t0, t_read, t_check, t1, t2, t3, t4])
    return times * 1000 / repeat, image


def _differences(image, reference):
    diff = np.abs(image.astype(np.int16) - reference.astype(np.int16))
    return [int(diff.max()), '{:.2f}'.format(diff.mean())]


def bench_decode(basedir, repeat):
    import cv2
    print('== decoding and resizing one image (load average {})'.format(load_average()))
    directory = os.path.join(basedir, 'decode')
    os.makedirs(directory, exist_ok=True)
    photo = os.path.join(directory, 'photo_2048x1536.jpg')
    if not os.path.isfile(photo):
        cv2.imwrite(photo, _photo_like(1536, 2048), [cv2.IMWRITE_JPEG_QUALITY, 92])
    shapes = sorted(os.listdir(os.path.join(basedir, 'shapes_train')))[0]
    shapes = os.path.join(basedir, 'shapes_train', shapes)
    rows = []
    for label, path, short_edge, max_size in (
            ('shapes 256 px PNG -> 256', shapes, 256, 256),
            ('photo 2048x1536 JPEG -> 256', photo, 256, 256),
            ('photo 2048x1536 JPEG -> 800', photo, 800, 1333)):
        original_hw = cv2.imread(path).shape[:2]
        full, full_image = _mapper_image_steps(path, original_hw, short_edge, max_size, cv2.IMREAD_COLOR, repeat)
        # an anti-aliased reference: the full image resized by pixel-area averaging
        area = cv2.resize(cv2.imread(path), full_image.shape[1::-1], interpolation=cv2.INTER_AREA)
        rows.append([label, 'full'] + ['{:.1f}'.format(v) for v in full] + ['{:.1f}'.format(full.sum()), '', '']
                    + _differences(full_image, area))
        if path == photo:
            factor, flag = reduced_decode_flag(original_hw[0], original_hw[1], short_edge, max_size)
            if factor > 1:
                reduced, reduced_image = _mapper_image_steps(path, original_hw, short_edge, max_size, flag, repeat)
                rows.append([label, 'reduced 1/{}'.format(factor)] + ['{:.1f}'.format(v) for v in reduced] +
                            ['{:.1f}'.format(reduced.sum())] + _differences(reduced_image, full_image) +
                            _differences(reduced_image, area))
    print('photo: {:.2f} MB'.format(os.path.getsize(photo) / 1e6))
    print(tabulate(rows, headers=['image -> short edge', 'decode', 'read ms', 'JPEG check ms', 'decode ms',
                                  'float32 ms', 'resize ms', 'uint8 ms', 'total ms', 'vs full max', 'vs full mean',
                                  'vs area max', 'vs area mean']))
    print('(mean of {} runs; differences of the uint8 results: vs full, against the full decode resized as the '
          'mapper does (bilinear); vs area, against the full decode resized by area averaging; load average {} '
          'after)\n'.format(repeat, load_average()))
    sys.stdout.flush()


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
    parser.add_argument('--decode', action='store_true', help='only the decoding table')
    parser.add_argument('--no-decode', action='store_true', help='no decoding table')
    parser.add_argument('--decode-repeat', type=int, default=20, help='runs averaged in the decoding table')
    args = parser.parse_args()
    logging.getLogger('tensorpack').setLevel(logging.WARNING)   # not the config dump of every build

    args.basedir = args.basedir or os.path.join(tempfile.gettempdir(), 'bench_dataflow_shapes')
    register_shapes(args.basedir, num_train=args.num_shapes, num_val=2)
    print('{}; {} CPU cores; load average {}'.format(onednn_status(), os.cpu_count(), load_average()))
    if not args.no_decode:
        shapes_dir = os.path.join(args.basedir, 'shapes_train')
        if not os.path.isdir(shapes_dir) or not os.listdir(shapes_dir):
            from dataset import DatasetRegistry
            DatasetRegistry.get('shapes_train').training_roidbs()   # writes the data
        bench_decode(args.basedir, args.decode_repeat)
    if args.decode:
        return
    for name in args.models:
        bench(name, model_overrides(name, args.basedir), args)


if __name__ == '__main__':
    main()
