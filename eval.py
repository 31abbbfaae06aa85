"""Inference on whole images and datasets: resize, run the graph, map results back, paste masks.

Shape shorthand: R detections, M mask resolution (28 with FPN, 14 with C4),
H, W original image size. Boxes are continuous x1y1x2y2 floats in pixels of the
original image (pixel i covers [i, i+1)), unless a docstring says "resized".

`predict_image` -> [DetectionResult] -> `predict_dataflow` -> COCO-style dicts ->
the dataset split's `eval_inference_results`. `EvalCallback` runs that during training;
it is the only part of this module that reads the config.
"""
import itertools
import json
import math
import os
import threading
from collections import namedtuple
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack

import cv2
import numpy as np
import pycocotools.mask as coco_mask
import tqdm

from utils.tf_compat import tf  # before tensorpack, which imports TensorFlow
from tensorpack.callbacks import Callback
from tensorpack.utils import logger

from common import CustomResize
from utils.np_box_ops import clip_boxes

DetectionResult = namedtuple('DetectionResult', ['box', 'score', 'class_id', 'mask'])
DetectionResult.__doc__ = """One detection in an original image.

box: float32 [4], x1y1x2y2, original-image pixels.
score: float.
class_id: int, 1..K (0 is background and never appears).
mask: uint8 [H, W] of 0/1 over the whole original image, or None without a mask head.
"""


# Mask pasting -----------------------------------------------------------------------------

def _sample_positions(first_pixel, num_pixels, box_start, cell_size, mask_size):
    """Where pixel centres fall in a zero-padded 1-D mask: (lower index int64 [n], weight of upper float64 [n]).

    Mask cell i spans [box_start + i * cell_size, box_start + (i + 1) * cell_size) and its value
    sits at the cell centre. Index j of the padded mask [M + 2] holds cell j - 1, and the zeros
    at 0 and M + 1 make the value ramp linearly to 0 one cell beyond the outermost centres
    (tensorpack's "pad by one zero, enlarge the box by (M + 2) / M" construction).
    Pixels farther out get lower index 0 and upper weight 0: all weight on the padding zero.
    """
    centres = first_pixel + np.arange(num_pixels, dtype=np.float64) + 0.5
    coords = (centres - box_start) / cell_size + 0.5   # padded-mask index units, entry j centred on j
    lower = np.floor(coords).astype(np.int64)
    upper_weight = coords - lower
    outside = (lower < 0) | (lower > mask_size)
    lower[outside] = 0
    upper_weight[outside] = 0.0
    return lower, upper_weight


def _paste_accurate(box, mask, shape_hw):
    height, width = shape_hw
    full = np.zeros((height, width), dtype=np.uint8)
    x1, y1, x2, y2 = (float(v) for v in box)
    if not (x2 > x1 and y2 > y1 and np.all(np.isfinite(box))):
        return full
    mask_size = mask.shape[0]
    cell_w = (x2 - x1) / mask_size
    cell_h = (y2 - y1) / mask_size
    # Only pixels whose centre lies within one cell of the box edge can receive a non-zero value.
    col_start = max(0, math.floor(x1 - cell_w))
    col_end = min(width, math.ceil(x2 + cell_w))
    row_start = max(0, math.floor(y1 - cell_h))
    row_end = min(height, math.ceil(y2 + cell_h))
    if col_end <= col_start or row_end <= row_start:
        return full
    padded = np.pad(mask.astype(np.float64), 1)
    # Bilinear interpolation is separable: along x at the mask's M + 2 rows, then along y.
    col_lower, col_w = _sample_positions(col_start, col_end - col_start, x1, cell_w, mask_size)
    row_lower, row_w = _sample_positions(row_start, row_end - row_start, y1, cell_h, mask_size)
    along_x = padded[:, col_lower] * (1.0 - col_w) + padded[:, col_lower + 1] * col_w   # [M + 2, w]
    values = along_x[row_lower] * (1.0 - row_w)[:, None] + along_x[row_lower + 1] * row_w[:, None]
    full[row_start:row_end, col_start:col_end] = values >= 0.5
    return full


