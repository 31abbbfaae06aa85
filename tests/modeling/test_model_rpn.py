"""Tests of modeling/model_rpn.py: head variables and layout, losses, proposals."""
import numpy as np
import pytest

from utils.tf_compat import tf
from modeling import model_rpn
from tests.tf_helpers import run_graph
from tensorpack.tfutils.tower import TowerContext

CHANNEL, NUM_ANCHORS = 8, 3


def _variable_shapes():
    return {v.op.name: v.shape.as_list() for v in tf.global_variables()}


EXPECTED_HEAD_VARIABLES = {
    'rpn/conv0/W': [3, 3, CHANNEL, CHANNEL], 'rpn/conv0/b': [CHANNEL],
    'rpn/class/W': [1, 1, CHANNEL, NUM_ANCHORS], 'rpn/class/b': [NUM_ANCHORS],
    'rpn/box/W': [1, 1, CHANNEL, 4 * NUM_ANCHORS], 'rpn/box/b': [4 * NUM_ANCHORS],
}


def test_rpn_head_variables_shared_across_levels_and_output_shapes():
    found = {}

    def fn(level_a, level_b):
        outputs = []
        for f in (level_a, level_b):    # two FPN levels, one set of variables
            f.set_shape([1, None, None, CHANNEL])
            outputs.extend(model_rpn.rpn_head('rpn', f, CHANNEL, NUM_ANCHORS, 'NHWC'))
        found.update(_variable_shapes())
        return outputs
    label_a, box_a, label_b, box_b = run_graph(
        fn, np.ones((1, 5, 4, CHANNEL), np.float32), np.ones((1, 3, 2, CHANNEL), np.float32))
    assert found == EXPECTED_HEAD_VARIABLES
    assert label_a.shape == (1, 5, 4, NUM_ANCHORS) and box_a.shape == (1, 5, 4, NUM_ANCHORS, 4)
    assert label_b.shape == (1, 3, 2, NUM_ANCHORS) and box_b.shape == (1, 3, 2, NUM_ANCHORS, 4)


def test_rpn_head_nchw_builds_same_variables():
    # Stock CPU TensorFlow has no NCHW conv kernel, so NCHW is only built here.
    with tf.Graph().as_default(), TowerContext('', is_training=False):
        f = tf.placeholder(tf.float32, [1, CHANNEL, None, None])
        label_logits, box_logits = model_rpn.rpn_head('rpn', f, CHANNEL, NUM_ANCHORS, 'NCHW')
        assert _variable_shapes() == EXPECTED_HEAD_VARIABLES
        assert label_logits.shape.ndims == 4 and box_logits.shape.ndims == 5


def test_rpn_head_box_channels_are_anchor_major():
    # With a zero input the outputs equal the biases; box bias 0..4A-1 must come out as
    # box_logits[image, y, x, a, k] == 4a + k.
    with tf.Graph().as_default(), TowerContext('', is_training=False):
        f = tf.zeros([1, 2, 2, CHANNEL])
        _, box_logits = model_rpn.rpn_head('rpn', f, CHANNEL, NUM_ANCHORS, 'NHWC')
        box_bias = [v for v in tf.global_variables() if v.op.name == 'rpn/box/b'][0]
        with tf.Session() as sess:
            sess.run(tf.global_variables_initializer())
            sess.run(box_bias.assign(np.arange(4 * NUM_ANCHORS, dtype=np.float32)))
            out = sess.run(box_logits)
    np.testing.assert_array_equal(out[0, 1, 0], np.arange(4 * NUM_ANCHORS).reshape(NUM_ANCHORS, 4))


def _sigmoid_ce(label, logit):
    return max(logit, 0) - logit * label + np.log1p(np.exp(-abs(logit)))


def _smooth_l1(diff, beta=1 / 9.):
    diff = np.abs(diff)
    return np.where(diff < beta, 0.5 * diff ** 2 / beta, diff - 0.5 * beta).sum()


def _losses(labels, targets, label_logits, box_logits, batch_per_im=4):
    def fn(lab, tgt, ll, bl):
        losses = model_rpn.rpn_losses(lab, tgt, ll, bl, batch_per_im)
        return losses + [tf.gradients(tf.add_n(losses), [ll])[0]]
    return run_graph(fn, labels, targets, label_logits, box_logits, training=True)


