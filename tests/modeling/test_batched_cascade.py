"""Cascade R-CNN with several images per tower: per-image re-matching and clipping of the stages,
and the batched graph against two one-image runs (the loss rule of NOTES.md, "Several images per
tower"). Settings and helpers as tests/modeling/test_batched_training.py (sampling keeps every roi).
"""
import numpy as np

from utils.tf_compat import tf  # noqa: I001  (must come before tensorpack)

from tensorpack.tfutils.tower import TowerContext

from modeling.model_cascade import CascadeRCNNHead, match_boxes_with_gt
from modeling.model_frcnn import BOX_HEADS, BoxProposals
from tests.modeling import rcnn_helpers as helpers
from tests.modeling.test_batched_training import IMAGES, KEEP_ALL, NO_GT, _batch, _sampled_counts, build_model
from tests.tf_helpers import run_graph
from utils import np_box_ops

STAGES = (1, 2, 3)


# Re-matching a batch of boxes: each box against the gt of its own image only -----------------

# Image 0 has gt 0; image 1 has gt 1 and gt 2, and gt 2 is the same box as image 0's gt 0.
MATCH_GT_BOXES = np.array([[0, 0, 10, 10], [20, 0, 30, 10], [0, 0, 10, 10]], np.float32)
MATCH_GT_LABELS = np.array([1, 2, 3], np.int64)
MATCH_GT_IMAGE = np.array([0, 1, 1], np.int32)
# IoU with (gt0, gt1, gt2), by hand (areas 100 each):
MATCH_BOXES = np.array([
    [0, 0, 10, 10],     # image 0: (1, 0, 1); its own gt0
    [0, 0, 10, 10],     # image 1: (1, 0, 1); gt2 (across images the tie would go to gt0)
    [0, 0, 10, 5],      # image 1: (0.5, 0, 0.5); gt2, exactly at 0.5
    [20, 0, 30, 10],    # image 0: (0, 1, 0); image 0 has no such gt: background
], np.float32)
MATCH_BOX_IMAGE = np.array([0, 1, 1, 0], np.int32)


def _match(boxes, box_image, gt_boxes, gt_labels, gt_image, threshold):
    def fn(*tensors):
        matched = match_boxes_with_gt(*tensors[:3], threshold, box_image_inds=tensors[3], gt_image_inds=tensors[4])
        return matched.labels, matched.fg_inds_wrt_gt, matched.image_inds
    return run_graph(fn, boxes, gt_boxes, gt_labels, box_image, gt_image)


def test_batched_rematch_never_matches_a_gt_of_another_image():
    labels, fg_inds_wrt_gt, image_inds = _match(MATCH_BOXES, MATCH_BOX_IMAGE, MATCH_GT_BOXES, MATCH_GT_LABELS,
                                                MATCH_GT_IMAGE, 0.5)
    np.testing.assert_array_equal(labels, [1, 3, 3, 0])
    np.testing.assert_array_equal(fg_inds_wrt_gt, [0, 2, 2])     # rows of the concatenated gt
    np.testing.assert_array_equal(image_inds, MATCH_BOX_IMAGE)
    labels, fg_inds_wrt_gt, _ = _match(MATCH_BOXES, MATCH_BOX_IMAGE, MATCH_GT_BOXES, MATCH_GT_LABELS,
                                       MATCH_GT_IMAGE, 0.6)
    np.testing.assert_array_equal(labels, [1, 3, 0, 0])
    np.testing.assert_array_equal(fg_inds_wrt_gt, [0, 2])


def test_batched_rematch_with_an_image_without_gt_and_a_batch_without_gt():
    # Only image 1 has gt (gt row 0). Even a 0 threshold makes nothing of image 0 foreground, as
    # for one image without gt; image 1's box of IoU 0 is foreground at 0, as for one image.
    boxes = np.array([[0, 0, 10, 10], [0, 0, 10, 10], [40, 40, 50, 50]], np.float32)
    box_image = np.array([0, 1, 1], np.int32)
    gt_boxes, gt_labels, gt_image = MATCH_GT_BOXES[:1], np.array([2], np.int64), np.array([1], np.int32)
    labels, fg_inds_wrt_gt, _ = _match(boxes, box_image, gt_boxes, gt_labels, gt_image, 0.5)
    np.testing.assert_array_equal(labels, [0, 2, 0])
    np.testing.assert_array_equal(fg_inds_wrt_gt, [0])
    labels, fg_inds_wrt_gt, _ = _match(boxes, box_image, gt_boxes, gt_labels, gt_image, 0.0)
    np.testing.assert_array_equal(labels, [0, 2, 2])
    np.testing.assert_array_equal(fg_inds_wrt_gt, [0, 0])
    labels, fg_inds_wrt_gt, _ = _match(boxes, box_image, np.zeros((0, 4), np.float32), np.zeros((0,), np.int64),
                                       np.zeros((0,), np.int32), 0.0)
    np.testing.assert_array_equal(labels, [0, 0, 0])
    assert fg_inds_wrt_gt.shape == (0,)


