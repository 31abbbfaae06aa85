"""Fast R-CNN pieces against numpy oracles: sampling, losses, final NMS, heads."""
import numpy as np
import pytest

from utils.tf_compat import tf  # noqa: I001  (must come before tensorpack)

from tensorpack.tfutils.tower import TowerContext

from modeling import model_frcnn
from modeling.model_frcnn import (BOX_HEADS, BoxProposals, FastRCNNHead, fastrcnn_losses, fastrcnn_outputs,
                                  fastrcnn_predictions, get_box_head, sample_fast_rcnn_targets)
from tests.tf_helpers import run_graph
from utils import np_box_ops


def np_nms(boxes, scores, thresh):
    """Greedy NMS: indices kept, best first."""
    order = list(np.argsort(-scores, kind='stable'))
    keep = []
    while order:
        best = order.pop(0)
        keep.append(best)
        if order:
            ious = np_box_ops.iou(boxes[best:best + 1], boxes[order])[0]
            order = [i for i, iou in zip(order, ious) if iou <= thresh]
    return keep


def np_per_class_predictions(boxes, scores, score_thresh, nms_thresh, topk):
    """The reference: for each class 1..K, threshold then NMS; then the top-k scores overall."""
    results = []
    for cls in range(1, scores.shape[1]):
        ids = np.where(scores[:, cls] > score_thresh)[0]
        for k in np_nms(boxes[ids, cls], scores[ids, cls], nms_thresh):
            results.append((scores[ids[k], cls], cls, boxes[ids[k], cls]))
    results.sort(key=lambda r: -r[0])
    results = results[:topk]
    return (np.array([r[2] for r in results]).reshape(-1, 4), np.array([r[0] for r in results]),
            np.array([r[1] for r in results]))


@pytest.mark.parametrize('seed, topk', [(0, 100), (1, 7), (2, 3)])
def test_predictions_equal_per_class_nms(seed, topk):
    rng = np.random.RandomState(seed)
    num_boxes, num_classes = 40, 5
    # Boxes clustered around a few centres so NMS has work to do in every class.
    centres = rng.uniform(20, 80, size=(4, 2))[rng.randint(0, 4, size=(num_boxes, num_classes))]
    half = rng.uniform(5, 15, size=(num_boxes, num_classes, 2))
    boxes = np.concatenate([centres - half, centres + half], axis=-1).astype(np.float32)
    scores = rng.dirichlet(np.ones(num_classes) * 0.5, size=num_boxes).astype(np.float32)

    out_boxes, out_scores, out_labels = run_graph(
        lambda b, s: fastrcnn_predictions(b, s, score_thresh=0.05, nms_thresh=0.5, results_per_im=topk),
        boxes, scores)
    want_boxes, want_scores, want_labels = np_per_class_predictions(boxes, scores, 0.05, 0.5, topk)
    assert out_labels.dtype == np.int32
    assert len(out_scores) == len(want_scores) > 0
    np.testing.assert_allclose(out_scores, want_scores, rtol=1e-6)
    # Ties in score could swap order; compare as sets of (label, box).
    got = sorted(zip(out_labels.tolist(), out_boxes.round(3).tolist()))
    want = sorted(zip(want_labels.tolist(), want_boxes.round(3).tolist()))
    assert got == want


def test_predictions_with_no_boxes():
    boxes, scores, labels = run_graph(
        lambda b, s: fastrcnn_predictions(b, s, score_thresh=0.05, nms_thresh=0.5, results_per_im=10),
        np.zeros((0, 3, 4), np.float32), np.zeros((0, 3), np.float32))
    assert boxes.shape == (0, 4) and scores.shape == (0,) and labels.shape == (0,)


def _sample(boxes, gt_boxes, gt_labels, batch_per_im=8, fg_ratio=0.25):
    def fn(b, g, lab):
        p = sample_fast_rcnn_targets(b, g, lab, batch_per_im=batch_per_im, fg_ratio=fg_ratio, fg_thresh=0.5)
        return p.boxes, p.labels, p.fg_inds_wrt_gt
    return run_graph(fn, np.asarray(boxes, np.float32).reshape(-1, 4),
                     np.asarray(gt_boxes, np.float32).reshape(-1, 4), np.asarray(gt_labels, np.int64))


