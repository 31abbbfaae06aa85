"""Image reading, resizing/flipping consistency and the small geometry helpers of common.py."""
import cv2
import numpy as np
import pytest

import common
from tensorpack.dataflow import imgaug


def test_read_image_bgr_color_gray_rgba(tmp_path):
    bgr = np.zeros((4, 5, 3), np.uint8)
    bgr[..., 0], bgr[..., 1], bgr[..., 2] = 10, 20, 30
    cv2.imwrite(str(tmp_path / 'color.png'), bgr)
    np.testing.assert_array_equal(common.read_image_bgr(str(tmp_path / 'color.png')), bgr)

    gray = np.arange(20, dtype=np.uint8).reshape((4, 5)) * 10
    cv2.imwrite(str(tmp_path / 'gray.png'), gray)
    image = common.read_image_bgr(str(tmp_path / 'gray.png'))
    assert image.shape == (4, 5, 3) and image.dtype == np.uint8
    for channel in range(3):
        np.testing.assert_array_equal(image[..., channel], gray)

    bgra = np.concatenate([bgr, np.full((4, 5, 1), 128, np.uint8)], axis=-1)   # half-transparent
    cv2.imwrite(str(tmp_path / 'rgba.png'), bgra)
    np.testing.assert_array_equal(common.read_image_bgr(str(tmp_path / 'rgba.png')), bgr)


def test_read_image_errors_name_the_file(tmp_path):
    corrupt = tmp_path / 'corrupt.jpg'
    corrupt.write_bytes(b'this is not a jpeg')
    with pytest.raises(common.UnreadableImageError, match='corrupt.jpg'):
        common.read_image_bgr(str(corrupt))
    with pytest.raises(FileNotFoundError, match='missing.jpg'):
        common.read_image_bgr(str(tmp_path / 'missing.jpg'))


def _jpeg_bytes(progressive=False):
    image = np.random.RandomState(0).randint(0, 256, (48, 64, 3)).astype(np.uint8)   # mostly scan data
    flags = [cv2.IMWRITE_JPEG_PROGRESSIVE, 1] if progressive else []
    return cv2.imencode('.jpg', image, flags)[1].tobytes()


