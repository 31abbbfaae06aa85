"""The short-edge resize, alone and with a flip, keeping boxes and polygons on the drawn pixels."""
import numpy as np
import pytest

from dataflow import geometry, resize
from tensorpack.dataflow import imgaug


def test_resized_shape():
    # 480 x 640 -> short edge 800: long edge 640 * 800 / 480 = 1066.67, rounded half-up to 1067
    assert resize.resized_shape(480, 640, 800, 1333) == (800, 1067)
    assert resize.resized_shape(640, 480, 800, 1333) == (1067, 800)
    # 100 x 1000 -> 800 x 8000 exceeds 1333: scaled by 1333 / 8000 -> 133.3 x 1333 -> (133, 1333)
    assert resize.resized_shape(100, 1000, 800, 1333) == (133, 1333)


def test_custom_resize_samples_the_closed_interval():
    sampled = resize.CustomResize([2, 4], max_size=100)
    sampled.rng = np.random.RandomState(0)
    image = np.zeros((10, 20, 3), np.float32)
    short_edges = {sampled.get_transform(image).new_h for _ in range(60)}
    assert short_edges == {2, 3, 4}
    fixed = resize.CustomResize(5, max_size=100)
    assert fixed.get_transform(image).new_h == 5 and fixed.get_transform(image).new_w == 10
    with pytest.raises(ValueError, match='short_edge_length'):
        resize.CustomResize([800, 600], max_size=1333)


@pytest.mark.parametrize('flip', [False, True])
def test_resize_and_flip_keep_boxes_and_polygons_on_the_drawn_pixels(flip):
    height, width = 30, 40
    box = np.array([[8, 5, 20, 17]], np.float32)   # 12 x 12 pixels: columns 8..19, rows 5..16
    image = np.zeros((height, width, 3), np.float32)
    image[5:17, 8:20] = 255
    polygon = np.array([[8, 5], [20, 5], [20, 17], [8, 17]], np.float32)

    augmentors = imgaug.AugmentorList([resize.CustomResize(60, 1000), imgaug.Flip(horiz=True, prob=1.0 * flip)])
    transform = augmentors.get_transform(image)
    new_image = transform.apply_image(image)
    assert new_image.shape[:2] == (60, 80)
    new_box = geometry.point4_to_box(transform.apply_coords(geometry.box_to_point4(box)))[0]
    new_polygon = transform.apply_coords(polygon.copy())

    # the drawn pixels (bilinear edges included) lie inside the box, which they fill: at 2x the
    # 12 x 12 square becomes 24 x 24, with at most one blurred pixel on each side
    ys, xs = np.where(new_image[..., 0] > 127)
    assert new_box[0] <= xs.min() and xs.max() + 1 <= new_box[2]
    assert new_box[1] <= ys.min() and ys.max() + 1 <= new_box[3]
    np.testing.assert_allclose(new_box[2:] - new_box[:2], [24, 24])
    expected_x1 = 80 - 40 if flip else 16
    assert abs(xs.min() - expected_x1) <= 1

    mask = geometry.polygons_to_mask([new_polygon], 60, 80)
    drawn = new_image[..., 0] > 127
    assert (mask & drawn).sum() / (mask | drawn).sum() > 0.9
