"""The training and evaluation dataflows.

A training datapoint is a dict keyed by the names in utils/tensor_names.py:

    image            float32 [H, W, 3] BGR, resized (and maybe flipped)
    anchor_labels    int32 [S, S, A]     (C4; FPN: anchor_labels_lvl2..6 [S_l, S_l, A_l])
    anchor_boxes     float32 [S, S, A, 4] (C4; FPN: anchor_boxes_lvl2..6), the gt box of each fg anchor
    gt_boxes         float32 [N, 4] x1y1x2y2, pixels of the resized image, crowd boxes removed
    gt_labels        int64 [N], classes 1..K
    gt_masks_packed  uint8 [N, H, ceil(W / 8)] (MODE_MASK only), np.packbits of the masks along W

Anchor grids cover the largest possible image (S = ceil(PREPROC.MAX_SIZE / stride)); the model
crops them to its feature map. Anchor labels: 1 foreground, 0 background, -1 ignored.

Workers: with DATA.NUM_WORKERS > 0 the per-image work runs in processes started with the
*spawn* method, whatever the platform default is. Fork would copy the parent's TensorFlow
runtime and, under Horovod, its MPI state, which is unsafe; spawn starts clean interpreters.
Such a worker does not see the parent's config overrides or dataset registry, so the map
function (`TrainingMapper`) is a picklable object that carries every value it uses, and the
roidbs are sent to it by the parent. Only the builders at the bottom read the global config.
Spawn re-imports the parent's main script in each worker, so entry scripts must keep their
work under `if __name__ == '__main__':`. Horovod ranks use the same spawned workers (tensorpack
used threads there only because MPI breaks under fork).
"""
import collections
import itertools
import traceback

import numpy as np
from tabulate import tabulate

import utils.tf_compat  # noqa: F401  (configures TensorFlow before tensorpack imports it)
from tensorpack.dataflow import MapData, imgaug
from tensorpack.utils import logger

from common import (WORKER_FAILURE_KEY, CustomResize, SeededDataFromList, SpawnMultiProcessMapData,
                    UnreadableImageError, box_to_point4, filter_boxes_inside_shape, point4_to_box,
                    polygons_to_mask, read_image_bgr)
from utils import tensor_names
from utils.np_box_ops import area as np_area
from utils.np_box_ops import get_all_anchors, get_all_anchors_fpn
from utils.np_box_ops import ioa as np_ioa
from utils.np_box_ops import iou as np_iou

__all__ = ['MalformedData', 'AnchorLabelParams', 'get_anchor_labels', 'get_rpn_anchor_input',
           'get_multilevel_rpn_anchor_input', 'TrainingMapper', 'class_histogram_table',
           'get_train_dataflow', 'get_eval_dataflow']


class MalformedData(Exception):
    """A training sample that cannot be used; the mapper skips it with a warning."""


AnchorLabelParams = collections.namedtuple('AnchorLabelParams', [
    'batch_per_im',          # int, anchors sampled per image (over all levels)
    'fg_ratio',              # float, largest fraction of foreground among them
    'positive_thresh',       # float, IoU >= this: foreground
    'negative_thresh',       # float, IoU < this: background
    'crowd_overlap_thresh',  # float, ioa with a crowd box > this: ignored
])


# RPN anchor targets ------------------------------------------------------------------------
def _keep_at_most(labels, value, max_num, rng):
    """Relabel random entries equal to `value` as -1 until at most `max_num` remain; their indices."""
    indices = np.where(labels == value)[0]
    if len(indices) > max_num:
        kept = rng.choice(indices, size=max_num, replace=False)
        labels[indices] = -1
        labels[kept] = value
        indices = np.sort(kept)
    return indices