def _paste_fast(box, mask, shape_hw):
    height, width = shape_hw
    full = np.zeros((height, width), dtype=np.uint8)
    if not np.all(np.isfinite(box)):
        return full
    # Integer box of the pixels whose centres fall in the box (at least 1x1), inclusive ends.
    col0, row0 = math.floor(box[0] + 0.5), math.floor(box[1] + 0.5)
    col1, row1 = math.floor(box[2] - 0.5), math.floor(box[3] - 0.5)
    col1, row1 = max(col0, col1), max(row0, row1)
    box_w, box_h = col1 + 1 - col0, row1 + 1 - row0
    # The mask was predicted for the box in resized-image pixels, so its resolution never
    # matches this box exactly; a plain resize is the fast approximation.
    resized = cv2.resize(mask.astype(np.float32), (box_w, box_h)) > 0.5
    resized = resized.reshape(box_h, box_w)   # cv2 drops the axes of 1-pixel results
    dst_r0, dst_r1 = max(row0, 0), min(row1 + 1, height)
    dst_c0, dst_c1 = max(col0, 0), min(col1 + 1, width)
    if dst_r1 > dst_r0 and dst_c1 > dst_c0:
        full[dst_r0:dst_r1, dst_c0:dst_c1] = resized[dst_r0 - row0:dst_r1 - row0, dst_c0 - col0:dst_c1 - col0]
    return full


def paste_mask(box, mask, shape_hw, accurate):
    """Paste one box's mask probabilities into a binary mask of the whole image.

    box: float [4], x1y1x2y2, image pixels (may reach outside the image).
    mask: float32 [M, M], probabilities for `box`.
    shape_hw: (H, W) of the image.
    accurate: True for sub-pixel bilinear sampling at pixel centres (tensorpack's
        MRCNN.ACCURATE_PASTE, values spread half a cell beyond the box), False for the fast
        resize onto the integer box.
    Returns uint8 [H, W] of 0/1 (all zero for an empty box). Only pixels near the box are computed.
    """
    mask = np.asarray(mask)
    if mask.ndim != 2 or mask.shape[0] != mask.shape[1]:
        raise ValueError("paste_mask expects a square [M, M] mask, got shape {}".format(mask.shape))
    box = np.asarray(box, dtype=np.float64)
    if accurate:
        return _paste_accurate(box, mask, shape_hw)
    return _paste_fast(box, mask, shape_hw)


# Whole images and datasets -------------------------------------------------------------------

def predict_image(img, model_func, *, short_edge_size, max_size, accurate_paste):
    """Detect objects in one image.

    img: uint8 [H, W, 3] BGR, original size.
    model_func: callable(resized float/uint8 [h, w, 3] BGR) -> (boxes float32 [R, 4] x1y1x2y2 in
        resized-image pixels, scores float32 [R], labels int [R] 1..K[, masks float32 [R, M, M]]).
    short_edge_size, max_size: the test-time resize (PREPROC.TEST_SHORT_EDGE_SIZE, PREPROC.MAX_SIZE).
    accurate_paste: how masks are pasted, see `paste_mask`.
    Returns [DetectionResult] in original-image pixels, boxes clipped to the image.
    """
    orig_shape = img.shape[:2]
    resized = CustomResize(short_edge_size, max_size).augment(img)
    # One isotropic scale; CustomResize keeps the aspect ratio up to rounding of each side.
    scale = math.sqrt(resized.shape[0] / orig_shape[0] * resized.shape[1] / orig_shape[1])
    boxes, scores, labels, *masks = model_func(resized)
    boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4) / scale
    # The graph clips in resized pixels; the division can step just past the border again.
    boxes = clip_boxes(boxes, orig_shape)
    scores = np.asarray(scores, dtype=np.float32).reshape(-1)
    labels = np.asarray(labels).reshape(-1).tolist()
    if masks:
        full_masks = [paste_mask(box, mask, orig_shape, accurate_paste) for box, mask in zip(boxes, masks[0])]
    else:
        full_masks = [None] * len(boxes)
    return [DetectionResult(box, float(score), int(label), full_mask)
            for box, score, label, full_mask in zip(boxes, scores, labels, full_masks)]


def detection_to_coco(result, image_id):
    """COCO result dict of one DetectionResult.

    Returns {image_id, category_id (1..K, contiguous), bbox [x, y, w, h] original pixels rounded to
    1e-3, score rounded to 1e-4[, segmentation: RLE dict with `counts` as str]}; JSON-serializable.
    """
    x1, y1, x2, y2 = (float(v) for v in result.box)
    if isinstance(image_id, np.generic):
        image_id = image_id.item()
    entry = {
        'image_id': image_id,
        'category_id': int(result.class_id),
        'bbox': [round(v, 3) for v in (x1, y1, x2 - x1, y2 - y1)],
        'score': round(float(result.score), 4),
    }
    if result.mask is not None:
        rle = coco_mask.encode(np.asfortranarray(result.mask[:, :, None], dtype=np.uint8))[0]
        rle['counts'] = rle['counts'].decode('ascii')
        entry['segmentation'] = rle
    return entry


def _dataflow_length(df):
    try:
        return len(df)
    except (TypeError, NotImplementedError):
        return None


