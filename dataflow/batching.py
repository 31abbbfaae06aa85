"""Several training images per tower (TRAIN.BATCH_SIZE_PER_GPU = N > 1): group and pad datapoints.

`pad_batch` turns N one-image datapoints (data.py's dicts) into one batched datapoint, the
contract of utils/tensor_names.py ("Several images per tower"):

    image            [N, Hp, Wp, 3], 0 outside each image (the images' own dtype)
    image_valid_hw   int32 [N, 2], each image's (h, w)
    anchor labels    int32 [N, fH, fW, A] per level, padded with -1 (ignored)
    anchor boxes     float32 [N, fH, fW, A, 4] per level, padded with 0
    gt_boxes         float32 [N, Mmax, 4], padded with 0
    gt_labels        int64 [N, Mmax], padded with 0
    gt_counts        int32 [N], the real rows of gt_boxes / gt_labels / gt_masks_packed
    gt_masks_packed  uint8 [N, Mmax, Hp, ceil(Wp / 8)], padded with 0 (MODE_MASK only)

Hp, Wp are the largest h, w of the batch rounded up to `multiple`; each anchor level is padded
to the largest [fH, fW] of that level in the batch (the mapper's arrays may cover the MAX_SIZE
canvas or only the image's own feature map; the model fits them to its feature map either way).

`AspectRatioGroupedBatches` groups consecutive datapoints into batches of N by orientation
(landscape h <= w, portrait h > w), so images of one batch have similar shapes and little padding,
as detectron2's AspectRatioGroupedDataset does. It runs in the training process, after the
per-image map (in-process or in workers). With N = 1 it is not in the pipeline.
"""
import numpy as np

import utils.tf_compat  # noqa: F401  (configures TensorFlow before tensorpack imports it)
from tensorpack.dataflow import ProxyDataFlow

from utils import tensor_names as names

__all__ = ['ANCHOR_LABEL_KEYS', 'ANCHOR_BOX_KEYS', 'BatchingParams', 'pad_batch', 'AspectRatioGroupedBatches',
           'add_batching']

ANCHOR_LABEL_KEYS = frozenset([names.C4_ANCHOR_LABELS] + [names.fpn_anchor_labels(lvl) for lvl in names.FPN_LEVELS])
ANCHOR_BOX_KEYS = frozenset([names.C4_ANCHOR_BOXES] + [names.fpn_anchor_boxes(lvl) for lvl in names.FPN_LEVELS])
_GT_KEYS = (names.GT_BOXES, names.GT_LABELS)


class BatchingParams(tuple):
    """(batch_size, multiple): images per batch and the side multiple the batch is padded to."""

    __slots__ = ()

    def __new__(cls, batch_size, multiple):
        if batch_size < 2:
            raise ValueError('TRAIN.BATCH_SIZE_PER_GPU={}: batching is for 2 or more images.'.format(batch_size))
        if multiple < 1:
            raise ValueError('The padding multiple must be at least 1, got {}.'.format(multiple))
        return super().__new__(cls, (int(batch_size), int(multiple)))

    batch_size = property(lambda self: self[0])
    multiple = property(lambda self: self[1])

    @classmethod
    def from_config(cls, cfg):
        """None with TRAIN.BATCH_SIZE_PER_GPU = 1; else FPN pads to FPN.RESOLUTION_REQUIREMENT, C4 to
        RPN.ANCHOR_STRIDE."""
        if cfg.TRAIN.BATCH_SIZE_PER_GPU == 1:
            return None
        multiple = cfg.FPN.RESOLUTION_REQUIREMENT if cfg.MODE_FPN else cfg.RPN.ANCHOR_STRIDE
        return cls(cfg.TRAIN.BATCH_SIZE_PER_GPU, multiple)