def get_anchor_labels(anchors, gt_boxes, crowd_boxes, params, rng):
    """Label anchors foreground / background / ignored and sample BATCH_PER_IM of them.

    Order (tensorpack's): every anchor that has the highest IoU with some gt box is fg; any
    anchor with IoU >= positive_thresh is fg; any with max IoU < negative_thresh is bg
    (overriding the first rule); fg/bg anchors covered by a crowd box with ioa >
    crowd_overlap_thresh are ignored; then at most batch_per_im * fg_ratio fg are kept and bg
    fill the rest of batch_per_im. Unlike tensorpack, a gt box that overlaps no anchor at all
    has no "best" anchors (its IoU ties at 0 would otherwise make arbitrary anchors fg).

    Args:
        anchors: float32 [A, 4] x1y1x2y2, all inside the image.
        gt_boxes: float32 [N, 4], non-crowd; N may be 0 (then no anchor is fg).
        crowd_boxes: float32 [C, 4].
        params: AnchorLabelParams.
        rng: np.random.Generator used for the sampling.
    Returns:
        labels int32 [A] in {1, 0, -1}; matched_gt_boxes float32 [A, 4] (zeros except for fg).
    Raises:
        MalformedData: no anchor is left as background.
    """
    num_anchors = len(anchors)
    labels = -np.ones((num_anchors,), dtype=np.int32)
    matched_gt_boxes = np.zeros((num_anchors, 4), dtype=np.float32)
    if num_anchors == 0:
        raise MalformedData("No anchor lies inside the image")
    if len(gt_boxes):
        ious = np_iou(gt_boxes, anchors)   # [N, A]: gt-major, so the reductions below are cheap
        best_gt_per_anchor = ious.argmax(axis=0)
        best_iou_per_anchor = ious.max(axis=0)
        best_iou_per_gt = ious.max(axis=1, keepdims=True)   # [N, 1]
        is_best_for_a_gt = ((ious == best_iou_per_gt) & (best_iou_per_gt > 0)).any(axis=0)
        labels[is_best_for_a_gt] = 1
        labels[best_iou_per_anchor >= params.positive_thresh] = 1
        labels[best_iou_per_anchor < params.negative_thresh] = 0
    else:
        labels[:] = 0

    if len(crowd_boxes):
        candidates = np.where(labels >= 0)[0]
        if len(candidates):
            crowd_overlap = np_ioa(crowd_boxes, anchors[candidates]).max(axis=0)
            labels[candidates[crowd_overlap > params.crowd_overlap_thresh]] = -1

    fg_indices = _keep_at_most(labels, 1, int(params.batch_per_im * params.fg_ratio), rng)
    if not np.any(labels == 0):
        raise MalformedData("No valid background anchor for the RPN")
    _keep_at_most(labels, 0, params.batch_per_im - len(fg_indices), rng)
    if len(fg_indices):
        matched_gt_boxes[fg_indices] = gt_boxes[best_gt_per_anchor[fg_indices]]
    return labels, matched_gt_boxes