def predict_dataflow(df, model_func, tqdm_bar=None, *, short_edge_size, max_size, accurate_paste):
    """Run `predict_image` over a DataFlow of (uint8 [H, W, 3] BGR image, image_id).

    tqdm_bar: anything with `update(n)`, shared between threads; a new bar when None.
    Other arguments as in `predict_image`.
    Returns a list of `detection_to_coco` dicts, the input of `DatasetSplit.eval_inference_results`.
    """
    df.reset_state()
    all_results = []
    with ExitStack() as stack:
        if tqdm_bar is None:
            tqdm_bar = stack.enter_context(tqdm.tqdm(total=_dataflow_length(df), desc='Predict'))
        for img, image_id in df:
            results = predict_image(img, model_func, short_edge_size=short_edge_size,
                                    max_size=max_size, accurate_paste=accurate_paste)
            all_results.extend(detection_to_coco(r, image_id) for r in results)
            tqdm_bar.update(1)
    return all_results


class _LockedProgress:
    """A tqdm bar updated from several threads (tqdm's own counters are not thread-safe)."""

    def __init__(self, bar):
        self._bar = bar
        self._lock = threading.Lock()

    def update(self, n=1):
        with self._lock:
            self._bar.update(n)


def multithread_predict_dataflow(dataflows, model_funcs, *, short_edge_size, max_size, accurate_paste):
    """`predict_dataflow` on each (dataflow, model_func) pair in its own thread, one progress bar.

    dataflows, model_funcs: equally long lists, typically one shard per predictor/device.
    Returns the concatenated result dicts, in the order of `dataflows`.
    """
    if len(dataflows) != len(model_funcs):
        raise ValueError("Need one model_func per dataflow, got {} dataflows and {} model_funcs".format(
            len(dataflows), len(model_funcs)))
    settings = dict(short_edge_size=short_edge_size, max_size=max_size, accurate_paste=accurate_paste)
    if len(dataflows) == 1:
        return predict_dataflow(dataflows[0], model_funcs[0], **settings)
    lengths = [_dataflow_length(df) for df in dataflows]
    total = None if None in lengths else sum(lengths)
    with ThreadPoolExecutor(max_workers=len(dataflows), thread_name_prefix='EvalWorker') as executor, \
            tqdm.tqdm(total=total, desc='Predict') as bar:
        progress = _LockedProgress(bar)
        futures = [executor.submit(predict_dataflow, df, func, progress, **settings)
                   for df, func in zip(dataflows, model_funcs)]
        return list(itertools.chain.from_iterable(f.result() for f in futures))


# Training-time evaluation ---------------------------------------------------------------------

def epochs_to_evaluate(eval_period, max_epoch):
    """Set of epochs (1-based) at which to evaluate: every `eval_period` epochs and the last one."""
    if eval_period <= 0:
        raise ValueError("TRAIN.EVAL_PERIOD must be > 0 to evaluate during training, got {}".format(eval_period))
    return set(range(eval_period, max_epoch + 1, eval_period)) | {max_epoch}


def variables_read_by(tensors):
    """The global variables that computing `tensors` reads, in graph order."""
    seen, stack = set(), [t.op for t in tensors]
    while stack:
        op = stack.pop()
        if op in seen:
            continue
        seen.add(op)
        stack.extend(t.op for t in op.inputs)
        stack.extend(op.control_inputs)
    return [var for var in tf.global_variables() if var.op in seen]


