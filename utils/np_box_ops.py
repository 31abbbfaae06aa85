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


def _center_form_anchors(widths, heights, x_center, y_center):
    """Integer-box anchors (x2 inclusive) of the given sizes around one centre -> [K, 4]."""
    half_w = 0.5 * (np.asarray(widths, dtype=np.float64) - 1)
    half_h = 0.5 * (np.asarray(heights, dtype=np.float64) - 1)
    return np.stack([x_center - half_w, y_center - half_h,
                     x_center + half_w, y_center + half_h], axis=1)


def generate_cell_anchors(stride, sizes, ratios):
    """Anchors of the feature-map cell (0, 0), in Detectron's integer-box form.

    The reference window is the integer box [0, stride - 1]^2 (centre
    (stride - 1) / 2). For each ratio (height / width) its area stride^2 is
    reshaped to width round(sqrt(stride^2 / ratio)), height round(width * ratio),
    then each such window is scaled by size / stride. Rounding uses numpy's
    round-half-to-even, as the original code did; the results therefore have only
    approximately the sqrt-area `sizes` for ratios other than 1.

    Args:
        stride: int, feature-map stride in pixels.
        sizes: sequence of anchor sizes (sqrt of the area before rounding), pixels.
        ratios: sequence of aspect ratios height / width.
    Returns:
        float32 [A, 4], A = len(ratios) * len(sizes), ordered ratio-major
        (index = ratio_index * len(sizes) + size_index). Integer boxes: x2, y2 are
        the last covered pixel, so the float box is obtained by adding 1 to x2, y2.
    """
    if stride <= 0:
        raise ValueError("Anchor stride must be positive, got {}".format(stride))
    if len(sizes) == 0 or len(ratios) == 0:
        raise ValueError("Anchor sizes and ratios must be non-empty, got {} and {}".format(sizes, ratios))
    ratios = np.asarray(ratios, dtype=np.float64)
    scales = np.asarray(sizes, dtype=np.float64) / stride
    center = 0.5 * (stride - 1)
    ratio_widths = np.round(np.sqrt(stride * stride / ratios))
    ratio_heights = np.round(ratio_widths * ratios)
    anchors = []
    for width, height in zip(ratio_widths, ratio_heights):
        anchors.append(_center_form_anchors(width * scales, height * scales, center, center))
    return np.concatenate(anchors, axis=0).astype(np.float32)


def get_all_anchors(stride, sizes, ratios, max_size):
    """Float-box anchors of every cell of the largest possible feature map.

    Cell (i, j) holds the cell anchors shifted by (j * stride, i * stride); with
    the +1 that turns integer boxes into float boxes, the anchors of cell (0, 0)
    are centred on (stride / 2, stride / 2).

    Args:
        stride: int, feature-map stride in pixels.
        sizes, ratios: see `generate_cell_anchors`.
        max_size: int, the largest image side (PREPROC.MAX_SIZE), pixels.
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
    anchors[..., 2:] += 1
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
