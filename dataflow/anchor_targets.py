"""RPN anchor targets in numpy: label every anchor foreground / background / ignored, sample a
fixed number of them, and name the result as the model's inputs.

Shape shorthand: A anchors, N gt boxes, C crowd boxes, S_l x S_l anchor cells of level l with
A_l anchors each (the MAX_SIZE canvas), fH_l x fW_l the cells of one image's feature map.
Boxes are x1y1x2y2 floats in pixels of the resized image.
"""
import collections

import numpy as np

from dataflow.geometry import filter_boxes_inside_shape
from utils import tensor_names
from utils.np_box_ops import ioa as np_ioa
from utils.np_box_ops import iou as np_iou

__all__ = ['MalformedData', 'AnchorLabelParams', 'match_to_best_gt', 'get_anchor_labels',
           'get_multilevel_rpn_anchor_input', 'anchor_input_entries', 'feature_map_hw', 'labelled_region_hw']


class MalformedData(Exception):
    """A training sample that cannot be used; the mapper skips it with a warning."""


AnchorLabelParams = collections.namedtuple('AnchorLabelParams', [
    'batch_per_im',          # int, anchors sampled per image (over all levels)
    'fg_ratio',              # float, largest fraction of foreground among them
    'positive_thresh',       # float, IoU >= this: foreground
    'negative_thresh',       # float, IoU < this: background
    'crowd_overlap_thresh',  # float, ioa with a crowd box > this: ignored
])


def match_to_best_gt(ious, fg_thresh):
    """Match each box to the gt box it overlaps most; it is foreground if that IoU >= `fg_thresh`.

    Args:
        ious: float [N, B], IoU of gt n with box b (gt-major, so the reductions are cheap); N >= 1.
        fg_thresh: float.
    Returns:
        (best gt index int [B], best IoU float [B], is foreground bool [B]).
    """
    best_iou = ious.max(axis=0)
    return ious.argmax(axis=0), best_iou, best_iou >= fg_thresh


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
        best_gt_per_anchor, best_iou_per_anchor, is_fg = match_to_best_gt(ious, params.positive_thresh)
        best_iou_per_gt = ious.max(axis=1, keepdims=True)   # [N, 1]
        is_best_for_a_gt = ((ious == best_iou_per_gt) & (best_iou_per_gt > 0)).any(axis=0)
        labels[is_best_for_a_gt] = 1
        labels[is_fg] = 1
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


def feature_map_hw(image_hw, stride, resolution_requirement=None):
    """(fH, fW): the spatial size of the model's feature map of stride `stride` for an H x W image.

    FPN (`resolution_requirement` R given): the graph zero-pads the image to Hp = ceil(H / R) * R
    (likewise W); levels of stride <= R then have Hp / stride cells, and p6 (p5[::2]) has
    ceil(Hp / 64). C4 (R None): each of the backbone's four stride-2 layers (conv0, pool0, the
    first blocks of group1 and group2) maps a size h to floor(h / 2) with tensorpack's padding
    and odd-size cropping, so the stride-16 map has floor(H / 16) cells.
    """
    height, width = (int(v) for v in image_hw)
    if resolution_requirement is None:
        return height // stride, width // stride
    padded = [-(-side // resolution_requirement) * resolution_requirement for side in (height, width)]
    return tuple(-(-side // stride) for side in padded)


def labelled_region_hw(grid, image_hw, feature_hw):
    """(rows, cols) of `grid` to label so that the result equals labelling the whole canvas.

    Anchors not inside the image take no part in the labelling or sampling, so it suffices to
    label the rows/columns that hold an anchor inside the image, and at least the feature map
    (fH, fW) whose targets are kept. C4 feature maps round down, so a few inside anchors may lie
    just below / right of them: they are labelled (and sampled, as on the whole canvas) and then
    dropped, as the graph has always dropped them.

    grid: float32 [S, S, A, 4] (np_box_ops.get_all_anchors); rows shift y, columns shift x.
    """
    height, width = image_hw
    field_rows, field_cols = grid.shape[:2]
    if feature_hw[0] > field_rows or feature_hw[1] > field_cols:
        raise ValueError("A feature map of {} cells for an image of {} exceeds the anchor grid of {} cells; "
                         "the image is larger than PREPROC.MAX_SIZE allows".format(
                             tuple(feature_hw), tuple(image_hw), (field_rows, field_cols)))
    # The bottom (right) edge of each row's (column's) lowest anchor, monotone in the row.
    rows_fitting = np.count_nonzero(grid[:, 0, :, 3].min(axis=1) <= height)
    cols_fitting = np.count_nonzero(grid[0, :, :, 2].min(axis=1) <= width)
    return max(feature_hw[0], rows_fitting), max(feature_hw[1], cols_fitting)


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
