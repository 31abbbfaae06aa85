"""Boxes as corner points, polygons to masks, boxes inside the image."""
import numpy as np
import pytest

from dataflow import geometry


def test_box_point4_roundtrip():
    boxes = np.array([[1, 2, 5, 7], [0, 0, 3, 3]], np.float32)
    points = geometry.box_to_point4(boxes)
    assert points.shape == (8, 2)
    np.testing.assert_array_equal(geometry.point4_to_box(points), boxes)
    # any point transform: the enclosing box of the moved corners (here a horizontal flip, w = 10)
    points[:, 0] = 10 - points[:, 0]
    np.testing.assert_array_equal(geometry.point4_to_box(points), [[5, 2, 9, 7], [7, 0, 10, 3]])


def test_polygons_to_mask_follows_the_pixel_model():
    # pixel i covers [i, i + 1): the square [1, 4] x [1, 3] is columns 1..3, rows 1..2
    mask = geometry.polygons_to_mask([np.array([[1, 1], [4, 1], [4, 3], [1, 3]], np.float32)], 5, 6)
    expected = np.zeros((5, 6), np.uint8)
    expected[1:3, 1:4] = 1
    np.testing.assert_array_equal(mask, expected)
    # two polygons are merged
    two = geometry.polygons_to_mask([np.array([[0, 0], [1, 0], [1, 1], [0, 1]]),
                                   np.array([[5, 4], [6, 4], [6, 5], [5, 5]])], 5, 6)
    assert two.sum() == 2 and two[0, 0] == 1 and two[4, 5] == 1
    with pytest.raises(ValueError, match='at least 3 points'):
        geometry.polygons_to_mask([np.array([[0, 0], [3, 3]])], 5, 6)


def test_filter_boxes_inside_shape():
    boxes = np.array([[0, 0, 6, 5], [-1, 0, 2, 2], [1, 1, 6, 6], [2, 2, 3, 3]], np.float32)
    indices, inside = geometry.filter_boxes_inside_shape(boxes, (5, 6))
    assert indices.tolist() == [0, 3]
    np.testing.assert_array_equal(inside, boxes[[0, 3]])