def test_sampling_matches_gt_and_respects_the_budget():
    gt_boxes = np.array([[0, 0, 10, 10], [50, 50, 70, 80]], np.float32)
    proposals = np.array([[1, 1, 10, 10],      # IoU 0.81 with gt 0
                          [0, 0, 10, 20],      # IoU 0.5 with gt 0: fg (>=)
                          [52, 50, 70, 80],    # IoU 0.9 with gt 1
                          [20, 20, 30, 30],    # bg
                          [30, 0, 40, 10],     # bg
                          [0, 0, 4, 4]],       # IoU 0.16: bg
                         np.float32)
    boxes, labels, fg_inds_wrt_gt = _sample(proposals, gt_boxes, [3, 1], batch_per_im=64, fg_ratio=0.5)
    # All 6 proposals + 2 gt fit in the budget: 5 fg (3 proposals + 2 gt) first, then 3 bg.
    assert len(boxes) == 8 and np.all(labels[:5] > 0) and np.all(labels[5:] == 0)
    assert len(fg_inds_wrt_gt) == 5
    fg_boxes = boxes[:5]
    iou = np_box_ops.iou(fg_boxes, gt_boxes)
    np.testing.assert_array_equal(fg_inds_wrt_gt, iou.argmax(axis=1))
    assert np.all(iou.max(axis=1) >= 0.5)
    np.testing.assert_array_equal(labels[:5], np.array([3, 1])[fg_inds_wrt_gt])


def test_sampling_caps_foreground_and_total():
    gt_boxes = np.array([[0, 0, 20, 20]], np.float32)
    proposals = np.concatenate([np.tile([[0, 0, 20, 21]], (10, 1)), np.tile([[40, 40, 60, 60]], (10, 1))])
    boxes, labels, fg_inds_wrt_gt = _sample(proposals, gt_boxes, [2], batch_per_im=8, fg_ratio=0.25)
    assert len(boxes) == 8
    assert np.sum(labels > 0) == 2 == len(fg_inds_wrt_gt)   # int(8 * 0.25)


def test_sampling_without_gt_gives_background_only():
    boxes, labels, fg_inds_wrt_gt = _sample([[0, 0, 5, 5], [3, 3, 9, 9]], np.zeros((0, 4)), [])
    assert len(boxes) == 2 and np.all(labels == 0) and len(fg_inds_wrt_gt) == 0


def test_sampling_without_proposals_uses_gt():
    boxes, labels, _ = _sample(np.zeros((0, 4)), [[0, 0, 5, 5]], [1])
    np.testing.assert_array_equal(boxes, [[0, 0, 5, 5]])
    np.testing.assert_array_equal(labels, [1])


def _losses(labels, label_logits, fg_targets, fg_box_logits):
    fg_box_logits.set_shape([None, 3, 4])   # the head's outputs have a static class count
    return fastrcnn_losses(labels, label_logits, fg_targets, fg_box_logits)


def test_losses_hand_example():
    labels = np.array([2, 0, 1], np.int64)
    label_logits = np.array([[0, 1, 3], [2, 0, 0], [0, 0, 0]], np.float32)
    # box logits of the fg rois, per class: only the label's row counts.
    fg_box_logits = np.zeros((2, 3, 4), np.float32)
    fg_box_logits[0, 2] = [1, 0, 0, 0]
    fg_box_logits[1, 1] = [0, 0, 0.5, 0]
    fg_box_logits[1, 2] = [9, 9, 9, 9]      # another class: ignored
    fg_targets = np.array([[0, 0, 0, 0], [0, 0, 0, 1]], np.float32)

    label_loss, box_loss = run_graph(
        _losses, labels, label_logits, fg_targets, fg_box_logits, training=True)
    log_softmax = label_logits - np.log(np.exp(label_logits).sum(axis=1, keepdims=True))
    np.testing.assert_allclose(label_loss, -log_softmax[[0, 1, 2], labels].mean(), rtol=1e-5)
    np.testing.assert_allclose(box_loss, (1 + 0.5 + 1) / 3, rtol=1e-6)   # L1 sum / all rois