class EvalCallback(Callback):
    """Evaluates `eval_dataset` during training; metrics go to the trainer's monitors.

    Replicated/CPU training: two predictors per GPU (one on the CPU without GPUs), each on a shard.
    Horovod: every rank of the first machine predicts its shard and writes a part file; a
    collective keeps all ranks in step; rank 0 gathers the parts and evaluates.
    Scalars are named '{eval_dataset}-{metric}', e.g. 'coco_minival2014-mAP(bbox)/IoU=0.5:0.95'.
    """

    _chief_only = False   # horovod ranks other than 0 predict too
    _own_session = False  # set by _setup_graph: True when TEST.AMP differs from TRAIN.AMP

    def __init__(self, eval_dataset, in_names, out_names, output_dir):
        self._eval_dataset = eval_dataset
        self._in_names, self._out_names = list(in_names), list(out_names)
        self._output_dir = output_dir

    def _setup_graph(self):
        from config import config as cfg
        from data import get_eval_dataflow

        self._settings = dict(short_edge_size=cfg.PREPROC.TEST_SHORT_EDGE_SIZE,
                              max_size=cfg.derived.max_size,
                              accurate_paste=cfg.MRCNN.ACCURATE_PASTE)
        self._eval_period = cfg.TRAIN.EVAL_PERIOD
        num_gpus = cfg.derived.num_gpus
        self._use_horovod = cfg.TRAINER == 'horovod'
        if self._use_horovod:
            import horovod.tensorflow as hvd
            self._hvd = hvd
            # Gathering part files needs a shared filesystem, which only one machine is sure to have.
            self._predict_here = hvd.rank() == hvd.local_rank()
            if self._predict_here:
                # Horovod makes each process see only its own GPU as gpu:0; NUM_GPUS counts ranks, even on CPUs.
                from utils.tf_compat import num_visible_gpus
                self._predictor = self._build_predictor(0 if num_visible_gpus() > 0 else -1)
                self._dataflow = get_eval_dataflow(self._eval_dataset, shard=hvd.local_rank(),
                                                   num_shards=hvd.local_size())
            self._barrier = hvd.allreduce(tf.random_normal(shape=[1]))
        else:
            # Two predictors per GPU keep each GPU busy while the other thread post-processes.
            devices = [k % num_gpus for k in range(2 * num_gpus)] if num_gpus > 0 else [-1]
            self._predictors = [self._build_predictor(device) for device in devices]
            self._dataflows = [get_eval_dataflow(self._eval_dataset, shard=k, num_shards=len(devices))
                               for k in range(len(devices))]

        # Grappler's mixed-precision rewrite is a setting of the whole session: when TEST.AMP differs
        # from TRAIN.AMP the predictors run in a session of their own, with weights copied in.
        self._test_amp = cfg.TEST.AMP
        self._own_session = cfg.TEST.AMP != cfg.TRAIN.AMP and (not self._use_horovod or self._predict_here)
        if self._own_session:
            predictors = [self._predictor] if self._use_horovod else self._predictors
            self._weights = variables_read_by([t for p in predictors for t in p.output_tensors])

    def _build_predictor(self, device):
        return self.trainer.get_predictor(self._in_names, self._out_names, device=device)

    def _open_own_session(self):
        from tensorpack.predict import OnlinePredictor
        from utils.tf_compat import num_visible_gpus, session_config

        config = session_config(amp=self._test_amp)
        if self._use_horovod and num_visible_gpus() > 0:
            config.gpu_options.visible_device_list = str(self._hvd.local_rank())
        self._sess = tf.Session(graph=self.graph, config=config)

        def rebind(pred):
            return OnlinePredictor(pred.input_tensors, pred.output_tensors, sess=self._sess)

        if self._use_horovod:
            self._predictor = rebind(self._predictor)
        else:
            self._predictors = [rebind(pred) for pred in self._predictors]
        logger.info('[EvalCallback] TEST.AMP={} differs from the training session\'s precision: {} predicts in a '
                    'session of its own; {} variables are copied in before each evaluation.'.format(
                        self._test_amp, self._eval_dataset, len(self._weights)))

    def _copy_weights(self):
        values = self.trainer.sess.run(self._weights)
        for var, value in zip(self._weights, values):
            var.load(value, self._sess)   # feeds the initializer: no new ops in the finalized graph

    def _after_train(self):
        if self._own_session:
            self._sess.close()

    def _before_train(self):
        if self._own_session:
            self._open_own_session()
        self._epochs_to_eval = epochs_to_evaluate(self._eval_period, self.trainer.max_epoch)
        logger.info("[EvalCallback] Will evaluate {} every {} epochs".format(self._eval_dataset, self._eval_period))

    def _gather_horovod_results(self):
        hvd = self._hvd
        part_files = [os.path.join(self._output_dir, 'outputs{}-part{}.json'.format(self.global_step, rank))
                      for rank in range(hvd.local_size())]
        if self._predict_here:
            local_results = predict_dataflow(self._dataflow, self._predictor, **self._settings)
            with open(part_files[hvd.local_rank()], 'w') as f:
                json.dump(local_results, f)
        self._barrier.eval()   # every part file is written once all ranks pass this
        if hvd.rank() > 0:
            return None
        all_results = []
        for path in part_files:
            with open(path) as f:
                all_results.extend(json.load(f))
            os.unlink(path)
        return all_results

    def _eval(self):
        if self._own_session:
            self._copy_weights()
        if self._use_horovod:
            all_results = self._gather_horovod_results()
            if all_results is None:
                return
        else:
            all_results = multithread_predict_dataflow(self._dataflows, self._predictors, **self._settings)

        from dataset import DatasetRegistry

        output_file = os.path.join(self._output_dir, '{}-outputs{}.json'.format(
            self._eval_dataset, self.global_step))
        scores = DatasetRegistry.get(self._eval_dataset).eval_inference_results(all_results, output_file)
        for name, value in scores.items():
            self.trainer.monitors.put_scalar('{}-{}'.format(self._eval_dataset, name), value)

    def _trigger_epoch(self):
        if self.epoch_num in self._epochs_to_eval:
            logger.info("Running evaluation on {} ...".format(self._eval_dataset))
            self._eval()
