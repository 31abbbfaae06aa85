"""Tests of modeling/model_fpn.py: pyramid variables and numerics, level mapping,
multi-level ROIAlign, losses and proposals."""
import numpy as np
import pytest

from utils.tf_compat import tf
from modeling import model_fpn
from modeling.model_box import RPNAnchors
from modeling.model_rpn import rpn_losses
from tests.modeling.test_model_box import roi_align_oracle
from tests.tf_helpers import run_graph
from tensorpack.tfutils.tower import TowerContext

# c2..c5 of a 32x32 image (strides 4..32) with 3, 4, 5, 6 channels.
C_SIZES = (8, 4, 2, 1)
C_CHANNELS = (3, 4, 5, 6)


def _c2345(data_format, channels=C_CHANNELS, seed=0):
    rng = np.random.RandomState(seed)
    features = [rng.normal(size=(1, s, s, c)).astype(np.float32) for s, c in zip(C_SIZES, channels)]
    return features if data_format == 'NHWC' else [f.transpose(0, 3, 1, 2) for f in features]


def _expected_variables(num_channel, use_gn):
    expected = {}
    for level, cin in zip((2, 3, 4, 5), C_CHANNELS):
        expected['fpn/lateral_1x1_c{}/W'.format(level)] = [1, 1, cin, num_channel]
        expected['fpn/posthoc_3x3_p{}/W'.format(level)] = [3, 3, num_channel, num_channel]
        # tensorpack's FPN convs keep their bias even when GN follows.
        expected['fpn/lateral_1x1_c{}/b'.format(level)] = [num_channel]
        expected['fpn/posthoc_3x3_p{}/b'.format(level)] = [num_channel]
        if use_gn:
            for name in ('gn_c{}', 'gn_p{}'):
                expected['fpn/' + name.format(level) + '/gamma'] = [num_channel]
                expected['fpn/' + name.format(level) + '/beta'] = [num_channel]
    return expected


def _run_fpn(num_channel, use_gn):
    found = {}

    def fn(*features):
        for f, c in zip(features, C_CHANNELS):
            f.set_shape([1, None, None, c])
        outputs = model_fpn.fpn_model('fpn', list(features), num_channel, use_gn, 'NHWC')
        found.update({v.op.name: v.shape.as_list() for v in tf.global_variables()})
        return outputs
    return run_graph(fn, *_c2345('NHWC')), found


@pytest.mark.parametrize('use_gn', [False, True])
def test_fpn_model_variables_and_shapes(use_gn):
    num_channel = 32 if use_gn else 4     # GroupNorm uses 32 groups
    outputs, found = _run_fpn(num_channel, use_gn)
    assert found == _expected_variables(num_channel, use_gn)
    assert [o.shape for o in outputs] == [(1, s, s, num_channel) for s in C_SIZES + (1,)]
    np.testing.assert_array_equal(outputs[4], outputs[3][:, ::2, ::2])


def test_fpn_model_nchw_builds_same_variables():
    # No NCHW conv on CPU: build the graph and compare variables and static channels.
    with tf.Graph().as_default(), TowerContext('', is_training=False):
        features = [tf.placeholder(tf.float32, [1, c, None, None]) for c in C_CHANNELS]
        outputs = model_fpn.fpn_model('fpn', features, 32, True, 'NCHW')
        found = {v.op.name: v.shape.as_list() for v in tf.global_variables()}
    assert found == _expected_variables(32, True)
    assert [o.shape.as_list()[:2] for o in outputs] == [[1, 32]] * 5


def _upsample_np(x_nhwc):
    return x_nhwc.repeat(2, axis=1).repeat(2, axis=2)


@pytest.mark.parametrize('data_format', ['NHWC', 'NCHW'])
def test_upsample2x_is_nearest_neighbour(data_format):
    x = np.arange(2 * 3 * 2, dtype=np.float32).reshape(1, 2, 3, 2)
    feed = x if data_format == 'NHWC' else x.transpose(0, 3, 1, 2)
    out = run_graph(lambda t: model_fpn._upsample2x(t, data_format), feed)
    if data_format == 'NCHW':
        out = out.transpose(0, 2, 3, 1)
    np.testing.assert_array_equal(out, _upsample_np(x))