def test_losses_with_no_rois_are_zero():
    label_loss, box_loss = run_graph(
        _losses, np.zeros((0,), np.int64), np.zeros((0, 3), np.float32),
        np.zeros((0, 4), np.float32), np.zeros((0, 3, 4), np.float32), training=True)
    assert label_loss == 0 and box_loss == 0


def test_head_decodes_boxes_like_numpy():
    proposals = np.array([[10, 20, 30, 60], [0, 0, 8, 4]], np.float32)
    deltas = np.random.RandomState(0).uniform(-1, 1, size=(2, 3, 4)).astype(np.float32)
    weights = (10., 10., 5., 5.)

    def fn(p, d):
        d.set_shape([None, 3, 4])
        head = FastRCNNHead(BoxProposals(p), d, tf.zeros([2, 3]), None, weights, decode_clip=4.0)
        return head.decoded_output_boxes(), head.output_scores()
    decoded, scores = run_graph(fn, proposals, deltas)

    d = deltas / np.array(weights, np.float32)
    wh = proposals[:, None, 2:] - proposals[:, None, :2]
    centre = (proposals[:, None, 2:] + proposals[:, None, :2]) / 2 + d[..., :2] * wh
    size = np.exp(d[..., 2:]) * wh
    np.testing.assert_allclose(decoded, np.concatenate([centre - size / 2, centre + size / 2], -1), atol=1e-4)
    np.testing.assert_allclose(scores, np.full((2, 3), 1 / 3.), rtol=1e-6)


def _variables():
    return {v.op.name: v.shape.as_list() for v in tf.global_variables()}


@pytest.mark.parametrize('name', sorted(BOX_HEADS))
def test_box_head_variables_and_output(name):
    with tf.Graph().as_default():
        feature = tf.placeholder(tf.float32, [None, 7, 7, 32])
        with TowerContext('', is_training=True):
            out = get_box_head(name)('fastrcnn', feature, conv_dim=32, fc_dim=16, data_format='NHWC')
            fastrcnn_outputs('fastrcnn/outputs', out, 3)
        assert out.shape.as_list() == [None, 16]
        found = _variables()
    if name == 'fastrcnn_2fc_head':
        assert found['fastrcnn/fc6/W'] == [32 * 49, 16] and found['fastrcnn/fc7/W'] == [16, 16]
    else:
        assert found['fastrcnn/conv0/W'] == [3, 3, 32, 32] and found['fastrcnn/conv3/b'] == [32]
        assert found['fastrcnn/fc/W'] == [32 * 49, 16]
        assert ('fastrcnn/gn3/gamma' in found) == name.endswith('_gn_head')
    assert found['fastrcnn/outputs/class/W'] == [16, 4] and found['fastrcnn/outputs/box/W'] == [16, 16]


def test_unknown_box_head_lists_the_valid_ones():
    with pytest.raises(KeyError, match='fastrcnn_2fc_head.*fastrcnn_4conv1fc_head'):
        get_box_head('fastrcnn_3fc_head')


def test_fc_weights_read_features_in_chw_order():
    """The same weights give the same output on NHWC features and on their NCHW transpose."""
    features = np.random.RandomState(0).rand(2, 7, 7, 3).astype(np.float32)
    with tf.Graph().as_default():
        nhwc = tf.constant(features)
        with tf.variable_scope('head'):
            out_nhwc = BOX_HEADS['fastrcnn_2fc_head']('h', nhwc, conv_dim=0, fc_dim=5, data_format='NHWC')
        with tf.variable_scope('head', reuse=True):
            nchw = tf.constant(features.transpose(0, 3, 1, 2))
            out_nchw = BOX_HEADS['fastrcnn_2fc_head']('h', nchw, conv_dim=0, fc_dim=5, data_format='NCHW')
        # The first weight row belongs to channel 0 at pixel (0, 0), the second to channel 0 at (0, 1).
        flat = model_frcnn.flatten_chw(nhwc, 'NHWC')
        with tf.Session() as sess:
            sess.run(tf.global_variables_initializer())
            a, b, flat = sess.run([out_nhwc, out_nchw, flat])
    np.testing.assert_allclose(a, b, rtol=1e-5)
    np.testing.assert_array_equal(flat[:, :2], features[:, 0, :2, 0])