def test_batched_rematch_equals_the_one_image_rematch_of_each_image():
    """Against the numpy oracle per image: the box order is kept and fg_inds_wrt_gt are offset
    by the image's first gt row. The images share their gt boxes (jittered), so they overlap."""
    rng = np.random.RandomState(3)
    xy = rng.uniform(0, 60, (3, 2))
    base_gt = np.concatenate([xy, xy + rng.uniform(10, 40, (3, 2))], axis=1)
    gt_per_image = [base_gt[:2], base_gt + rng.uniform(-3, 3, (3, 4))]
    gt_boxes = np.concatenate(gt_per_image).astype(np.float32)
    gt_labels = np.array([1, 2, 3, 1, 2], np.int64)
    gt_image = np.array([0, 0, 1, 1, 1], np.int32)
    boxes = (np.repeat(base_gt, 4, axis=0) + rng.uniform(-4, 4, (12, 4))).astype(np.float32)
    box_image = rng.randint(0, 2, len(boxes)).astype(np.int32)
    for threshold in (0.5, 0.6, 0.7):
        labels, fg_inds_wrt_gt, _ = _match(boxes, box_image, gt_boxes, gt_labels, gt_image, threshold)
        want_labels, want_fg = np.zeros(len(boxes), np.int64), []
        for i, box in enumerate(boxes):
            own = np.flatnonzero(gt_image == box_image[i])
            iou = np_box_ops.iou(box[None], gt_boxes[own])[0]
            if iou.max() >= threshold:
                want_labels[i] = gt_labels[own[iou.argmax()]]
                want_fg.append(own[iou.argmax()])
        np.testing.assert_array_equal(labels, want_labels)
        np.testing.assert_array_equal(fg_inds_wrt_gt, want_fg)
        assert 0 < len(want_fg) < len(boxes)
        # The images' gt overlap: matched across images, some boxes would be foreground of a gt
        # of the other image.
        iou_all = np_box_ops.iou(boxes, gt_boxes)
        assert np.any((gt_image[iou_all.argmax(axis=1)] != box_image) & (iou_all.max(axis=1) >= threshold))


# One cascade head on two images: clipping to each box's image and the stages' image indices -------

def _roi_features(boxes, box_indices):
    """A stand-in for ROIAlign: [R, 4, 4, 2] features from the boxes and their image index."""
    normalized = boxes[:, :2] / 100.0 + tf.cast(box_indices, tf.float32)[:, None]
    return tf.tile(tf.reshape(normalized, [-1, 1, 1, 2]), [1, 4, 4, 1])


def _box_head(scope, features):
    return BOX_HEADS['fastrcnn_2fc_head'](scope, features, conv_dim=0, fc_dim=8, data_format='NHWC')


