"""RPN anchor targets of dataflow/anchor_targets.py on hand-made examples."""
import numpy as np
import pytest

from dataflow import anchor_targets
from utils import np_box_ops

PARAMS = anchor_targets.AnchorLabelParams(batch_per_im=256, fg_ratio=0.5, positive_thresh=0.7, negative_thresh=0.3,
                                crowd_overlap_thresh=0.7)


# anchor targets on hand-made examples -------------------------------------------------------
GT = np.array([[0, 0, 10, 10], [20, 0, 30, 10]], np.float32)
CROWD = np.array([[40, 0, 60, 20]], np.float32)
ANCHORS = np.array([
    [0, 0, 10, 10],    # a0: IoU 1 with gt0                           -> fg (best for gt0, >= 0.7)
    [0, 0, 10, 12],    # a1: IoU 100 / 120 = 0.83 with gt0            -> fg (>= 0.7)
    [22, 0, 32, 10],   # a2: IoU 80 / 120 = 0.67 with gt1, its best   -> fg (best anchor of gt1)
    [0, 0, 20, 10],    # a3: IoU 100 / 200 = 0.5 with gt0             -> ignored (between 0.3 and 0.7)
    [42, 2, 52, 12],   # a4: no gt overlap, but inside the crowd box  -> ignored (ioa 1 > 0.7)
    [60, 60, 70, 70],  # a5: far from everything                      -> bg
    [5, 20, 15, 30],   # a6: far from everything                      -> bg
], np.float32)
EXPECTED_LABELS = [1, 1, 1, -1, -1, 0, 0]


def test_anchor_labels_hand_example():
    labels, matched = anchor_targets.get_anchor_labels(ANCHORS, GT, CROWD, PARAMS, np.random.default_rng(0))
    assert labels.dtype == np.int32 and matched.dtype == np.float32
    assert labels.tolist() == EXPECTED_LABELS
    np.testing.assert_array_equal(matched[:3], GT[[0, 0, 1]])
    np.testing.assert_array_equal(matched[3:], np.zeros((4, 4)))


def test_gt_overlapping_no_anchor_does_not_make_foreground():
    # gt2 overlaps no anchor, so every anchor ties at IoU 0 as "its best"; that must not make
    # the ignored a3 (IoU 0.5 with gt0) foreground.
    gt = np.concatenate([GT, [[100, 100, 101, 101]]]).astype(np.float32)
    labels, _ = anchor_targets.get_anchor_labels(ANCHORS, gt, CROWD, PARAMS, np.random.default_rng(0))
    assert labels.tolist() == EXPECTED_LABELS


def test_anchor_sampling_respects_batch_and_fg_ratio():
    params = PARAMS._replace(batch_per_im=2, fg_ratio=0.5)
    labels, matched = anchor_targets.get_anchor_labels(ANCHORS, GT, CROWD, params, np.random.default_rng(3))
    # at most 2 * 0.5 = 1 fg kept; bg fill the remaining 2 - 1 = 1; the rest is ignored
    assert (labels == 1).sum() == 1 and (labels == 0).sum() == 1
    assert np.all(matched[labels != 1] == 0)


def test_no_gt_gives_background_only_and_no_background_is_malformed():
    labels, matched = anchor_targets.get_anchor_labels(ANCHORS, GT[:0], CROWD, PARAMS, np.random.default_rng(0))
    assert labels.tolist() == [0, 0, 0, 0, -1, 0, 0] and not matched.any()   # a4 is under the crowd box
    with pytest.raises(anchor_targets.MalformedData, match='background'):
        anchor_targets.get_anchor_labels(ANCHORS[:3], GT, CROWD, PARAMS, np.random.default_rng(0))


def test_multilevel_targets_ignore_outside_anchors_and_sample_across_levels():
    grids = np_box_ops.get_all_anchors_fpn((4, 8), (8, 16), (1.,), max_size=32)   # [8,8,1,4], [4,4,1,4]
    boxes = np.array([[4, 4, 12, 12], [14, 10, 24, 20]], np.float32)   # a gt box and a crowd box
    params = PARAMS._replace(batch_per_im=6)
    outputs = anchor_targets.get_multilevel_rpn_anchor_input((20, 24), boxes, np.array([0, 1]), grids, params,
                                                   np.random.default_rng(0))
    assert [(lab.shape, box.shape) for lab, box in outputs] == [((8, 8, 1), (8, 8, 1, 4)), ((4, 4, 1), (4, 4, 1, 4))]
    all_labels = np.concatenate([lab.ravel() for lab, _ in outputs])
    all_anchors = np.concatenate([grid.reshape((-1, 4)) for grid in grids])
    outside = ((all_anchors[:, :2] < 0).any(axis=1) | (all_anchors[:, 2] > 24) | (all_anchors[:, 3] > 20))
    assert np.all(all_labels[outside] == -1)
    assert 0 < (all_labels == 1).sum() <= 3 and (all_labels >= 0).sum() == 6
    for lab, box in outputs:   # fg anchors regress to the non-crowd gt box only
        assert np.all(box[lab == 1] == boxes[0])


