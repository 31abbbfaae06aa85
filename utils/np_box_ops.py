"""Numpy box geometry: areas, overlaps, clipping and the anchor grids.

Used by the dataflow (anchor targets) and as the independent oracle that the
TensorFlow box ops in `modeling/model_box.py` are tested against.

Shape shorthand: N, M boxes; A anchors per feature-map cell; S cells per side
of the largest anchor grid (S = ceil(max_size / stride)).

Box model: boxes are continuous x1y1x2y2 floats; pixel i covers [i, i + 1), so
a box's width is x2 - x1 (no +1) and the image of size (h, w) is [0, w] x [0, h].
"""
import numpy as np


def area(boxes):
    """Areas of `boxes`: float32 [N, 4] x1y1x2y2 -> [N]."""
    boxes = np.asarray(boxes)
    return (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])


def intersection(boxes1, boxes2):
    """Pairwise intersection areas of [N, 4] and [M, 4] x1y1x2y2 boxes -> [N, M]."""
    boxes1, boxes2 = np.asarray(boxes1), np.asarray(boxes2)
    # in-place ops: the dataflow calls this with M in the hundreds of thousands (anchors)
    widths = np.minimum(boxes1[:, None, 2], boxes2[None, :, 2])
    widths -= np.maximum(boxes1[:, None, 0], boxes2[None, :, 0])
    np.maximum(widths, 0, out=widths)
    heights = np.minimum(boxes1[:, None, 3], boxes2[None, :, 3])
    heights -= np.maximum(boxes1[:, None, 1], boxes2[None, :, 1])
    np.maximum(heights, 0, out=heights)
    widths *= heights
    return widths


def _safe_divide(numerator, denominator):
    """numerator / denominator, 0 where the denominator is not positive."""
    return np.divide(numerator, denominator, out=np.zeros_like(numerator), where=denominator > 0)


def iou(boxes1, boxes2):
    """Pairwise intersection-over-union of [N, 4] and [M, 4] x1y1x2y2 boxes -> [N, M].

    Pairs whose union is empty (two zero-area boxes) get 0 instead of NaN.
    """
    inter = intersection(boxes1, boxes2)
    union = area(boxes1)[:, None] + area(boxes2)[None, :]
    union -= inter
    return _safe_divide(inter, union)


def ioa(boxes1, boxes2):
    """Pairwise intersection over the area of the *second* argument -> [N, M].

    ioa(crowd_boxes, anchors)[i, j] is the fraction of anchor j covered by crowd
    region i. Not symmetric. Zero-area boxes in `boxes2` get 0.
    """
    inter = intersection(boxes1, boxes2)
    return _safe_divide(inter, np.broadcast_to(area(boxes2)[None, :], inter.shape))


def clip_boxes(boxes, shape_hw):
    """Clip x1y1x2y2 boxes [..., 4] into the image [0, w] x [0, h]; returns a new array."""
    h, w = shape_hw
    boxes = np.array(boxes, copy=True)
    boxes[..., [0, 2]] = np.clip(boxes[..., [0, 2]], 0, w)
    boxes[..., [1, 3]] = np.clip(boxes[..., [1, 3]], 0, h)
    return boxes


def generate_cell_anchors(stride, sizes, ratios):
    """Anchors of the feature-map cell (0, 0), centred on the origin (as tensorpack and detectron2).

    Each anchor has sqrt-area exactly `size` and height / width exactly `ratio`:
    width = sqrt(size^2 / ratio), height = ratio * width. No rounding, no +1.

    Args:
        stride: int, feature-map stride in pixels (only validated here; the grid uses it).
        sizes: sequence of anchor sizes (sqrt of the area), pixels.
        ratios: sequence of aspect ratios height / width.
    Returns:
        float32 [A, 4], A = len(sizes) * len(ratios), ordered size-major
        (index = size_index * len(ratios) + ratio_index), the channel order of the RPN head.
    """
    if stride <= 0:
        raise ValueError("Anchor stride must be positive, got {}".format(stride))
    if len(sizes) == 0 or len(ratios) == 0:
        raise ValueError("Anchor sizes and ratios must be non-empty, got {} and {}".format(sizes, ratios))
    sizes = np.asarray(sizes, dtype=np.float64)[:, None]
    ratios = np.asarray(ratios, dtype=np.float64)[None, :]
    widths = np.sqrt(sizes * sizes / ratios)      # [num_sizes, num_ratios]
    heights = ratios * widths
    half = 0.5 * np.stack([widths, heights], axis=-1).reshape(-1, 2)
    return np.concatenate([-half, half], axis=1).astype(np.float32)


def get_all_anchors(stride, sizes, ratios, max_size):
    """Anchors of every cell of the largest possible feature map.

    Cell (i, j) holds the cell anchors shifted by (j * stride, i * stride), so the anchors of
    cell (0, 0) are centred on the image origin, as in tensorpack's example.

    Args:
        stride: int, feature-map stride in pixels.
        sizes, ratios: see `generate_cell_anchors`.
        max_size: the largest image side (PREPROC.MAX_SIZE), pixels.
    Returns:
        float32 [S, S, A, 4], x1y1x2y2 image pixels, S = ceil(max_size / stride);
        indexed [row (y), column (x), anchor].
    """
    cell_anchors = generate_cell_anchors(stride, sizes, ratios).astype(np.float64)
    field_size = int(np.ceil(max_size / stride))
    shifts = np.arange(field_size, dtype=np.float64) * stride
    shift_x, shift_y = np.meshgrid(shifts, shifts)  # [S, S] each, indexed [y, x]
    shifts = np.stack([shift_x, shift_y, shift_x, shift_y], axis=-1)  # [S, S, 4]
    anchors = shifts[:, :, None, :] + cell_anchors[None, None, :, :]
    return anchors.astype(np.float32)


def get_all_anchors_fpn(strides, sizes, ratios, max_size):
    """Anchors of each FPN level: one size per level, paired with `strides` in order.

    Returns:
        list over levels of float32 [S_l, S_l, len(ratios), 4] (see `get_all_anchors`).
    """
    if len(strides) != len(sizes):
        raise ValueError("FPN needs one anchor size per stride: got strides {} and sizes {}".format(
            tuple(strides), tuple(sizes)))
    return [get_all_anchors(stride, (size,), ratios, max_size) for stride, size in zip(strides, sizes)]


def anchor_grids(mode_fpn, anchor_stride, fpn_anchor_strides, sizes, ratios, max_size):
    """The anchor grids of a model over the MAX_SIZE canvas: one per FPN level, or C4's one.

    mode_fpn: bool; anchor_stride: C4's stride; fpn_anchor_strides: one stride per level.
    Returns a list of float32 [S_l, S_l, A_l, 4] (see `get_all_anchors`).
    """
    if mode_fpn:
        return get_all_anchors_fpn(fpn_anchor_strides, sizes, ratios, max_size)
    return [get_all_anchors(anchor_stride, sizes, ratios, max_size)]
