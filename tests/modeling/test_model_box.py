"""Tests of modeling/model_box.py against hand-derived values and numpy oracles."""
import numpy as np
import pytest

from utils import np_box_ops
from utils.tf_compat import tf
from modeling import model_box
from tests.tf_helpers import run_graph


def bilinear_clamped(feature_hwc, y, x):
    """Bilinear sample at index position (y, x), clamped to the map (ROIAlign's border rule)."""
    height, width = feature_hwc.shape[:2]
    y = min(max(y, 0.0), height - 1.0)
    x = min(max(x, 0.0), width - 1.0)
    y0, x0 = int(np.floor(y)), int(np.floor(x))
    y1, x1 = min(y0 + 1, height - 1), min(x0 + 1, width - 1)
    dy, dx = y - y0, x - x0
    return (feature_hwc[y0, x0] * (1 - dy) * (1 - dx) + feature_hwc[y0, x1] * (1 - dy) * dx
            + feature_hwc[y1, x0] * dy * (1 - dx) + feature_hwc[y1, x1] * dy * dx)


def roi_align_oracle(feature_hwc, boxes, resolution):
    """ROIAlign written out: per bin, the mean of 2x2 bilinear samples at the centres of the
    bin's quarters; continuous coordinate u is index position u - 0.5 (pixel centres)."""
    out = np.zeros((len(boxes), resolution, resolution, feature_hwc.shape[2]), np.float64)
    for n, (x1, y1, x2, y2) in enumerate(boxes):
        bin_w, bin_h = (x2 - x1) / resolution, (y2 - y1) / resolution
        for i in range(resolution):
            for j in range(resolution):
                samples = [bilinear_clamped(feature_hwc, y1 + (i + fy) * bin_h - 0.5, x1 + (j + fx) * bin_w - 0.5)
                           for fy in (0.25, 0.75) for fx in (0.25, 0.75)]
                out[n, i, j] = np.mean(samples, axis=0)
    return out.astype(np.float32)


def feature_5x5():
    """[5, 5, 2]: channel 0 is 10 * row + col (linear, so bins average to their centre value),
    channel 1 is a fixed non-linear pattern."""
    rows, cols = np.mgrid[0:5, 0:5].astype(np.float32)
    return np.stack([10 * rows + cols, (rows * cols) % 7 + rows ** 2], axis=-1)


ROI_BOXES = np.array([
    [1, 1, 3, 3],          # interior, 2x2 pixels
    [0, 0, 5, 5],          # whole map: border samples at -0.25 / 4.25 hit the edge rule
    [0.5, 2, 4.5, 3],      # fractional, wide
    [4, 4, 5, 5],          # corner pixel
    [2, 2, 2, 2],          # zero area: every sample at the point (2, 2)
], np.float32)


def test_roi_align_linear_map_hand_values():
    # For a linear map, a bin's mean is the value at its centre. Box [1, 1, 3, 3] at
    # resolution 2 has bin centres at continuous 1.5 and 2.5, i.e. index positions 1 and 2:
    # values 10 * row + col = [[11, 12], [21, 22]].
    feature = feature_5x5()[None]
    out = run_graph(lambda f, b: model_box.roi_align(f, b, 2, 'NHWC'), feature, ROI_BOXES[:1])
    np.testing.assert_allclose(out[0, :, :, 0], [[11, 12], [21, 22]], atol=1e-4)


@pytest.mark.parametrize('data_format', ['NHWC', 'NCHW'])
def test_roi_align_matches_oracle(data_format):
    feature = feature_5x5()
    expected = roi_align_oracle(feature, ROI_BOXES, 2)
    feed = feature[None] if data_format == 'NHWC' else feature.transpose(2, 0, 1)[None]

    def fn(f, b):
        rois = model_box.roi_align(f, b, 2, data_format)
        # Each output is a convex combination of map values, so the gradient of the sum
        # spreads exactly one unit per output element back onto the map.
        return rois, tf.reduce_sum(tf.gradients(tf.reduce_sum(rois), f)[0])
    out, grad_sum = run_graph(fn, feed, ROI_BOXES)
    if data_format == 'NCHW':
        out = out.transpose(0, 2, 3, 1)
    np.testing.assert_allclose(out, expected, atol=1e-4)
    assert grad_sum == pytest.approx(expected.size, rel=1e-5)


def test_roi_align_no_boxes():
    out = run_graph(lambda f, b: model_box.roi_align(f, b, 3, 'NHWC'),
                    feature_5x5()[None], np.zeros((0, 4), np.float32))
    assert out.shape == (0, 3, 3, 2)


def test_crop_and_resize_samples_cell_centres():
    # Crop [1, 1, 3, 3] of a 5x5 arange image to 4x4: samples at continuous 1.25 .. 2.75,
    # index positions 0.75 .. 2.25, value 5 * y + x -> first row 4.5 5 5.5 6, step 2.5 per row.
    image = np.arange(25, dtype=np.float32).reshape(1, 5, 5, 1)
    out = run_graph(lambda im, b: model_box.crop_and_resize(im, b, tf.zeros([1], tf.int32), 4, 'NHWC',
                                                            pad_border=False),
                    image, np.array([[1, 1, 3, 3]], np.float32))
    expected = np.array([4.5, 5, 5.5, 6])[None, :] + 2.5 * np.arange(4)[:, None]
    np.testing.assert_allclose(out[0, :, :, 0], expected, atol=1e-4)