def test_rpn_losses_values():
    # A 2x2 map, one anchor per cell: labels fg, bg / ignore, bg.
    labels = np.array([[[1], [0]], [[-1], [0]]], np.int32)
    label_logits = np.array([[[0.5], [-1.0]], [[3.0], [2.0]]], np.float32)
    targets = np.zeros((2, 2, 1, 4), np.float32)
    targets[0, 0, 0] = [0.1, -0.2, 0.03, 0.5]
    box_logits = np.full((2, 2, 1, 4), 0.05, np.float32)
    label_loss, box_loss, _ = _losses(labels, targets, label_logits, box_logits)
    # Sums over the sampled anchors divided by batch_per_im = 4 (not by the sample count).
    expected_label = (_sigmoid_ce(1, 0.5) + _sigmoid_ce(0, -1.0) + _sigmoid_ce(0, 2.0)) / 4
    expected_box = _smooth_l1(box_logits[0, 0, 0] - targets[0, 0, 0]) / 4
    assert label_loss == pytest.approx(expected_label, rel=1e-5)
    assert box_loss == pytest.approx(expected_box, rel=1e-5)


def test_rpn_losses_without_fg_anchors():
    # Only bg anchors; their encoded targets are -inf (all-zero gt), as the dataflow makes them.
    labels = np.array([[[0], [-1]]], np.int32)
    targets = np.full((1, 2, 1, 4), -np.inf, np.float32)
    label_loss, box_loss, grad = _losses(labels, targets, np.ones((1, 2, 1), np.float32),
                                         np.ones((1, 2, 1, 4), np.float32))
    assert box_loss == 0
    assert label_loss == pytest.approx(_sigmoid_ce(0, 1.0) / 4, rel=1e-5)
    assert np.all(np.isfinite(grad))


def test_rpn_losses_without_sampled_anchors():
    labels = np.full((1, 2, 1), -1, np.int32)
    label_loss, box_loss, grad = _losses(labels, np.zeros((1, 2, 1, 4), np.float32),
                                         np.ones((1, 2, 1), np.float32), np.ones((1, 2, 1, 4), np.float32))
    assert label_loss == 0 and box_loss == 0
    np.testing.assert_array_equal(grad, 0)


PROPOSAL_BOXES = np.array([
    [0, 0, 10, 10],       # A, score 3
    [1, 1, 10, 10],       # B, score 2: IoU with A 81/100 > 0.7 -> suppressed
    [20, 20, 30, 30],     # C, score 1
    [0, 0, 0.5, 20],      # D, score 5: 0.5 wide, not above min_size 1 -> dropped
    [-5, -5, 8, 8],       # E, score 0: clipped to [0, 0, 8, 8], IoU with A 0.64 -> kept
], np.float32)
PROPOSAL_SCORES = np.array([3, 2, 1, 5, 0], np.float32)


@pytest.mark.parametrize('pre_nms_topk, post_nms_topk, expected_rows', [
    (10, 10, [0, 2, 4]),
    (10, 2, [0, 2]),
    (2, 10, [0]),         # top-2 scores are D and A; D is too thin
])
def test_generate_rpn_proposals(pre_nms_topk, post_nms_topk, expected_rows):
    boxes, scores = run_graph(
        lambda b, s, hw: model_rpn.generate_rpn_proposals(b, s, hw, pre_nms_topk, post_nms_topk, 0.7, 1.0),
        PROPOSAL_BOXES, PROPOSAL_SCORES, np.array([40, 40], np.int32))
    clipped = np.clip(PROPOSAL_BOXES, 0, 40)
    np.testing.assert_allclose(boxes, clipped[expected_rows])
    np.testing.assert_allclose(scores, PROPOSAL_SCORES[expected_rows])


def test_generate_rpn_proposals_no_boxes():
    boxes, scores = run_graph(
        lambda b, s, hw: model_rpn.generate_rpn_proposals(b, s, hw, 100, 50, 0.7, 0.0),
        np.zeros((0, 4), np.float32), np.zeros((0,), np.float32), np.array([40, 40], np.int32))
    assert boxes.shape == (0, 4) and scores.shape == (0,)