def test_fpn_top_down_sum():
    # One channel per level, lateral 1x1 = 1, posthoc 3x3 = identity (centre tap 1), zero
    # biases: then p5 = c5 and pL = cL + upsample(lateral sum of level L+1).
    features = _c2345('NHWC', channels=(1, 1, 1, 1))
    with tf.Graph().as_default(), TowerContext('', is_training=False):
        outputs = model_fpn.fpn_model('fpn', [tf.constant(f) for f in features], 1, False, 'NHWC')
        identity3x3 = np.zeros((3, 3, 1, 1), np.float32)
        identity3x3[1, 1] = 1
        assigns = []
        for v in tf.global_variables():
            value = np.zeros(v.shape.as_list(), np.float32)
            if 'lateral' in v.op.name and v.op.name.endswith('/W'):
                value[:] = 1
            elif v.op.name.endswith('/W'):
                value = identity3x3
            assigns.append(v.assign(value))
        with tf.Session() as sess:
            sess.run(assigns)
            p2, p3, p4, p5, _ = sess.run(outputs)
    c2, c3, c4, c5 = features
    sum4 = c4 + _upsample_np(c5)
    sum3 = c3 + _upsample_np(sum4)
    np.testing.assert_allclose(p5, c5, rtol=1e-6)
    np.testing.assert_allclose(p4, sum4, rtol=1e-6)
    np.testing.assert_allclose(p3, sum3, rtol=1e-6)
    np.testing.assert_allclose(p2, c2 + _upsample_np(sum3), rtol=1e-5, atol=1e-6)


def _square(side, x=0., y=0.):
    return [x, y, x + side, y + side]


def test_fpn_map_rois_to_levels():
    # level = floor(4 + log2(side / 224)) for square boxes, clamped to 2..5:
    #   112  -> 4 + log2(0.5)   = 3
    #   224  -> 4 + log2(1)     = 4
    #   448  -> 4 + log2(2)     = 5
    #   1000 -> 4 + log2(4.46)  = 6.16 -> 6, clamped to 5
    #   10   -> 4 + log2(0.045) = -0.5 -> clamped to 2;  zero area -> log(1e-6) -> 2
    boxes = np.array([_square(112), _square(224), _square(448), _square(1000), _square(10), _square(0)],
                     np.float32)
    level_ids, level_boxes = run_graph(model_fpn.fpn_map_rois_to_levels, boxes)
    assert [ids.tolist() for ids in level_ids] == [[4, 5], [0], [1], [2, 3]]
    for ids, lvl_boxes in zip(level_ids, level_boxes):
        np.testing.assert_array_equal(lvl_boxes, boxes[ids])


# Boxes of a 640x640 image in shuffled level order: sides 300 -> p4, 20 -> p2, 600 -> p5,
# 150 -> p3, 40 -> p2.
MULTILEVEL_BOXES = np.array([_square(300, 17, 40), _square(20, 3, 610), _square(600, 30, 5),
                             _square(150, 480, 300), _square(40, 500, 1)], np.float32)
MULTILEVEL_LEVELS = [4, 2, 5, 3, 2]