def test_cascade_head_clips_each_stage_to_the_image_of_its_box_and_keeps_image_indices():
    # Two images of valid (h, w) (160, 160) and (120, 140). Box 1 lies past image 1's width:
    # clipped to x1 = x2 = 140, zero area, dropped from the next stages with its image index.
    proposals = np.array([[100, 100, 150, 150], [145, 10, 155, 30], [100, 100, 150, 150], [10, 10, 40, 40]],
                         np.float32)
    image_inds = np.array([0, 1, 1, 0], np.int32)
    gt_boxes = np.array([[100, 100, 150, 150], [100, 100, 140, 120]], np.float32)
    with tf.Graph().as_default():
        with TowerContext('', is_training=True):
            head = CascadeRCNNHead(
                BoxProposals(tf.constant(proposals), tf.constant([1, 0, 2, 0], tf.int64),
                             tf.constant([0, 1], tf.int64), tf.constant(image_inds)),
                _roi_features, _box_head, tf.constant(gt_boxes), tf.constant([1, 2], tf.int64),
                tf.constant([[160, 160], [120, 140]]), 3, ious=[0.5, 0.6, 0.7],
                bbox_reg_weights=[[10., 10., 5., 5.], [20., 20., 10., 10.], [30., 30., 15., 15.]],
                decode_clip=4.0, training=True, gt_image_inds=tf.constant([0, 1]))
        losses = head.losses()
        graph = tf.get_default_graph()
        stage_boxes = [graph.get_tensor_by_name('cascade_rcnn_stage{}/output_boxes:0'.format(s)) for s in STAGES]
        stage_images = [graph.get_tensor_by_name('cascade_rcnn_stage{}/output_image_inds:0'.format(s))
                        for s in STAGES]
        stage2 = head._heads[1].proposals
        with tf.Session() as sess:
            sess.run(tf.global_variables_initializer())
            losses, stage_boxes, stage_images, labels2, fg2 = sess.run(
                [losses, stage_boxes, stage_images, stage2.labels, stage2.fg_inds_wrt_gt])
    assert np.all(np.isfinite(losses))
    for boxes, images in zip(stage_boxes, stage_images):
        np.testing.assert_array_equal(images, [0, 1, 0])
        # The init's deltas are ~1e-3: each box stays where it was, cut at its own image's border.
        np.testing.assert_allclose(boxes, [[100, 100, 150, 150], [100, 100, 140, 120], [10, 10, 40, 40]], atol=0.5)
        assert boxes[1, 2] <= 140 and boxes[1, 3] <= 120
    # Stage 2 re-matches: box 0 to gt 0 and box 1 (now inside image 1) to gt 1; box 2 background.
    np.testing.assert_array_equal(labels2, [1, 2, 0])
    np.testing.assert_array_equal(fg2, [0, 1])


# Two images whose rois lie on the other image's gt: each of image 0's and image 1's second rois is
# background in its own image and would be foreground (IoU > 0.9) of the other image's gt.
TWO_IMAGES = [
    dict(hw=(100, 120), gt=[[10, 10, 50, 50]], gt_labels=[1], rois=[[10, 10, 50, 50], [60, 60, 90, 88]],
         labels=[1, 0], fg=[0]),
    dict(hw=(95, 100), gt=[[60, 60, 90, 90]], gt_labels=[2], rois=[[60, 60, 90, 90], [12, 10, 50, 50]],
         labels=[2, 0], fg=[0]),
]


def _cascade_head(images):
    """A training CascadeRCNNHead on `images` (TWO_IMAGES entries): one image alone, or several."""
    def const(key, dtype, offsets=None):
        values = [np.asarray(image[key], dtype) + (0 if offsets is None else offset)
                  for image, offset in zip(images, offsets or [0] * len(images))]
        return tf.constant(np.concatenate(values))
    several = len(images) > 1
    gt_offsets = list(np.cumsum([0] + [len(image['gt']) for image in images])[:-1])
    image_of = [np.full(len(image[key]), i, np.int32) for i, image in enumerate(images) for key in ('rois', 'gt')]
    proposals = BoxProposals(const('rois', np.float32), const('labels', np.int64), const('fg', np.int64, gt_offsets),
                             tf.constant(np.concatenate(image_of[0::2])) if several else None)
    with TowerContext('', is_training=True), tf.variable_scope('', reuse=tf.AUTO_REUSE):
        return CascadeRCNNHead(
            proposals, lambda boxes, box_indices=None: _roi_features(boxes, tf.zeros(tf.shape(boxes)[:1], tf.int32)),
            _box_head, const('gt', np.float32), const('gt_labels', np.int64),
            tf.constant([image['hw'] for image in images] if several else images[0]['hw']), 3,
            ious=[0.5, 0.6, 0.7], bbox_reg_weights=[[10., 10., 5., 5.], [20., 20., 10., 10.], [30., 30., 15., 15.]],
            decode_clip=4.0, training=True,
            gt_image_inds=tf.constant(np.concatenate(image_of[1::2])) if several else None)


def test_cascade_head_on_two_images_gives_the_rule_from_each_image_alone():
    """Same variables (reused): each stage's losses are the roi-weighted means of the two images'
    (2 rois each: the plain means), and each stage's labels are those of each image alone."""
    with tf.Graph().as_default():
        tf.set_random_seed(0)
        heads = [_cascade_head(TWO_IMAGES)] + [_cascade_head([image]) for image in TWO_IMAGES]
        fetches = [[h.losses() for h in heads], [[stage.proposals.labels for stage in h._heads] for h in heads]]
        assert len(tf.trainable_variables()) == 3 * 8      # one set, shared by the three heads
        with tf.Session() as sess:
            sess.run(tf.global_variables_initializer())
            (batch, *singles), (batch_labels, *single_labels) = sess.run(fetches)
    # The later stages' boxes sit on their gt: their small box losses carry the float32 rounding of
    # the box head (a batch of 4 rows against 2), ~1e-6; a box matched across images moves them ~0.5.
    np.testing.assert_allclose(batch, np.mean(singles, axis=0), rtol=2e-4, atol=1e-5)
    for stage in range(3):
        np.testing.assert_array_equal(batch_labels[stage], np.concatenate([labels[stage] for labels in single_labels]))
    np.testing.assert_array_equal(batch_labels[1], [1, 0, 2, 0])     # the second rois stay background
    assert all(v > 0 for v in batch[1::2])                           # box losses of every stage