@pytest.mark.parametrize('progressive', [False, True])
def test_truncated_jpeg_is_an_error_naming_the_file(tmp_path, progressive):
    data = _jpeg_bytes(progressive)
    complete = tmp_path / 'complete.jpg'
    complete.write_bytes(data + b'\x00\x00 camera trailer')   # bytes after the end marker are fine
    assert common.read_image_bgr(str(complete)).shape == (48, 64, 3)
    for cut in (len(data) // 2, len(data) - 2, len(data) - 1):
        truncated = tmp_path / 'cut{}.jpg'.format(cut)
        truncated.write_bytes(data[:cut])
        assert cv2.imread(str(truncated)) is not None   # what OpenCV alone does: a gray-filled image
        with pytest.raises(common.TruncatedImageError, match='cut{}.jpg is truncated'.format(cut)):
            common.read_image_bgr(str(truncated))


def test_an_end_marker_inside_a_segment_does_not_hide_truncation(tmp_path):
    # An APP15 segment whose payload holds FF D9, as an EXIF thumbnail does, then a cut scan.
    data = _jpeg_bytes()
    payload = b'thumb\xff\xd9'
    app15 = b'\xff\xef' + (len(payload) + 2).to_bytes(2, 'big') + payload
    with_segment = data[:2] + app15 + data[2:]
    assert common.jpeg_is_complete(with_segment)
    assert not common.jpeg_is_complete(with_segment[:len(with_segment) // 2])
    path = tmp_path / 'thumb.jpg'
    path.write_bytes(with_segment[:-10])
    with pytest.raises(common.TruncatedImageError, match='thumb.jpg'):
        common.read_image_bgr(str(path))


def test_image_size_must_match_the_annotations(tmp_path):
    path = tmp_path / 'image.png'
    cv2.imwrite(str(path), np.zeros((4, 6, 3), np.uint8))
    assert common.read_image_bgr(str(path), expected_hw=(4, 6)).shape == (4, 6, 3)
    with pytest.raises(common.ImageSizeMismatchError, match=r'image.png is 6x4 .* annotations say 5x3;'):
        common.read_image_bgr(str(path), expected_hw=(3, 5))
    with pytest.raises(common.ImageSizeMismatchError, match='swapped'):
        common.read_image_bgr(str(path), expected_hw=(6, 4))


def test_resized_shape():
    # 480 x 640 -> short edge 800: long edge 640 * 800 / 480 = 1066.67, rounded half-up to 1067
    assert common.resized_shape(480, 640, 800, 1333) == (800, 1067)
    assert common.resized_shape(640, 480, 800, 1333) == (1067, 800)
    # 100 x 1000 -> 800 x 8000 exceeds 1333: scaled by 1333 / 8000 -> 133.3 x 1333 -> (133, 1333)
    assert common.resized_shape(100, 1000, 800, 1333) == (133, 1333)


def test_custom_resize_samples_the_closed_interval():
    resize = common.CustomResize([2, 4], max_size=100)
    resize.rng = np.random.RandomState(0)
    image = np.zeros((10, 20, 3), np.float32)
    short_edges = {resize.get_transform(image).new_h for _ in range(60)}
    assert short_edges == {2, 3, 4}
    fixed = common.CustomResize(5, max_size=100)
    assert fixed.get_transform(image).new_h == 5 and fixed.get_transform(image).new_w == 10
    with pytest.raises(ValueError, match='short_edge_length'):
        common.CustomResize([800, 600], max_size=1333)


def test_box_point4_roundtrip():
    boxes = np.array([[1, 2, 5, 7], [0, 0, 3, 3]], np.float32)
    points = common.box_to_point4(boxes)
    assert points.shape == (8, 2)
    np.testing.assert_array_equal(common.point4_to_box(points), boxes)
    # any point transform: the enclosing box of the moved corners (here a horizontal flip, w = 10)
    points[:, 0] = 10 - points[:, 0]
    np.testing.assert_array_equal(common.point4_to_box(points), [[5, 2, 9, 7], [7, 0, 10, 3]])


def test_polygons_to_mask_follows_the_pixel_model():
    # pixel i covers [i, i + 1): the square [1, 4] x [1, 3] is columns 1..3, rows 1..2
    mask = common.polygons_to_mask([np.array([[1, 1], [4, 1], [4, 3], [1, 3]], np.float32)], 5, 6)
    expected = np.zeros((5, 6), np.uint8)
    expected[1:3, 1:4] = 1
    np.testing.assert_array_equal(mask, expected)
    # two polygons are merged
    two = common.polygons_to_mask([np.array([[0, 0], [1, 0], [1, 1], [0, 1]]),
                                   np.array([[5, 4], [6, 4], [6, 5], [5, 5]])], 5, 6)
    assert two.sum() == 2 and two[0, 0] == 1 and two[4, 5] == 1
    with pytest.raises(ValueError, match='at least 3 points'):
        common.polygons_to_mask([np.array([[0, 0], [3, 3]])], 5, 6)


def test_filter_boxes_inside_shape():
    boxes = np.array([[0, 0, 6, 5], [-1, 0, 2, 2], [1, 1, 6, 6], [2, 2, 3, 3]], np.float32)
    indices, inside = common.filter_boxes_inside_shape(boxes, (5, 6))
    assert indices.tolist() == [0, 3]
    np.testing.assert_array_equal(inside, boxes[[0, 3]])


@pytest.mark.parametrize('flip', [False, True])
def test_resize_and_flip_keep_boxes_and_polygons_on_the_drawn_pixels(flip):
    height, width = 30, 40
    box = np.array([[8, 5, 20, 17]], np.float32)   # 12 x 12 pixels: columns 8..19, rows 5..16
    image = np.zeros((height, width, 3), np.float32)
    image[5:17, 8:20] = 255
    polygon = np.array([[8, 5], [20, 5], [20, 17], [8, 17]], np.float32)

    augmentors = imgaug.AugmentorList([common.CustomResize(60, 1000), imgaug.Flip(horiz=True, prob=1.0 * flip)])
    transform = augmentors.get_transform(image)
    new_image = transform.apply_image(image)
    assert new_image.shape[:2] == (60, 80)
    new_box = common.point4_to_box(transform.apply_coords(common.box_to_point4(box)))[0]
    new_polygon = transform.apply_coords(polygon.copy())

    # the drawn pixels (bilinear edges included) lie inside the box, which they fill: at 2x the
    # 12 x 12 square becomes 24 x 24, with at most one blurred pixel on each side
    ys, xs = np.where(new_image[..., 0] > 127)
    assert new_box[0] <= xs.min() and xs.max() + 1 <= new_box[2]
    assert new_box[1] <= ys.min() and ys.max() + 1 <= new_box[3]
    np.testing.assert_allclose(new_box[2:] - new_box[:2], [24, 24])
    expected_x1 = 80 - 40 if flip else 16
    assert abs(xs.min() - expected_x1) <= 1

    mask = common.polygons_to_mask([new_polygon], 60, 80)
    drawn = new_image[..., 0] > 127
    assert (mask & drawn).sum() / (mask | drawn).sum() > 0.9
