"""Mask pasting of inference/paste.py against a pixel-by-pixel oracle."""
import math

import numpy as np
import pytest

from inference.paste import paste_mask


def reference_accurate_paste(box, mask, shape_hw):
    """Pixel-by-pixel oracle of tensorpack's accurate paste.

    Pad the mask with one ring of zeros, enlarge the box about its centre by (M + 2) / M so
    the padded cells keep the original cell size, put padded cell j's value at j + 0.5 in
    padded-mask units, interpolate bilinearly (0 outside the outermost centres) at each pixel
    centre and threshold at 0.5.
    """
    size = mask.shape[0]
    padded = np.pad(mask.astype(np.float64), 1)
    x1, y1, x2, y2 = box
    half_w = (x2 - x1) / 2 * (size + 2) / size
    half_h = (y2 - y1) / 2 * (size + 2) / size
    cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
    left, top = cx - half_w, cy - half_h
    out = np.zeros(shape_hw, dtype=np.uint8)
    for row in range(shape_hw[0]):
        for col in range(shape_hw[1]):
            u = (col + 0.5 - left) / (2 * half_w) * (size + 2)
            v = (row + 0.5 - top) / (2 * half_h) * (size + 2)
            if not (0.5 <= u <= size + 1.5 and 0.5 <= v <= size + 1.5):
                continue
            j = min(int(math.floor(u - 0.5)), size)   # left grid point, keep j + 1 in range
            i = min(int(math.floor(v - 0.5)), size)
            fx, fy = u - 0.5 - j, v - 0.5 - i
            value = ((1 - fy) * ((1 - fx) * padded[i, j] + fx * padded[i, j + 1])
                     + fy * ((1 - fx) * padded[i + 1, j] + fx * padded[i + 1, j + 1]))
            out[row, col] = value >= 0.5
    return out


SHAPE_HW = (30, 40)
ORACLE_BOXES = {
    'inside': (3.0, 4.0, 20.0, 15.0),
    'outside_top_left': (-5.3, -2.7, 10.2, 8.9),
    'outside_bottom_right': (31.0, 22.0, 47.5, 36.0),
    'one_pixel': (7.0, 7.0, 8.0, 8.0),
    'fractional': (2.25, 3.75, 17.6, 9.1),
}


@pytest.mark.parametrize('name', sorted(ORACLE_BOXES))
@pytest.mark.parametrize('mask_size', [5, 14])
def test_accurate_paste_matches_pixel_oracle(name, mask_size):
    rng = np.random.RandomState(mask_size)
    mask = rng.uniform(size=(mask_size, mask_size)).astype(np.float32)
    box = np.array(ORACLE_BOXES[name], dtype=np.float32)
    expected = reference_accurate_paste(box.astype(np.float64), mask, SHAPE_HW)
    got = paste_mask(box, mask, SHAPE_HW, accurate=True)
    assert got.dtype == np.uint8 and got.shape == SHAPE_HW
    np.testing.assert_array_equal(got, expected)


def test_accurate_paste_of_full_mask_is_the_box():
    # All-ones mask, cells 2 px wide and 1 px high: along y every pixel centre is a cell centre
    # (value 1); along x the value falls from 1 at the outer cell centres to 0 one cell further
    # out, crossing 0.5 exactly on the box edge. So exactly the pixels inside the box are set.
    got = paste_mask([4.0, 6.0, 12.0, 10.0], np.ones((4, 4), np.float32), (16, 16), accurate=True)
    expected = np.zeros((16, 16), np.uint8)
    expected[6:10, 4:12] = 1
    np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize('accurate', [True, False])
def test_paste_of_empty_box_is_empty(accurate):
    got = paste_mask([5.0, 5.0, 5.0, 9.0], np.ones((4, 4), np.float32), (12, 12), accurate=accurate)
    if accurate:
        assert got.sum() == 0
    else:   # the fast paste always covers at least one column: the one of x = 5
        assert got.sum() == got[:, 5].sum() > 0


def test_paste_rejects_non_square_mask():
    with pytest.raises(ValueError, match='square'):
        paste_mask([0, 0, 4, 4], np.ones((4, 5), np.float32), (8, 8), accurate=False)


@pytest.mark.parametrize('box, rows, cols', [
    ((2.0, 3.0, 10.0, 7.0), (3, 7), (2, 10)),      # integer box: exactly its pixels
    ((2.4, 3.6, 5.5, 6.5), (4, 7), (2, 6)),        # pixels whose centres are inside
    ((7.0, 7.0, 8.0, 8.0), (7, 8), (7, 8)),        # 1x1 box
    ((-3.0, 9.0, 4.0, 15.0), (9, 12), (0, 4)),     # partly outside a 12x12 image
])
def test_fast_paste_covers_integer_box(box, rows, cols):
    got = paste_mask(box, np.ones((6, 6), np.float32), (12, 12), accurate=False)
    expected = np.zeros((12, 12), np.uint8)
    expected[rows[0]:rows[1], cols[0]:cols[1]] = 1
    assert got.dtype == np.uint8
    np.testing.assert_array_equal(got, expected)


def test_fast_paste_keeps_mask_layout():
    mask = np.zeros((4, 4), np.float32)
    mask[:, :2] = 1.0   # left half on
    got = paste_mask([0.0, 0.0, 8.0, 8.0], mask, (8, 8), accurate=False)
    assert got[:, :4].all() and not got[:, 4:].any()
