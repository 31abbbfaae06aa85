"""Cascade R-CNN head: its stages, variables, re-matching, and score averaging."""
import numpy as np

from utils.tf_compat import tf  # noqa: I001  (must come before tensorpack)

from tensorpack.tfutils.tower import TowerContext

from modeling.model_cascade import CascadeRCNNHead, _scaled_gradient, match_boxes_with_gt
from modeling.model_frcnn import BOX_HEADS, BoxProposals, match_boxes_to_best_gt
from tests.tf_helpers import run_graph
from utils import np_box_ops

IOUS = [0.5, 0.6, 0.7]
WEIGHTS = [[10., 10., 5., 5.], [20., 20., 10., 10.], [30., 30., 15., 15.]]
NUM_CATEGORY = 3


def _roi_features(boxes):
    """A stand-in for ROIAlign: [R, 4, 4, 2] features computed from the boxes."""
    normalized = boxes / 100.0
    return tf.tile(tf.reshape(normalized, [-1, 1, 1, 4])[..., :2], [1, 4, 4, 1])


def _box_head(scope, features):
    return BOX_HEADS['fastrcnn_2fc_head'](scope, features, conv_dim=0, fc_dim=8, data_format='NHWC')


def _build(training, gt_boxes, gt_labels, proposals, labels=None, fg_inds_wrt_gt=None):
    with TowerContext('', is_training=training):
        head = CascadeRCNNHead(
            BoxProposals(tf.constant(proposals), labels, fg_inds_wrt_gt), _roi_features, _box_head,
            tf.constant(gt_boxes), tf.constant(gt_labels), tf.constant([100, 120]), NUM_CATEGORY,
            ious=IOUS, bbox_reg_weights=WEIGHTS, decode_clip=4.0, training=training)
    return head


PROPOSALS = np.array([[10, 10, 40, 40], [12, 10, 40, 42], [60, 60, 90, 100], [0, 0, 5, 5]], np.float32)
GT_BOXES = np.array([[10, 10, 40, 40], [60, 60, 90, 100]], np.float32)
GT_LABELS = np.array([2, 3], np.int64)


def test_training_losses_and_variables():
    with tf.Graph().as_default():
        labels = tf.constant([2, 2, 3, 0], tf.int64)
        head = _build(True, GT_BOXES, GT_LABELS, PROPOSALS, labels, tf.constant([0, 0, 1], tf.int64))
        losses = head.losses()
        assert len(losses) == 6
        variables = {v.op.name: v.shape.as_list() for v in tf.global_variables()}
        grads = tf.gradients(tf.add_n(losses), tf.trainable_variables())
        with tf.Session() as sess:
            sess.run(tf.global_variables_initializer())
            values, grad_values = sess.run([losses, grads])
    assert np.all(np.isfinite(values)) and all(np.all(np.isfinite(g)) for g in grad_values)
    for stage in (1, 2, 3):
        prefix = 'cascade_rcnn_stage{}/'.format(stage)
        assert variables[prefix + 'head/fc6/W'] == [4 * 4 * 2, 8]
        assert variables[prefix + 'outputs/class/W'] == [8, NUM_CATEGORY + 1]
        assert variables[prefix + 'outputs/box/W'] == [8, 4]   # class-agnostic
    assert len(variables) == 3 * 8


def test_training_without_gt_rematches_to_background():
    with tf.Graph().as_default():
        head = _build(True, np.zeros((0, 4), np.float32), np.zeros((0,), np.int64), PROPOSALS,
                      tf.zeros([4], tf.int64), tf.zeros([0], tf.int64))
        losses = head.losses()
        with tf.Session() as sess:
            sess.run(tf.global_variables_initializer())
            values = sess.run(losses)
    assert np.all(np.isfinite(values))
    assert values[1] == values[3] == values[5] == 0   # no foreground, no box loss


def test_inference_averages_scores_and_outputs_last_stage_boxes():
    with tf.Graph().as_default():
        head = _build(False, GT_BOXES, GT_LABELS, PROPOSALS)
        boxes = head.decoded_output_boxes()
        scores = head.output_scores()
        stage_scores = [tf.get_default_graph().get_tensor_by_name(
            'cascade_scores_stage{}:0'.format(s)) for s in (1, 2, 3)]
        with tf.Session() as sess:
            sess.run(tf.global_variables_initializer())
            boxes, scores, stage_scores, last = sess.run([boxes, scores, stage_scores, head._stage_boxes[-1]])
    assert boxes.shape == (4, NUM_CATEGORY + 1, 4)
    np.testing.assert_array_equal(boxes, np.repeat(last[:, None], NUM_CATEGORY + 1, axis=1))
    assert np.all(last >= 0) and np.all(last[:, [0, 2]] <= 120) and np.all(last[:, [1, 3]] <= 100)
    np.testing.assert_allclose(scores, np.mean(stage_scores, axis=0), rtol=1e-6)
    np.testing.assert_allclose(scores.sum(axis=1), 1, rtol=1e-5)


