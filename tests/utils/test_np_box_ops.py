"""Numpy box geometry and the anchor grids, against hand-computed values."""
import numpy as np
import pytest

from utils import np_box_ops

BOXES_A = np.array([[0, 0, 4, 4],      # area 16
                    [2, 2, 6, 5]],     # area 12
                   dtype=np.float32)
BOXES_B = np.array([[2, 0, 4, 2],      # area 4
                    [10, 10, 12, 12],  # area 4, disjoint from both
                    [0, 0, 4, 4]],     # identical to BOXES_A[0]
                   dtype=np.float32)


def test_area():
    np.testing.assert_allclose(np_box_ops.area(BOXES_A), [16, 12])
    # widths have no +1: a degenerate box has area 0
    assert np_box_ops.area(np.array([[3, 3, 3, 7]], np.float32))[0] == 0


def test_intersection_iou_ioa():
    # A0 & B0 = [2,0,4,2] -> 4; A1 & B0 = [2,2,4,2] -> 0; A1 & B2 = [2,2,4,4] -> 4
    expected_inter = [[4, 0, 16], [0, 0, 4]]
    np.testing.assert_allclose(np_box_ops.intersection(BOXES_A, BOXES_B), expected_inter)
    # iou = inter / (area_a + area_b - inter)
    expected_iou = [[4 / 16, 0, 1], [0, 0, 4 / (12 + 16 - 4)]]
    np.testing.assert_allclose(np_box_ops.iou(BOXES_A, BOXES_B), expected_iou, rtol=1e-6)
    # ioa divides by the area of the *second* argument
    expected_ioa = [[4 / 4, 0, 16 / 16], [0, 0, 4 / 16]]
    np.testing.assert_allclose(np_box_ops.ioa(BOXES_A, BOXES_B), expected_ioa, rtol=1e-6)
    np.testing.assert_allclose(np_box_ops.ioa(BOXES_B, BOXES_A)[0], [4 / 16, 0], rtol=1e-6)


def test_zero_area_boxes_give_zero_not_nan():
    point = np.array([[1, 1, 1, 1]], np.float32)
    assert np_box_ops.iou(point, point)[0, 0] == 0
    assert np_box_ops.ioa(BOXES_A, point).tolist() == [[0], [0]]


def test_empty_inputs():
    empty = np.zeros((0, 4), np.float32)
    assert np_box_ops.iou(empty, BOXES_B).shape == (0, 3)
    assert np_box_ops.iou(BOXES_A, empty).shape == (2, 0)


def test_clip_boxes():
    boxes = np.array([[-3, -1, 8, 4], [2, 7, 3, 9]], np.float32)
    clipped = np_box_ops.clip_boxes(boxes, (5, 6))   # h=5, w=6
    np.testing.assert_array_equal(clipped, [[0, 0, 6, 4], [2, 5, 3, 5]])
    assert boxes[0, 0] == -3   # input untouched


def test_cell_anchors_c4_hand_computed():
    # width = sqrt(size^2 / ratio), height = ratio * width, centred on 0; size-major order.
    # size 32: ratio 0.5 -> w = sqrt(2048) = 45.2548, h = 22.6274; ratio 1 -> 32 x 32;
    #          ratio 2 -> w = sqrt(512) = 22.6274, h = 45.2548.
    # size 64: ratio 1 -> 64 x 64 (the others are twice the size-32 ones).
    r = np.sqrt(2048) / 2   # 22.6274
    expected = [[-r, -r / 2, r, r / 2], [-16, -16, 16, 16], [-r / 2, -r, r / 2, r],
                [-2 * r, -r, 2 * r, r], [-32, -32, 32, 32], [-r, -2 * r, r, 2 * r]]
    cell = np_box_ops.generate_cell_anchors(16, (32, 64), (0.5, 1., 2.))
    assert cell.dtype == np.float32
    np.testing.assert_allclose(cell, expected, rtol=1e-6)


def test_all_anchors_c4_grid():
    anchors = np_box_ops.get_all_anchors(16, (32, 64), (0.5, 1., 2.), max_size=100)
    # S = ceil(100 / 16) = 7 cells per side, A = 2 sizes * 3 ratios
    assert anchors.shape == (7, 7, 6, 4) and anchors.dtype == np.float32
    np.testing.assert_array_equal(anchors[0, 0, 1], [-16, -16, 16, 16])
    centres = (anchors[0, 0, :, :2] + anchors[0, 0, :, 2:]) / 2
    np.testing.assert_allclose(centres, np.zeros((6, 2)), atol=1e-5)
    # cell (row 2, column 5) is shifted by x = 5 * 16, y = 2 * 16
    np.testing.assert_allclose(anchors[2, 5] - anchors[0, 0], np.tile([[80, 32, 80, 32]], (6, 1)), atol=1e-4)
    # every anchor has exactly the requested sqrt-area and ratio
    areas = np.sqrt(np_box_ops.area(anchors[0, 0]))
    np.testing.assert_allclose(areas, [32, 32, 32, 64, 64, 64], rtol=1e-5)
    cell = anchors[0, 0]
    np.testing.assert_allclose((cell[:, 3] - cell[:, 1]) / (cell[:, 2] - cell[:, 0]), [0.5, 1, 2] * 2, rtol=1e-5)


def test_all_anchors_fpn_levels():
    strides, sizes = (4, 8, 16, 32, 64), (32, 64, 128, 256, 512)
    levels = np_box_ops.get_all_anchors_fpn(strides, sizes, (0.5, 1., 2.), max_size=1344)
    # S = 1344 / stride
    assert [grid.shape for grid in levels] == [(336, 336, 3, 4), (168, 168, 3, 4), (84, 84, 3, 4),
                                              (42, 42, 3, 4), (21, 21, 3, 4)]
    for stride, size, grid in zip(strides, sizes, levels):
        cell = grid[0, 0]
        widths, heights = cell[:, 2] - cell[:, 0], cell[:, 3] - cell[:, 1]
        np.testing.assert_allclose((cell[:, :2] + cell[:, 2:]) / 2, np.zeros((3, 2)), atol=1e-4)
        np.testing.assert_allclose(heights / widths, [0.5, 1, 2], rtol=1e-5)
        np.testing.assert_allclose(np.sqrt(widths * heights), [size] * 3, rtol=1e-5)
        np.testing.assert_allclose(grid[1, 1, 0] - cell[0], [stride] * 4, rtol=1e-5)


def test_fpn_needs_one_size_per_stride():
    with pytest.raises(ValueError, match='one anchor size per stride'):
        np_box_ops.get_all_anchors_fpn((4, 8), (32,), (1.,), 64)
