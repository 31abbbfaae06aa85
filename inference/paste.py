"""Pasting a box's mask probabilities into a binary mask of the whole image (numpy, no TensorFlow).

Shape shorthand: M mask resolution (28 with FPN, 14 with C4), H, W image size. Boxes are
continuous x1y1x2y2 floats in image pixels (pixel i covers [i, i+1)).
"""
import math

import cv2
import numpy as np

__all__ = ['paste_mask']


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