def _round_up(value, multiple):
    return -(-value // multiple) * multiple


def _pad_stack(arrays, shape, pad_value):
    """Stack arrays (same rank, each no larger than `shape`) into [len, *shape] filled with pad_value."""
    out = np.full((len(arrays),) + tuple(shape), pad_value, dtype=arrays[0].dtype)
    for i, arr in enumerate(arrays):
        out[(i,) + tuple(slice(0, n) for n in arr.shape)] = arr
    return out


def _largest_shape(arrays):
    return np.max([arr.shape for arr in arrays], axis=0)


def pad_batch(datapoints, multiple):
    """One batched datapoint (module docstring) from a list of one-image datapoint dicts."""
    if not datapoints:
        raise ValueError('pad_batch needs at least one datapoint.')
    keys = set(datapoints[0])
    for dp in datapoints[1:]:
        if set(dp) != keys:
            raise ValueError('Datapoints of one batch have different keys: {} and {}.'.format(
                sorted(keys), sorted(dp)))
    images = [dp[names.IMAGE] for dp in datapoints]
    valid_hw = np.asarray([img.shape[:2] for img in images], np.int32)
    padded_h, padded_w = (_round_up(int(side), multiple) for side in valid_hw.max(axis=0))
    counts = np.asarray([len(dp[names.GT_BOXES]) for dp in datapoints], np.int32)
    max_gt = int(counts.max())

    batch = {names.IMAGE: _pad_stack(images, (padded_h, padded_w, 3), 0),
             names.IMAGE_VALID_HW: valid_hw,
             names.GT_COUNTS: counts,
             names.GT_BOXES: _pad_stack([dp[names.GT_BOXES].reshape(-1, 4) for dp in datapoints], (max_gt, 4), 0),
             names.GT_LABELS: _pad_stack([dp[names.GT_LABELS] for dp in datapoints], (max_gt,), 0)}
    if names.GT_MASKS_PACKED in keys:
        masks = [dp[names.GT_MASKS_PACKED] for dp in datapoints]
        batch[names.GT_MASKS_PACKED] = _pad_stack(masks, (max_gt, padded_h, -(-padded_w // 8)), 0)
    for key in keys - set(batch):
        arrays = [dp[key] for dp in datapoints]
        if key in ANCHOR_LABEL_KEYS:
            batch[key] = _pad_stack(arrays, _largest_shape(arrays), -1)
        elif key in ANCHOR_BOX_KEYS:
            batch[key] = _pad_stack(arrays, _largest_shape(arrays), 0)
        else:
            raise KeyError('pad_batch does not know how to pad the datapoint entry {!r}.'.format(key))
    return batch


def _is_portrait(datapoint):
    height, width = datapoint[names.IMAGE].shape[:2]
    return height > width


class AspectRatioGroupedBatches(ProxyDataFlow):
    """Batches of `batch_size` datapoints of one orientation, padded by `pad_batch`.

    Datapoints go to a landscape (h <= w) or portrait bucket in the order they come; a full
    bucket is yielded. What is left in the buckets when the source ends is dropped (fewer than
    batch_size per orientation), so `size()` is an estimate: len(source) // batch_size.
    """

    def __init__(self, ds, batch_size, multiple):
        super().__init__(ds)
        self.params = BatchingParams(batch_size, multiple)

    def __len__(self):
        return len(self.ds) // self.params.batch_size

    def __iter__(self):
        buckets = ([], [])
        for datapoint in self.ds:
            bucket = buckets[int(_is_portrait(datapoint))]
            bucket.append(datapoint)
            if len(bucket) == self.params.batch_size:
                yield pad_batch(bucket, self.params.multiple)
                del bucket[:]

    def close(self):
        """Close the source (the data workers), if it has workers."""
        if hasattr(self.ds, 'close'):
            self.ds.close()


def add_batching(ds, params):
    """`ds` itself when params is None (one image per tower), else its AspectRatioGroupedBatches."""
    if params is None:
        return ds
    return AspectRatioGroupedBatches(ds, params.batch_size, params.multiple)