def test_match_to_best_gt_picks_the_highest_iou_and_thresholds_it():
    # boxes: b0 IoU 0.2 with gt0 and 0.6 with gt1 -> gt1, fg at 0.5; b1 IoU 0.5 with gt0 only -> gt0,
    # fg exactly at the threshold; b2 overlaps nothing -> gt0 (first of the tie at 0), not fg.
    ious = np.array([[0.2, 0.5, 0.0],
                     [0.6, 0.1, 0.0]])
    best_gt, best_iou, is_fg = anchor_targets.match_to_best_gt(ious, 0.5)
    assert best_gt.tolist() == [1, 0, 0]
    np.testing.assert_array_equal(best_iou, [0.6, 0.5, 0.0])
    assert is_fg.tolist() == [True, True, False]
    assert anchor_targets.match_to_best_gt(ious, 0.55)[2].tolist() == [True, False, False]


# the feature-map size of an image, against the real backbone graph -------------------------
def test_feature_map_hw_by_hand():
    # FPN: 50 x 70 pads to 64 x 96; p6 is p5 (2 x 3) subsampled: ceil(3 / 2) = 2.
    assert [anchor_targets.feature_map_hw((50, 70), s, 32) for s in (4, 8, 16, 32, 64)] == [
        (16, 24), (8, 12), (4, 6), (2, 3), (1, 2)]
    # C4 rounds down at each stride-2 layer: 67 -> 33 -> 16 -> 8 -> 4, 99 -> 49 -> 24 -> 12 -> 6.
    assert anchor_targets.feature_map_hw((67, 99), 16) == (4, 6)


SIZES_HW = [(64, 96), (65, 97), (79, 47), (60, 33), (96, 128), (111, 75)]


def _feature_shapes(build_fn, sizes_hw):
    """[per size, the (h, w) of every output of build_fn(image [1, H, W, 3])], one graph for all sizes."""
    from tensorpack.tfutils.tower import TowerContext
    from utils.tf_compat import tf

    with tf.Graph().as_default():
        image = tf.placeholder(tf.float32, [1, None, None, 3])
        with TowerContext('', is_training=False):
            outputs = [tf.shape(x)[1:3] for x in build_fn(image)]
        with tf.Session() as sess:
            sess.run(tf.global_variables_initializer())
            return [[tuple(hw) for hw in sess.run(outputs, {image: np.zeros((1,) + size + (3,), np.float32)})]
                    for size in sizes_hw]


@pytest.mark.parametrize('stride_1x1,tf_pad_mode', [(False, False), (True, True)])
def test_feature_map_hw_matches_the_c4_backbone(stride_1x1, tf_pad_mode):
    from modeling import backbone

    def c4(image):
        return [backbone.resnet_c4_backbone(image, [1, 1, 1], norm='None', freeze_at=0, freeze_affine=False,
                                            tf_pad_mode=tf_pad_mode, stride_1x1=stride_1x1, data_format='NHWC')]
    shapes = _feature_shapes(c4, SIZES_HW)
    assert shapes == [[anchor_targets.feature_map_hw(size, 16)] for size in SIZES_HW]


def test_feature_map_hw_matches_the_fpn_levels():
    from modeling import backbone
    from modeling.model_fpn import fpn_model

    def fpn(image):
        c2345 = backbone.resnet_fpn_backbone(image, [1, 1, 1, 1], norm='None', freeze_at=0, freeze_affine=False,
                                             tf_pad_mode=False, stride_1x1=False, data_format='NHWC',
                                             resolution_requirement=32)
        return fpn_model('fpn', list(c2345), 8, False, 'NHWC')
    shapes = _feature_shapes(fpn, SIZES_HW)
    assert shapes == [[anchor_targets.feature_map_hw(size, stride, 32) for stride in (4, 8, 16, 32, 64)]
                      for size in SIZES_HW]
