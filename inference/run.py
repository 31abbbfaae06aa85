"""Inference on whole images and datasets: resize, run the graph, map results back, paste masks.

Shape shorthand: R detections, M mask resolution, H, W original image size. Boxes are
continuous x1y1x2y2 floats in pixels of the original image, unless a docstring says "resized".

`predict_image` -> [DetectionResult] -> `predict_dataflow` -> COCO-style dicts -> the dataset
split's `eval_inference_results`. The settings come as arguments: `InferenceSettings.from_config`
reads them from a config at the edge.
"""
import collections
import itertools
import math
import threading
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack

import numpy as np
import tqdm

from dataflow.resize import CustomResize
from inference.detections import DetectionResult, detection_to_coco
from inference.paste import paste_mask
from utils.np_box_ops import clip_boxes

__all__ = ['InferenceSettings', 'predict_image', 'predict_dataflow', 'multithread_predict_dataflow']


class InferenceSettings(collections.namedtuple('InferenceSettings', [
        'short_edge_size',   # PREPROC.TEST_SHORT_EDGE_SIZE
        'max_size',          # PREPROC.MAX_SIZE
        'accurate_paste',    # MRCNN.ACCURATE_PASTE
])):
    """The keyword arguments of `predict_image` / `predict_dataflow` that come from the config."""

    __slots__ = ()

    @classmethod
    def from_config(cls, cfg):
        """The settings of a finalized config `cfg`."""
        return cls(short_edge_size=cfg.PREPROC.TEST_SHORT_EDGE_SIZE, max_size=cfg.derived.max_size,
                   accurate_paste=cfg.MRCNN.ACCURATE_PASTE)


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


def _dataflow_length(df):
    try:
        return len(df)
    except (TypeError, NotImplementedError):
        return None


class PredictionAbandoned(Exception):
    """`should_stop()` said so before an image: the predictions are incomplete and dropped."""


def predict_dataflow(df, model_func, tqdm_bar=None, *, short_edge_size, max_size, accurate_paste, should_stop=None):
    """Run `predict_image` over a DataFlow of (uint8 [H, W, 3] BGR image, image_id).

    tqdm_bar: anything with `update(n)`, shared between threads; a new bar when None.
    should_stop: None, or a callable asked before each image; when it returns True,
        PredictionAbandoned is raised (training on SIGTERM abandons its evaluation).
    Other arguments as in `predict_image`.
    Returns a list of `detection_to_coco` dicts, the input of `DatasetSplit.eval_inference_results`.
    """
    df.reset_state()
    all_results = []
    with ExitStack() as stack:
        if tqdm_bar is None:
            tqdm_bar = stack.enter_context(tqdm.tqdm(total=_dataflow_length(df), desc='Predict'))
        for count, (img, image_id) in enumerate(df):
            if should_stop is not None and should_stop():
                raise PredictionAbandoned('stopped after {} image(s) of this shard'.format(count))
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


def multithread_predict_dataflow(dataflows, model_funcs, *, short_edge_size, max_size, accurate_paste,
                                 should_stop=None):
    """`predict_dataflow` on each (dataflow, model_func) pair in its own thread, one progress bar.

    dataflows, model_funcs: equally long lists, typically one shard per predictor/device.
    Returns the concatenated result dicts, in the order of `dataflows`.
    """
    if len(dataflows) != len(model_funcs):
        raise ValueError("Need one model_func per dataflow, got {} dataflows and {} model_funcs".format(
            len(dataflows), len(model_funcs)))
    settings = dict(short_edge_size=short_edge_size, max_size=max_size, accurate_paste=accurate_paste,
                    should_stop=should_stop)
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