# The batched graph against the one-image graphs -------------------------------------------

def _loss_name(stage, loss):
    return 'cascade_loss_stage{}/fastrcnn_losses/{}'.format(stage, loss)


def _run(batch_size, datapoint, values=None):
    """Build the cascade training graph of `batch_size` images, load `values` or initialize; returns
    (variable values, {loss: value}, {stage: rois of each image}, {stage: foreground rois in all})."""
    with tf.Graph().as_default():
        tf.set_random_seed(1)
        model = build_model(batch_size)
        inputs = helpers.placeholders(model)
        with TowerContext('', is_training=True):
            model.build_graph(*[inputs[name] for name in model.input_names])
        graph = tf.get_default_graph()
        losses = helpers.loss_tensors()
        variables = {v.op.name: v for v in tf.trainable_variables()}
        # Stage 1's rois are those sampled per image; a later stage runs on the boxes the stage
        # before it kept, whose images are output_image_inds (one image: all of them).
        rois = {1: [size for size, _ in _sampled_counts()]}
        for stage in STAGES[1:]:
            scope = 'cascade_rcnn_stage{}/'.format(stage - 1)
            if batch_size == 1:
                rois[stage] = [tf.shape(graph.get_tensor_by_name(scope + 'output_boxes:0'))[0]]
            else:
                image_inds = graph.get_tensor_by_name(scope + 'output_image_inds:0')
                rois[stage] = [tf.reduce_sum(tf.cast(tf.equal(image_inds, i), tf.int32)) for i in range(batch_size)]
        fgs = {stage: graph.get_tensor_by_name(_loss_name(stage, 'num_fg_label') + ':0') for stage in STAGES}
        with tf.Session() as sess:
            sess.run(tf.global_variables_initializer())
            if values is not None:
                # One run of all the initializers fed with the values (var.load runs once per variable).
                sess.run([var.initializer for var in variables.values()],
                         feed_dict={var.initializer.inputs[1]: values[name] for name, var in variables.items()})
            return sess.run([variables, losses, rois, fgs], feed_dict=helpers.feed(inputs, datapoint))


def _check_stages_against_singles(datapoints):
    helpers.configure('FPN.CASCADE=True', *KEEP_ALL)
    datapoints = [helpers.synthetic_datapoint(**kwargs) for kwargs in datapoints]
    batch = _run(2, _batch(datapoints))
    singles = [_run(1, dp, batch[0]) for dp in datapoints]
    for stage in STAGES:
        # Each image brings the rois (and foreground rois) to each stage that it brings alone.
        assert batch[2][stage] == [s[2][stage][0] for s in singles], stage
        assert batch[3][stage] == sum(s[3][stage] for s in singles), stage
        rois = np.array([s[2][stage][0] for s in singles], np.float64)
        for loss in ('label_loss', 'box_loss'):
            key = _loss_name(stage, loss)
            predicted = np.dot(rois, [s[1][key] for s in singles]) / rois.sum()
            np.testing.assert_allclose(batch[1][key], predicted, rtol=2e-4, atol=1e-6, err_msg=key)
    assert all(np.isfinite(v) for v in batch[1].values())
    return batch, singles


def test_batched_cascade_gives_each_stage_the_rule_from_the_single_image_runs():
    batch, singles = _check_stages_against_singles(IMAGES)
    # Not trivially equal: both images have foreground in every stage and differ in their losses.
    assert all(s[3][stage] > 0 for s in singles for stage in STAGES)
    assert singles[0][1][_loss_name(3, 'box_loss')] != singles[1][1][_loss_name(3, 'box_loss')]


def test_batched_cascade_with_an_image_without_gt():
    batch, singles = _check_stages_against_singles([IMAGES[0], NO_GT])
    assert all(singles[1][3][stage] == 0 for stage in STAGES)       # the empty image has no foreground
    assert all(singles[1][2][stage][0] > 0 for stage in STAGES)     # but rois in every stage