def test_scaled_gradient():
    with tf.Graph().as_default():
        x = tf.constant([1., 2.])
        y = _scaled_gradient(1 / 3.)(x)
        grad = tf.gradients(tf.reduce_sum(y * 3), x)[0]
        with tf.Session() as sess:
            y, grad = sess.run([y, grad])
    np.testing.assert_array_equal(y, [1, 2])
    np.testing.assert_allclose(grad, [1, 1], rtol=1e-6)


# Re-matching of a stage's boxes to the gt -------------------------------------------------

MATCH_GT_BOXES = np.array([[0, 0, 10, 10], [20, 0, 30, 10]], np.float32)
MATCH_GT_LABELS = np.array([2, 3], np.int64)
# IoU with (gt0, gt1), by hand (areas 100 each):
MATCH_BOXES = np.array([
    [0, 0, 10, 10],     # (1.0, 0): gt0
    [0, 0, 10, 5],      # (50 / 100 = 0.5, 0): gt0, exactly at 0.5
    [20, 0, 30, 4],     # (0, 40 / 100 = 0.4)
    [22, 0, 30, 10],    # (0, 80 / 100 = 0.8): gt1
    [40, 40, 50, 50],   # (0, 0)
    [5, 0, 25, 10],     # (50 / 250 = 0.2, 0.2): a tie, background anyway
], np.float32)


def _match(boxes, gt_boxes, gt_labels, threshold):
    def fn(boxes_t, gt_boxes_t, gt_labels_t):
        matched = match_boxes_with_gt(boxes_t, gt_boxes_t, gt_labels_t, threshold)
        return matched.labels, matched.fg_inds_wrt_gt
    return run_graph(fn, boxes, gt_boxes, gt_labels)


def test_rematch_labels_boxes_with_their_best_gt_class_at_or_above_the_threshold():
    labels, fg_inds_wrt_gt = _match(MATCH_BOXES, MATCH_GT_BOXES, MATCH_GT_LABELS, 0.5)
    np.testing.assert_array_equal(labels, [2, 2, 0, 3, 0, 0])
    np.testing.assert_array_equal(fg_inds_wrt_gt, [0, 0, 1])
    labels, fg_inds_wrt_gt = _match(MATCH_BOXES, MATCH_GT_BOXES, MATCH_GT_LABELS, 0.6)
    np.testing.assert_array_equal(labels, [2, 0, 0, 3, 0, 0])
    np.testing.assert_array_equal(fg_inds_wrt_gt, [0, 1])


def test_rematch_without_gt_gives_background_through_the_padded_label():
    # best_gt is 0 for every box; the padded trailing label 0 is what the gather reads.
    for threshold in (0.5, 0.0):   # even a 0 threshold makes nothing foreground without gt
        labels, fg_inds_wrt_gt = _match(MATCH_BOXES, np.zeros((0, 4), np.float32), np.zeros((0,), np.int64),
                                        threshold)
        np.testing.assert_array_equal(labels, np.zeros(len(MATCH_BOXES)))
        assert fg_inds_wrt_gt.shape == (0,)


def test_rematch_matches_a_numpy_oracle():
    rng = np.random.RandomState(7)
    xy = rng.uniform(0, 60, (3, 2))
    gt_boxes = np.concatenate([xy, xy + rng.uniform(10, 40, (3, 2))], axis=1).astype(np.float32)
    gt_labels = np.array([1, 3, 2], np.int64)
    # Jittered copies of the gt (mostly foreground) plus random boxes (mostly background).
    jittered = np.repeat(gt_boxes, 4, axis=0) + rng.uniform(-8, 8, (12, 4)).astype(np.float32)
    xy = rng.uniform(0, 80, (8, 2))
    random = np.concatenate([xy, xy + rng.uniform(5, 30, (8, 2))], axis=1)
    boxes = np.concatenate([jittered, random]).astype(np.float32)
    iou = np_box_ops.iou(boxes, gt_boxes)
    for threshold in (0.5, 0.6, 0.7):
        fg = iou.max(axis=1) >= threshold
        labels, fg_inds_wrt_gt = _match(boxes, gt_boxes, gt_labels, threshold)
        np.testing.assert_array_equal(labels, np.where(fg, gt_labels[iou.argmax(axis=1)], 0))
        np.testing.assert_array_equal(fg_inds_wrt_gt, iou.argmax(axis=1)[fg])
        assert 0 < fg.sum() < len(boxes)   # both kinds are present


def test_best_gt_matcher_with_and_without_gt():
    iou = np.array([[0.1, 0.7], [0.5, 0.5], [0.0, 0.2]], np.float32)
    best_gt, fg_mask = run_graph(lambda x: match_boxes_to_best_gt(x, 0.5), iou)
    np.testing.assert_array_equal(best_gt, [1, 0, 1])     # ties go to the first gt
    np.testing.assert_array_equal(fg_mask, [True, True, False])
    best_gt, fg_mask = run_graph(lambda x: match_boxes_to_best_gt(x, 0.0), np.zeros((3, 0), np.float32))
    np.testing.assert_array_equal(best_gt, [0, 0, 0])
    np.testing.assert_array_equal(fg_mask, [False, False, False])
