"""The per-image training map function: roidb -> training datapoint (see data.py's docstring).

It runs in the trainer or in spawned worker processes (utils/workers.py), which see neither the
parent's config nor its dataset registry: a `TrainingMapper` is a picklable object holding every
value it uses, built from a `MapperParams` record and a seed.
"""
import collections
import traceback

import cv2
import numpy as np

import utils.tf_compat  # noqa: F401  (configures TensorFlow before tensorpack imports it)
from tensorpack.dataflow import imgaug
from tensorpack.utils import logger

from dataflow.anchor_targets import (AnchorLabelParams, MalformedData, anchor_input_entries, feature_map_hw,
                                     get_multilevel_rpn_anchor_input, labelled_region_hw)
from dataflow.geometry import box_to_point4, filter_boxes_inside_shape, point4_to_box, polygons_to_mask
from dataflow.image_io import UnreadableImageError, read_image_bgr, recorded_size
from dataflow.resize import CustomResize
from utils import tensor_names
from utils.np_box_ops import area as np_area
from utils.np_box_ops import anchor_grids
from utils.workers import WORKER_FAILURE_KEY

__all__ = ['MapperParams', 'derive_seed', 'TrainingMapper']

MapperParams = collections.namedtuple('MapperParams', [
    'mode_fpn', 'mode_mask',                 # MODE_FPN, MODE_MASK
    'short_edge_size', 'max_size',           # PREPROC.TRAIN_SHORT_EDGE_SIZE, PREPROC.MAX_SIZE
    'absolute_coord', 'num_category',        # DATA.ABSOLUTE_COORD, DATA.NUM_CATEGORY
    'anchor_stride', 'anchor_sizes', 'anchor_ratios',   # RPN.ANCHOR_*
    'fpn_anchor_strides',                    # FPN.ANCHOR_STRIDES
    'anchor_params',                         # an AnchorLabelParams (RPN.*)
    'resolution_requirement',                # FPN.RESOLUTION_REQUIREMENT (FPN only; None for C4)
    'apply_exif_orientation',                # DATA.EXIF_ORIENTATION == 'apply'
], defaults=(None, True))
MapperParams.__doc__ = "The keyword arguments of TrainingMapper besides `seed`, as one frozen record."


def derive_seed(*key):
    """A 32-bit seed from a tuple of ints (None entries draw fresh OS entropy)."""
    if any(k is None for k in key):
        return int(np.random.SeedSequence().generate_state(1)[0])
    return int(np.random.SeedSequence([int(k) for k in key]).generate_state(1)[0])


_MapperState = collections.namedtuple(
    '_MapperState', ['grids', 'strides', 'anchors_by_shape', 'augmentors', 'sampling_rng'])

# The anchors of one image shape: per level the grid of cells to label and the (fH, fW) kept of
# them, and filter_boxes_inside_shape of those anchors, flattened and concatenated.
_ShapeAnchors = collections.namedtuple('_ShapeAnchors', ['grids', 'feature_hw', 'inside'])


def _round_to_uint8(image):
    """float32 image -> uint8, each value rounded to the nearest integer (ties to even) and clipped to
    0..255, so it moves by at most 0.5. Overwrites `image` (the mapper's own array)."""
    # Saturating conversion of |x| with rounding as np.rint, after the negative values became 0:
    # the same as np.clip(np.rint(image), 0, 255), in half the time.
    return cv2.convertScaleAbs(np.maximum(image, 0, out=image))