def test_encode_decode_round_trip_with_weights():
    rng = np.random.RandomState(0)
    xy = rng.uniform(0, 50, (6, 2))
    boxes = np.concatenate([xy, xy + rng.uniform(1, 40, (6, 2))], axis=1).astype(np.float32)
    xy = rng.uniform(0, 50, (6, 2))
    anchors = np.concatenate([xy, xy + rng.uniform(1, 40, (6, 2))], axis=1).astype(np.float32)
    weights = (10., 10., 5., 5.)
    decoded = run_graph(
        lambda b, a: model_box.decode_bbox_target(model_box.encode_bbox_target(b, a, weights), a, weights, clip=4.),
        boxes, anchors)
    np.testing.assert_allclose(decoded, boxes, rtol=1e-5, atol=1e-4)


def test_encode_hand_values():
    # box [0, 0, 4, 4] vs anchor [0, 0, 2, 2]: centres 2 vs 1, anchor size 2 -> dx = dy = 0.5;
    # dw = dh = log(4 / 2). Weights (10, 10, 5, 5) scale them.
    out = run_graph(lambda b, a: model_box.encode_bbox_target(b, a, (10., 10., 5., 5.)),
                    np.array([[0, 0, 4, 4]], np.float32), np.array([[0, 0, 2, 2]], np.float32))
    np.testing.assert_allclose(out, [[5, 5, 5 * np.log(2), 5 * np.log(2)]], rtol=1e-6)


def test_decode_clamps_huge_dw_dh():
    # dw = dh = 1000 would overflow exp(); clamped to log(1333/16) the box is
    # 10 * 1333/16 = 833.125 wide around the anchor centre 5.
    clip = np.log(1333 / 16.)
    out = run_graph(lambda d, a: model_box.decode_bbox_target(d, a, clip=clip),
                    np.array([[0, 0, 1000, 1000]], np.float32), np.array([[0, 0, 10, 10]], np.float32))
    half = 10 * 1333 / 16. / 2
    assert np.all(np.isfinite(out))
    np.testing.assert_allclose(out, [[5 - half, 5 - half, 5 + half, 5 + half]], rtol=1e-5)


def test_decode_broadcasts_anchors_over_classes():
    rng = np.random.RandomState(1)
    deltas = rng.normal(size=(2, 3, 4)).astype(np.float32)
    anchors = np.array([[[0, 0, 10, 20]], [[5, 5, 8, 9]]], np.float32)     # [2, 1, 4]
    broadcast, tiled = run_graph(
        lambda d, a: (model_box.decode_bbox_target(d, a, (10., 10., 5., 5.), clip=4.),
                      model_box.decode_bbox_target(d, tf.tile(a, [1, 3, 1]), (10., 10., 5., 5.), clip=4.)),
        deltas, anchors)
    assert broadcast.shape == (2, 3, 4)
    np.testing.assert_allclose(broadcast, tiled, rtol=1e-6)


def test_clip_boxes():
    boxes = np.array([[-5, -3, 20, 8], [1, 2, 3, 4], [16, 11, 30, 40]], np.float32)
    out = run_graph(lambda b, hw: model_box.clip_boxes(b, hw), boxes, np.array([10, 15], np.int32))
    np.testing.assert_allclose(out, [[0, 0, 15, 8], [1, 2, 3, 4], [15, 10, 15, 10]])
    np.testing.assert_allclose(out, np_box_ops.clip_boxes(boxes, (10, 15)))


def test_clip_boxes_with_a_window_per_box_clips_each_box_to_its_own_image():
    boxes = np.array([[-5, -3, 20, 8], [-5, -3, 20, 8], [16, 11, 30, 40]], np.float32)
    windows_hw = np.array([[10, 15], [6, 30], [20, 25]], np.int32)   # (h, w) of each box's image
    out = run_graph(lambda b, hw: model_box.clip_boxes(b, hw), boxes, windows_hw)
    np.testing.assert_allclose(out, [[0, 0, 15, 8], [0, 0, 20, 6], [16, 11, 25, 20]])


def test_area_and_pairwise_iou_match_numpy():
    boxes_a = np.array([[0, 0, 10, 10], [5, 5, 15, 15], [3, 3, 3, 3], [20, 0, 22, 1]], np.float32)
    boxes_b = np.array([[0, 0, 10, 10], [3, 3, 3, 3], [2.5, 0, 7.5, 20]], np.float32)
    areas, ious = run_graph(lambda a, b: (model_box.area(a), model_box.pairwise_iou(a, b)), boxes_a, boxes_b)
    np.testing.assert_allclose(areas, np_box_ops.area(boxes_a))
    np.testing.assert_allclose(ious, np_box_ops.iou(boxes_a, boxes_b), rtol=1e-6)
    # Hand value: [5,5,15,15] vs [0,0,10,10] overlap 25 / (100 + 100 - 25).
    assert ious[1, 0] == pytest.approx(25 / 175.)
    assert ious[2, 1] == 0    # two zero-area boxes: 0, not NaN


def test_bad_data_format_raises():
    with tf.Graph().as_default():
        with pytest.raises(ValueError, match='NHWC'):
            model_box.roi_align(tf.zeros([1, 5, 5, 2]), tf.zeros([1, 4]), 2, 'nhwc')