def get_multilevel_rpn_anchor_input(image_shape_hw, boxes, is_crowd, anchor_grids, params, rng, inside=None):
    """Anchor targets of one image over several anchor grids, sampled jointly.

    Anchors not entirely inside the image are ignored (-1). FPN passes one grid per level, so
    BATCH_PER_IM counts anchors of all levels together.

    Args:
        image_shape_hw: (H, W) of the resized image.
        boxes: float32 [N, 4] x1y1x2y2 resized-image pixels, including crowd boxes.
        is_crowd: [N], nonzero for crowd boxes.
        anchor_grids: list of float32 [S_l, S_l, A_l, 4] (np_box_ops.get_all_anchors*).
        params, rng: see `get_anchor_labels`.
        inside: optional precomputed `filter_boxes_inside_shape(all anchors flattened, image_shape_hw)`.
    Returns:
        list over grids of (labels int32 [S_l, S_l, A_l], matched_gt_boxes float32 [S_l, S_l, A_l, 4]).
    """
    is_crowd = np.asarray(is_crowd)
    num_all_anchors = sum(grid.size // 4 for grid in anchor_grids)
    if inside is None:
        flat_anchors = np.concatenate([grid.reshape((-1, 4)) for grid in anchor_grids], axis=0)
        inside = filter_boxes_inside_shape(flat_anchors, image_shape_hw)
    inside_indices, inside_anchors = inside
    inside_labels, inside_gt_boxes = get_anchor_labels(
        inside_anchors, boxes[is_crowd == 0], boxes[is_crowd != 0], params, rng)

    all_labels = -np.ones((num_all_anchors,), dtype=np.int32)
    all_labels[inside_indices] = inside_labels
    all_gt_boxes = np.zeros((num_all_anchors, 4), dtype=np.float32)
    all_gt_boxes[inside_indices] = inside_gt_boxes

    outputs, start = [], 0
    for grid in anchor_grids:
        shape = grid.shape[:3]
        end = start + int(np.prod(shape))
        outputs.append((all_labels[start:end].reshape(shape), all_gt_boxes[start:end].reshape(shape + (4,))))
        start = end
    return outputs


def get_rpn_anchor_input(image_shape_hw, boxes, is_crowd, anchor_grid, params, rng):
    """Single-grid (C4) version of `get_multilevel_rpn_anchor_input`: one (labels, matched_gt_boxes)."""
    return get_multilevel_rpn_anchor_input(image_shape_hw, boxes, is_crowd, [anchor_grid], params, rng)[0]


# the per-image training map function --------------------------------------------------------
def anchor_input_entries(anchor_inputs, mode_fpn):
    """[(labels, boxes) per level] -> {input name: array}, named as the model reads them."""
    if not mode_fpn:
        labels, boxes = anchor_inputs[0]
        return {tensor_names.C4_ANCHOR_LABELS: labels, tensor_names.C4_ANCHOR_BOXES: boxes}
    entries = {}
    for level, (labels, boxes) in zip(tensor_names.FPN_LEVELS, anchor_inputs):
        entries[tensor_names.fpn_anchor_labels(level)] = labels
        entries[tensor_names.fpn_anchor_boxes(level)] = boxes
    return entries


def _derive_seed(*key):
    """A 32-bit seed from a tuple of ints (None entries draw fresh OS entropy)."""
    if any(k is None for k in key):
        return int(np.random.SeedSequence().generate_state(1)[0])
    return int(np.random.SeedSequence([int(k) for k in key]).generate_state(1)[0])


_MapperState = collections.namedtuple(
    '_MapperState', ['grids', 'flat_anchors', 'inside_by_shape', 'augmentors', 'sampling_rng'])


class TrainingMapper:
    """roidb dict -> training datapoint dict (see the module docstring), or None to skip.

    Picklable, holding only plain values, so it can run in spawned worker processes. Anchor
    grids, augmentors and the random stream are created on first use in each process. Samples
    that cannot be used (missing, corrupt or truncated image, degenerate boxes, no background
    anchor) are counted in `num_skipped` / `skip_reasons` and skipped with a warning; bad
    configuration or data that would make every sample fail raises instead, and so does an image
    whose size differs from the one its annotations record (ImageSizeMismatchError).
    """

    max_consecutive_skips = 200   # more in a row means the dataset or config is broken

    def __init__(self, *, mode_fpn, mode_mask, short_edge_size, max_size, absolute_coord, num_category,
                 anchor_stride, anchor_sizes, anchor_ratios, fpn_anchor_strides, anchor_params, seed):
        """Values of the config keys of the same names (MODE_*, PREPROC.TRAIN_SHORT_EDGE_SIZE,
        PREPROC.MAX_SIZE, DATA.*, RPN.ANCHOR_*, FPN.ANCHOR_STRIDES); `anchor_params` an
        AnchorLabelParams; `seed` an int, or None for a non-reproducible stream."""
        self.mode_fpn = bool(mode_fpn)
        self.mode_mask = bool(mode_mask)
        self.short_edge_size = tuple(short_edge_size) if not isinstance(short_edge_size, int) else short_edge_size
        self.max_size = max_size
        self.absolute_coord = bool(absolute_coord)
        self.num_category = int(num_category)
        self.anchor_stride = anchor_stride
        self.anchor_sizes = tuple(anchor_sizes)
        self.anchor_ratios = tuple(anchor_ratios)
        self.fpn_anchor_strides = tuple(fpn_anchor_strides)
        self.anchor_params = AnchorLabelParams(*anchor_params)
        self.seed = seed            # int or None; None: non-reproducible
        self.worker_index = None    # set by for_worker() in worker processes
        self.num_skipped = 0
        self.skip_reasons = collections.Counter()
        self._consecutive_skips = 0
        self._state = None          # a _MapperState, built in each process on first use

    def for_worker(self, index):
        """A copy for worker process `index`, with its own random stream."""
        mapper = TrainingMapper.__new__(TrainingMapper)
        mapper.__setstate__(self.__getstate__())
        mapper.worker_index = int(index)
        return mapper

    def __getstate__(self):
        state = dict(self.__dict__)
        state['_state'] = None   # rebuilt lazily; anchors are large and RNG state is per process
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)

    def _setup(self):
        """The per-process state: anchor grids, inside-anchor cache, augmentors, random streams."""
        if self._state is None:
            if self.mode_fpn:
                grids = get_all_anchors_fpn(self.fpn_anchor_strides, self.anchor_sizes, self.anchor_ratios,
                                            self.max_size)
            else:
                grids = [get_all_anchors(self.anchor_stride, self.anchor_sizes, self.anchor_ratios, self.max_size)]
            stream = 0 if self.worker_index is None else self.worker_index + 1
            augment_rng = np.random.RandomState(_derive_seed(self.seed, stream, 0))
            resize = CustomResize(self.short_edge_size, self.max_size)
            flip = imgaug.Flip(horiz=True)
            augmentors = imgaug.AugmentorList([resize, flip])   # (re)seeds them randomly, so set rng after
            resize.rng = flip.rng = augment_rng
            self._state = _MapperState(
                grids=grids, flat_anchors=np.concatenate([grid.reshape((-1, 4)) for grid in grids]),
                inside_by_shape={}, augmentors=augmentors,
                sampling_rng=np.random.default_rng(_derive_seed(self.seed, stream, 1)))
        return self._state

    def _inside_anchors(self, state, shape_hw):
        """filter_boxes_inside_shape of all anchors, cached per image shape (images often share one)."""
        if shape_hw not in state.inside_by_shape:
            if len(state.inside_by_shape) >= 16:
                state.inside_by_shape.clear()
            state.inside_by_shape[shape_hw] = filter_boxes_inside_shape(state.flat_anchors, shape_hw)
        return state.inside_by_shape[shape_hw]

    def __call__(self, roidb):
        try:
            datapoint = self._map(roidb)
        except (MalformedData, FileNotFoundError, UnreadableImageError) as err:
            return self._skip(roidb, err)
        except Exception:
            if self.worker_index is None:
                raise
            # An exception would kill the worker and leave the parent waiting forever;
            # send the traceback to the parent, which raises it.
            return {WORKER_FAILURE_KEY: traceback.format_exc()}
        self._consecutive_skips = 0
        return datapoint

    def _skip(self, roidb, err):
        self.num_skipped += 1
        self._consecutive_skips += 1
        self.skip_reasons[type(err).__name__] += 1
        where = '' if self.worker_index is None else ' (data worker {})'.format(self.worker_index)
        if self.num_skipped <= 20 or (self.num_skipped & (self.num_skipped - 1)) == 0:
            logger.warn("Skipped training image {}: {}. {} image(s) skipped so far{}.".format(
                roidb.get('file_name'), err, self.num_skipped, where))
        if self._consecutive_skips >= self.max_consecutive_skips:
            message = ("{} training images in a row could not be used{}; the last one, {}, because: {}. "
                       "Check the dataset and the config.").format(
                           self._consecutive_skips, where, roidb.get('file_name'), err)
            if self.worker_index is None:
                raise RuntimeError(message)
            return {WORKER_FAILURE_KEY: message}
        return None

    def _map(self, roidb):
        state = self._setup()
        file_name = roidb['file_name']
        boxes = np.array(roidb['boxes'], dtype=np.float32).reshape((-1, 4))
        labels = np.asarray(roidb['class']).reshape((-1,))
        is_crowd = np.asarray(roidb['is_crowd']).reshape((-1,))
        if not len(boxes) == len(labels) == len(is_crowd):
            raise ValueError("roidb of {}: {} boxes, {} classes, {} is_crowd flags; they must match".format(
                file_name, len(boxes), len(labels), len(is_crowd)))
        non_crowd_labels = labels[is_crowd == 0]
        if len(non_crowd_labels) and (non_crowd_labels.min() < 1 or non_crowd_labels.max() > self.num_category):
            raise ValueError("roidb of {} has class ids {}; they must be in 1..{} (DATA.NUM_CATEGORY)".format(
                file_name, sorted(set(non_crowd_labels.tolist())), self.num_category))

        image = read_image_bgr(file_name, expected_hw=recorded_size(roidb)).astype(np.float32)
        height, width = image.shape[:2]
        scale_xy = np.asarray([width, height], dtype=np.float32)
        if not self.absolute_coord:
            boxes = boxes * np.tile(scale_xy, 2)

        transform = state.augmentors.get_transform(image)
        image = transform.apply_image(image)
        boxes = point4_to_box(transform.apply_coords(box_to_point4(boxes))).astype(np.float32)
        if len(boxes) and np.min(np_area(boxes)) <= 0:
            raise MalformedData("some boxes have zero area")

        anchor_inputs = get_multilevel_rpn_anchor_input(
            image.shape[:2], boxes, is_crowd, state.grids, self.anchor_params, state.sampling_rng,
            inside=self._inside_anchors(state, image.shape[:2]))
        datapoint = {tensor_names.IMAGE: image}
        datapoint.update(anchor_input_entries(anchor_inputs, self.mode_fpn))
        datapoint[tensor_names.GT_BOXES] = boxes[is_crowd == 0]
        datapoint[tensor_names.GT_LABELS] = non_crowd_labels.astype(np.int64)
        if self.mode_mask:
            datapoint[tensor_names.GT_MASKS_PACKED] = self._packed_masks(
                roidb, is_crowd, transform, scale_xy, image.shape[:2])
        return datapoint

    def _packed_masks(self, roidb, is_crowd, transform, scale_xy, image_shape_hw):
        """uint8 [N, H, ceil(W / 8)]: the non-crowd polygons, transformed like the image, as packed bits.

        An image without non-crowd instances needs no polygons: a split of negatives only may
        come from a json without any segmentation (then its roidbs have no 'segmentation').
        """
        height, width = image_shape_hw
        padded_width = int(np.ceil(width / 8.0) * 8)   # a whole number of bytes per row
        num_objects = int(np.sum(is_crowd == 0))
        if 'segmentation' not in roidb:
            if num_objects == 0:
                return np.zeros((0, height, padded_width // 8), dtype=np.uint8)
            raise ValueError("MODE_MASK=True but the roidb of {} has {} object(s) and no 'segmentation' (its "
                             "dataset has no masks); use a dataset with masks or set MODE_MASK=False".format(
                                 roidb['file_name'], num_objects))
        masks = []
        for polygons, crowd in zip(roidb['segmentation'], is_crowd):
            if crowd:
                continue
            if not polygons:
                raise MalformedData("a non-crowd instance has no polygon")
            points = []
            for polygon in polygons:
                polygon = np.array(polygon, dtype=np.float32).reshape((-1, 2))   # a copy: transformed in place
                if not self.absolute_coord:
                    polygon *= scale_xy
                points.append(transform.apply_coords(polygon))
            masks.append(polygons_to_mask(points, height, padded_width))
        if not masks:
            return np.zeros((0, height, padded_width // 8), dtype=np.uint8)
        return np.packbits(np.asarray(masks, dtype=np.uint8), axis=-1)


# builders: the only readers of the global config -----------------------------------------
def class_histogram_table(roidbs, class_names):
    """A table (str) of non-crowd instances per class; class_names[0] is the background."""
    counts = np.zeros((len(class_names),), dtype=np.int64)
    for roidb in roidbs:
        labels = np.asarray(roidb['class'], dtype=np.int64)[np.asarray(roidb['is_crowd']) == 0]
        counts += np.bincount(labels, minlength=len(class_names))[:len(class_names)]
    cells = list(itertools.chain.from_iterable((name, int(n)) for name, n in zip(class_names[1:], counts[1:])))
    cells += ['total', int(counts[1:].sum())]
    columns = min(6, len(cells))
    cells += [None] * ((-len(cells)) % columns)
    rows = [cells[i:i + columns] for i in range(0, len(cells), columns)]
    return tabulate(rows, headers=['class', '#box'] * (columns // 2), tablefmt='pipe',
                    stralign='center', numalign='left')


def _mapper_from_config(cfg, rank):
    seed = None if cfg.DATA.SEED is None else _derive_seed(cfg.DATA.SEED, rank)
    return TrainingMapper(
        mode_fpn=cfg.MODE_FPN, mode_mask=cfg.MODE_MASK,
        short_edge_size=cfg.derived.train_short_edge_size, max_size=cfg.derived.max_size,
        absolute_coord=cfg.DATA.ABSOLUTE_COORD, num_category=cfg.DATA.NUM_CATEGORY,
        anchor_stride=cfg.RPN.ANCHOR_STRIDE, anchor_sizes=cfg.RPN.ANCHOR_SIZES,
        anchor_ratios=cfg.RPN.ANCHOR_RATIOS, fpn_anchor_strides=cfg.FPN.ANCHOR_STRIDES,
        anchor_params=AnchorLabelParams(
            batch_per_im=cfg.RPN.BATCH_PER_IM, fg_ratio=cfg.RPN.FG_RATIO,
            positive_thresh=cfg.RPN.POSITIVE_ANCHOR_THRESH, negative_thresh=cfg.RPN.NEGATIVE_ANCHOR_THRESH,
            crowd_overlap_thresh=cfg.RPN.CROWD_OVERLAP_THRESH),
        seed=seed)


def get_train_dataflow(rank=0):
    """The training DataFlow over the concatenated DATA.TRAIN splits (after finalize_configs).

    Args:
        rank: this process's rank under Horovod (0 otherwise); ranks read different
            shuffling and augmentation streams derived from DATA.SEED.
    Returns:
        a DataFlow of dicts (module docstring). With DATA.NUM_WORKERS=0 one pass is one epoch
        in an order fixed by DATA.SEED; with workers it is endless and its order varies.
    """
    from config import config as cfg
    from dataset import DatasetRegistry

    roidbs = list(itertools.chain.from_iterable(DatasetRegistry.get(name).training_roidbs()
                                                for name in cfg.derived.train_splits))
    logger.info("Ground-truth instances per class:\n" + class_histogram_table(roidbs, cfg.DATA.CLASS_NAMES))
    num_images = len(roidbs)
    if cfg.DATA.FILTER_EMPTY_ANNOTATIONS:
        roidbs = [roidb for roidb in roidbs if np.any(np.asarray(roidb['is_crowd']) == 0)]
    logger.info("Filtered {} images which contain no non-crowd groundtruth boxes. Total #images for training: {}"
                .format(num_images - len(roidbs), len(roidbs)))
    if not roidbs:
        raise ValueError("No training images left in DATA.TRAIN={} (DATA.FILTER_EMPTY_ANNOTATIONS={})".format(
            cfg.derived.train_splits, cfg.DATA.FILTER_EMPTY_ANNOTATIONS))

    shuffle_seed = None if cfg.DATA.SEED is None else _derive_seed(cfg.DATA.SEED, rank, 1 << 20)
    ds = SeededDataFromList(roidbs, shuffle=True, seed=shuffle_seed)
    mapper = _mapper_from_config(cfg, rank)
    num_workers = cfg.DATA.NUM_WORKERS
    if num_workers < 0:
        raise ValueError("DATA.NUM_WORKERS={} must be >= 0".format(num_workers))
    if num_workers == 0:
        return MapData(ds, mapper)
    # Horovod runs one dataflow per rank, so each needs a smaller buffer (as in tensorpack).
    buffer_size = num_workers * (10 if cfg.TRAINER == 'horovod' else 20)
    return SpawnMultiProcessMapData(ds, num_workers, mapper, buffer_size=buffer_size)


def _shard_range(num_items, shard, num_shards):
    """[begin, end) of contiguous shard `shard`; the last shard takes the remainder."""
    if not 0 <= shard < num_shards:
        raise ValueError("shard={} must be in [0, num_shards={})".format(shard, num_shards))
    per_shard = num_items // num_shards
    end = (shard + 1) * per_shard if shard + 1 < num_shards else num_items
    return shard * per_shard, end


def get_eval_dataflow(name, shard=0, num_shards=1):
    """A DataFlow of [image uint8 [H, W, 3] BGR, image_id] over a contiguous shard of split `name`.

    Images are not resized. An unreadable or truncated image raises FileNotFoundError /
    UnreadableImageError naming the file, and one whose size differs from the roidb's
    height/width raises ImageSizeMismatchError: an evaluation must not silently drop images.
    """
    from dataset import DatasetRegistry

    roidbs = DatasetRegistry.get(name).inference_roidbs()
    begin, end = _shard_range(len(roidbs), shard, num_shards)
    logger.info("Found {} images for inference in {}; shard {}/{} has images [{}, {}).".format(
        len(roidbs), name, shard, num_shards, begin, end))
    ds = SeededDataFromList([[roidb['file_name'], roidb['image_id'], recorded_size(roidb)]
                             for roidb in roidbs[begin:end]], shuffle=False)
    return MapData(ds, _read_eval_image)


def _read_eval_image(datapoint):
    file_name, image_id, size_hw = datapoint
    return [read_image_bgr(file_name, expected_hw=size_hw), image_id]


def recorded_size(roidb):
    """(height, width) a roidb records for its image, or None if it records none."""
    if roidb.get('height') is None or roidb.get('width') is None:
        return None
    return int(roidb['height']), int(roidb['width'])