class TrainingMapper:
    """roidb dict -> training datapoint dict (see data.py's docstring), or None to skip.

    The image is sent as uint8 (resized and flipped in float32, then rounded): a quarter of the
    bytes to pickle from a worker; dataflow/build.py turns it back into float32. Anchor targets
    cover exactly the cells of the image's own feature maps (`feature_map_hw`), which hold the
    same values as the MAX_SIZE canvas cropped to them.

    Picklable, holding only plain values, so it can run in spawned worker processes. Anchor
    grids, augmentors and the random stream are created on first use in each process. Samples
    that cannot be used (missing, corrupt or truncated image, degenerate boxes, no background
    anchor) are counted in `num_skipped` / `skip_reasons` and skipped with a warning; bad
    configuration or data that would make every sample fail raises instead, and so does an image
    whose size differs from the one its annotations record (ImageSizeMismatchError).
    """

    max_consecutive_skips = 200   # more in a row means the dataset or config is broken

    def __init__(self, *, mode_fpn, mode_mask, short_edge_size, max_size, absolute_coord, num_category,
                 anchor_stride, anchor_sizes, anchor_ratios, fpn_anchor_strides, anchor_params, seed,
                 resolution_requirement=None, apply_exif_orientation=True):
        """Values of the config keys of the same names (MODE_*, PREPROC.TRAIN_SHORT_EDGE_SIZE,
        PREPROC.MAX_SIZE, DATA.*, RPN.ANCHOR_*, FPN.ANCHOR_STRIDES, FPN.RESOLUTION_REQUIREMENT,
        which FPN needs, DATA.EXIF_ORIENTATION == 'apply'); `anchor_params` an AnchorLabelParams;
        `seed` an int, or None for a non-reproducible stream."""
        if mode_fpn and not resolution_requirement:
            raise ValueError("MODE_FPN=True needs resolution_requirement (FPN.RESOLUTION_REQUIREMENT), got {!r}"
                             .format(resolution_requirement))
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
        self.resolution_requirement = int(resolution_requirement) if self.mode_fpn else None
        self.apply_exif_orientation = bool(apply_exif_orientation)
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
        """The per-process state: anchor grids, per-shape anchor cache, augmentors, random streams."""
        if self._state is None:
            strides = self.fpn_anchor_strides if self.mode_fpn else (self.anchor_stride,)
            grids = anchor_grids(self.mode_fpn, self.anchor_stride, self.fpn_anchor_strides, self.anchor_sizes,
                                 self.anchor_ratios, self.max_size)
            stream = 0 if self.worker_index is None else self.worker_index + 1
            augment_rng = np.random.RandomState(derive_seed(self.seed, stream, 0))
            resize = CustomResize(self.short_edge_size, self.max_size)
            flip = imgaug.Flip(horiz=True)
            augmentors = imgaug.AugmentorList([resize, flip])   # (re)seeds them randomly, so set rng after
            resize.rng = flip.rng = augment_rng
            self._state = _MapperState(
                grids=grids, strides=tuple(strides), anchors_by_shape={}, augmentors=augmentors,
                sampling_rng=np.random.default_rng(derive_seed(self.seed, stream, 1)))
        return self._state

    def _shape_anchors(self, state, shape_hw):
        """The _ShapeAnchors of an image shape, cached (images often share one)."""
        if shape_hw not in state.anchors_by_shape:
            if len(state.anchors_by_shape) >= 16:
                state.anchors_by_shape.clear()
            grids, feature_hws = [], []
            for grid, stride in zip(state.grids, state.strides):
                feature_hw = feature_map_hw(shape_hw, stride, self.resolution_requirement)
                rows, cols = labelled_region_hw(grid, shape_hw, feature_hw)
                grids.append(grid[:rows, :cols])
                feature_hws.append(feature_hw)
            flat_anchors = np.concatenate([grid.reshape((-1, 4)) for grid in grids])
            state.anchors_by_shape[shape_hw] = _ShapeAnchors(
                grids, feature_hws, filter_boxes_inside_shape(flat_anchors, shape_hw))
        return state.anchors_by_shape[shape_hw]

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

        image = read_image_bgr(file_name, expected_hw=recorded_size(roidb),
                               apply_exif_orientation=self.apply_exif_orientation).astype(np.float32)
        height, width = image.shape[:2]
        scale_xy = np.asarray([width, height], dtype=np.float32)
        if not self.absolute_coord:
            boxes = boxes * np.tile(scale_xy, 2)

        transform = state.augmentors.get_transform(image)
        image = transform.apply_image(image)
        boxes = point4_to_box(transform.apply_coords(box_to_point4(boxes))).astype(np.float32)
        if len(boxes) and np.min(np_area(boxes)) <= 0:
            raise MalformedData("some boxes have zero area")

        anchors = self._shape_anchors(state, image.shape[:2])
        anchor_inputs = get_multilevel_rpn_anchor_input(
            image.shape[:2], boxes, is_crowd, anchors.grids, self.anchor_params, state.sampling_rng,
            inside=anchors.inside)
        anchor_inputs = [(np.ascontiguousarray(labels[:fh, :fw]), np.ascontiguousarray(gt_boxes[:fh, :fw]))
                         for (labels, gt_boxes), (fh, fw) in zip(anchor_inputs, anchors.feature_hw)]
        datapoint = {tensor_names.IMAGE: _round_to_uint8(image)}
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