@pytest.mark.parametrize('data_format', ['NHWC', 'NCHW'])
def test_multilevel_roi_align_matches_oracle_in_input_order(data_format):
    rng = np.random.RandomState(0)
    p2345 = [rng.normal(size=(1, 640 // s, 640 // s, 2)).astype(np.float32) for s in (4, 8, 16, 32)]
    expected = np.concatenate([
        roi_align_oracle(p2345[level - 2][0], box[None] / 2 ** level, 3)
        for box, level in zip(MULTILEVEL_BOXES, MULTILEVEL_LEVELS)])
    feed = p2345 if data_format == 'NHWC' else [p.transpose(0, 3, 1, 2) for p in p2345]
    out = run_graph(lambda b, *ps: model_fpn.multilevel_roi_align(list(ps), b, 3, data_format),
                    MULTILEVEL_BOXES, *feed)
    if data_format == 'NCHW':
        out = out.transpose(0, 2, 3, 1)
    np.testing.assert_allclose(out, expected, atol=1e-4)


def test_multilevel_roi_align_no_boxes():
    p2345 = [np.ones((1, 640 // s, 640 // s, 2), np.float32) for s in (4, 8, 16, 32)]
    out = run_graph(lambda b, *ps: model_fpn.multilevel_roi_align(list(ps), b, 3, 'NHWC'),
                    np.zeros((0, 4), np.float32), *p2345)
    assert out.shape == (0, 3, 3, 2)


def test_multilevel_rpn_losses_sum_levels():
    rng = np.random.RandomState(0)
    levels = []
    for size in (2, 1):     # two levels, one anchor per cell
        labels = rng.randint(-1, 2, size=(size, size, 1)).astype(np.int32)
        anchors = np.tile(np.array([0, 0, 10, 10], np.float32), (size, size, 1, 1))
        gt = anchors + rng.uniform(0, 2, size=anchors.shape).astype(np.float32)
        levels.append((labels, anchors, gt, rng.normal(size=(size, size, 1)).astype(np.float32),
                       rng.normal(size=(size, size, 1, 4)).astype(np.float32)))

    def fn():
        anchors = [RPNAnchors(tf.constant(a), tf.constant(lab), tf.constant(g)) for lab, a, g, _, _ in levels]
        label_logits = [tf.constant(lv[3]) for lv in levels]
        box_logits = [tf.constant(lv[4]) for lv in levels]
        total = model_fpn.multilevel_rpn_losses(anchors, label_logits, box_logits, 8)
        separate = [rpn_losses(a.gt_labels, a.encoded_gt_boxes(), ll, bl, 8)
                    for a, ll, bl in zip(anchors, label_logits, box_logits)]
        return total, separate
    total, separate = run_graph(fn)
    np.testing.assert_allclose(total, np.sum(separate, axis=0), rtol=1e-6)


def _proposal_inputs():
    # p2: 1x2 cells, one anchor each; p3: one cell.
    boxes = [np.array([[[[0, 0, 10, 10]], [[1, 1, 11, 11]]]], np.float32),     # IoU 81/119, both survive NMS
             np.array([[[[20, 20, 30, 30]]]], np.float32)]
    logits = [np.array([[[1.0], [0.5]]], np.float32), np.array([[[0.8]]], np.float32)]
    return boxes, logits


def _fpn_proposals(mode, boxes, logits, **topk):
    def fn(*arrays):
        return model_fpn.generate_fpn_proposals(
            list(arrays[:2]), list(arrays[2:]), tf.constant([40, 40]), proposal_mode=mode,
            nms_thresh=0.7, min_size=0.0, **topk)
    return run_graph(fn, *boxes, *logits)


def test_generate_fpn_proposals_level_mode():
    # per_level_topk=1: p2 keeps its best (score 1.0), p3 its only box (0.8); then the best
    # one overall is kept.
    boxes, scores = _fpn_proposals('Level', *_proposal_inputs(), pre_nms_topk=10, post_nms_topk=10,
                                   per_level_topk=1)
    np.testing.assert_allclose(boxes, [[0, 0, 10, 10]])
    np.testing.assert_allclose(scores, [1.0])


def test_generate_fpn_proposals_joint_mode():
    boxes, scores = _fpn_proposals('Joint', *_proposal_inputs(), pre_nms_topk=10, post_nms_topk=2,
                                   per_level_topk=1)
    np.testing.assert_allclose(boxes, [[0, 0, 10, 10], [20, 20, 30, 30]])
    np.testing.assert_allclose(scores, [1.0, 0.8])


@pytest.mark.parametrize('mode', ['Level', 'Joint'])
def test_generate_fpn_proposals_no_boxes(mode):
    empty_boxes = [np.zeros((0, 2, 1, 4), np.float32), np.zeros((0, 0, 1, 4), np.float32)]
    empty_logits = [np.zeros((0, 2, 1), np.float32), np.zeros((0, 0, 1), np.float32)]
    boxes, scores = _fpn_proposals(mode, empty_boxes, empty_logits, pre_nms_topk=10,
                                   post_nms_topk=10, per_level_topk=10)
    assert boxes.shape == (0, 4) and scores.shape == (0,)


def test_generate_fpn_proposals_unknown_mode():
    with pytest.raises(ValueError, match="'Joint', 'Level'"):
        _fpn_proposals('Fancy', *_proposal_inputs(), pre_nms_topk=10, post_nms_topk=10, per_level_topk=1)


def test_multilevel_roi_align_gradient_reaches_every_level():
    # Every output value is a mean of bilinear samples whose weights sum to 1 and all fall on
    # the map (the padded border passes its share to the edge pixel), so d(sum of outputs) /
    # d(features) sums to R * S * S * C over the four levels; each level gets its boxes' share.
    p2345 = [np.ones((1, 640 // s, 640 // s, 2), np.float32) for s in (4, 8, 16, 32)]

    def graph(boxes, *features):
        out = model_fpn.multilevel_roi_align(list(features), boxes, 3, 'NHWC')
        return [tf.reduce_sum(g) for g in tf.gradients(tf.reduce_sum(out), list(features))]
    per_level = run_graph(graph, MULTILEVEL_BOXES, *p2345)
    boxes_per_level = [MULTILEVEL_LEVELS.count(level) for level in (2, 3, 4, 5)]
    np.testing.assert_allclose(per_level, [n * 3 * 3 * 2 for n in boxes_per_level], rtol=1e-5)
