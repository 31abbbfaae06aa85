"""Fast R-CNN: proposal sampling, the box heads, their outputs, losses and final detections.

Shape shorthand:
    N  proposals (or sampled rois), M ground-truth boxes, K categories (foreground classes),
    C = K + 1 classes including background (class 0), F sampled foreground rois,
    S  pooled ROI feature size (7 for FPN), D head feature dimension.
Boxes are float32 x1y1x2y2 in pixels of the resized image (see model_box.py).
"""
from collections import namedtuple
from functools import cached_property

import numpy as np

from utils.tf_compat import tf  # noqa: I001  (must come before tensorpack)

from tensorpack.models import Conv2D, FullyConnected, layer_register
from tensorpack.tfutils.argscope import argscope
from tensorpack.tfutils.scope_utils import under_name_scope
from tensorpack.tfutils.summary import add_moving_summary

from .model_box import decode_bbox_target, encode_bbox_target, pairwise_iou
from .norms import GroupNorm


class BoxProposals(namedtuple('_BoxProposals', ['boxes', 'labels', 'fg_inds_wrt_gt', 'image_inds'],
                              defaults=(None, None, None))):
    """Rois and, in training, their targets.

    boxes: float32 [N, 4]; labels: int64 [N], 0 = background, 1..K (None at inference);
    fg_inds_wrt_gt: int64 [F], the gt box matched by each foreground roi, in roi order.
    image_inds: int32 [N], the image of the batch each roi belongs to (None: one image, 0).
    """

    @cached_property
    def fg_inds(self):
        """int64 [F]: indices of the foreground rois."""
        return tf.reshape(tf.where(self.labels > 0), [-1], name='fg_inds')

    @cached_property
    def fg_boxes(self):
        """float32 [F, 4]."""
        return tf.gather(self.boxes, self.fg_inds, name='fg_boxes')

    @cached_property
    def fg_image_inds(self):
        """int32 [F], the image of each foreground roi (None with one image)."""
        return None if self.image_inds is None else tf.gather(self.image_inds, self.fg_inds)

    @cached_property
    def fg_labels(self):
        """int64 [F], 1..K."""
        return tf.gather(self.labels, self.fg_inds, name='fg_labels')


@under_name_scope()
def proposal_metrics(iou):
    """Summaries of how well the proposals cover the gt boxes. iou: float32 [N, M]."""
    # With no gt (or no proposal) the statistics are undefined; report 0 rather than
    # letting a NaN into the moving averages.
    has_pairs = tf.size(iou) > 0
    best_iou = tf.cond(has_pairs, lambda: tf.reduce_max(iou, axis=0),
                       lambda: tf.zeros([0], tf.float32))
    num_gt = tf.maximum(tf.size(best_iou), 1)
    summaries = [tf.where(has_pairs, tf.reduce_mean(best_iou), 0., name='best_iou_per_gt')]
    for threshold in (0.3, 0.5):
        hits = tf.reduce_sum(tf.cast(best_iou >= threshold, tf.float32))
        summaries.append(tf.truediv(hits, tf.cast(num_gt, tf.float32), name='recall_iou{}'.format(threshold)))
    add_moving_summary(*summaries)


def match_boxes_to_best_gt(iou, fg_thresh):
    """Match each box to the gt box it overlaps most; foreground if that IoU >= fg_thresh.

    iou: float32 [N, M], M may be 0. Returns best_gt int64 [N] (0 when M == 0; only meaningful
    where fg_mask is set) and fg_mask bool [N] (all False when M == 0, whatever fg_thresh).
    """
    has_gt = tf.shape(iou)[1] > 0
    num_boxes = tf.shape(iou)[0]
    best_iou = tf.cond(has_gt, lambda: tf.reduce_max(iou, axis=1), lambda: tf.zeros([num_boxes]))
    best_gt = tf.cond(has_gt, lambda: tf.argmax(iou, axis=1), lambda: tf.zeros([num_boxes], dtype=tf.int64))
    fg_mask = tf.logical_and(best_iou >= fg_thresh, has_gt)
    return best_gt, fg_mask


@under_name_scope()
def sample_fast_rcnn_targets(boxes, gt_boxes, gt_labels, batch_per_im, fg_ratio, fg_thresh):
    """Sample the training rois of one image, tensorpack/Detectron style.

    The gt boxes join the proposals, so every image with gt has foreground rois. Up to
    int(batch_per_im * fg_ratio) foreground rois (IoU >= fg_thresh with some gt) are drawn at
    random, the rest of the batch_per_im with background rois.

    Args:
        boxes: float32 [N, 4] proposals; gt_boxes: float32 [M, 4]; gt_labels: int64 [M], 1..K.
        M may be 0 (then all sampled rois are background).
    Returns:
        BoxProposals with boxes [R, 4], labels int64 [R] (foreground first), fg_inds_wrt_gt [F];
        all with stopped gradients.
    """
    iou = pairwise_iou(boxes, gt_boxes)  # [N, M]
    proposal_metrics(iou)

    boxes = tf.concat([boxes, gt_boxes], axis=0)  # [N + M, 4]
    iou = tf.concat([iou, tf.eye(tf.shape(gt_boxes)[0])], axis=0)  # [N + M, M]

    best_gt, fg_mask = match_boxes_to_best_gt(iou, fg_thresh)   # [N + M]
    fg_inds = tf.reshape(tf.where(fg_mask), [-1])
    num_fg = tf.minimum(int(batch_per_im * fg_ratio), tf.size(fg_inds), name='num_fg')
    fg_inds = tf.random.shuffle(fg_inds)[:num_fg]

    bg_inds = tf.reshape(tf.where(tf.logical_not(fg_mask)), [-1])
    num_bg = tf.minimum(batch_per_im - num_fg, tf.size(bg_inds), name='num_bg')
    bg_inds = tf.random.shuffle(bg_inds)[:num_bg]
    add_moving_summary(num_fg, num_bg)

    fg_inds_wrt_gt = tf.gather(best_gt, fg_inds)

    sampled_boxes = tf.gather(boxes, tf.concat([fg_inds, bg_inds], axis=0))
    sampled_labels = tf.concat([tf.gather(gt_labels, fg_inds_wrt_gt),
                                tf.zeros_like(bg_inds, dtype=tf.int64)], axis=0)
    # Training targets: no gradient flows into the proposals through them.
    return BoxProposals(
        tf.stop_gradient(sampled_boxes, name='sampled_proposal_boxes'),
        tf.stop_gradient(sampled_labels, name='sampled_labels'),
        tf.stop_gradient(fg_inds_wrt_gt, name='fg_inds_wrt_gt'))


@layer_register(log_shape=True)
def fastrcnn_outputs(feature, num_categories, class_agnostic_regression=False):
    """Classification and box-regression layers (variables class/{W,b}, box/{W,b}).

    Args:
        feature: float32 [N, D].
    Returns:
        label_logits float32 [N, K + 1]; box_logits float32 [N, K + 1, 4] (or [N, 1, 4] if class
        agnostic), encoded deltas scaled by the bbox regression weights.
    """
    num_classes = num_categories + 1
    label_logits = FullyConnected('class', feature, num_classes,
                                  kernel_initializer=tf.random_normal_initializer(stddev=0.01))
    num_box_classes = 1 if class_agnostic_regression else num_classes
    box_logits = FullyConnected('box', feature, num_box_classes * 4,
                                kernel_initializer=tf.random_normal_initializer(stddev=0.001))
    box_logits = tf.reshape(box_logits, [-1, num_box_classes, 4], name='output_box')
    return label_logits, box_logits


@under_name_scope()
def fastrcnn_losses(labels, label_logits, fg_encoded_gt_boxes, fg_box_logits):
    """Softmax classification loss and L1 box loss, both averaged over all sampled rois.

    Args:
        labels: int64 [N], 0..K; label_logits: float32 [N, K + 1];
        fg_encoded_gt_boxes: float32 [F, 4]; fg_box_logits: float32 [F, K + 1, 4] or [F, 1, 4].
    Returns:
        [label_loss, box_loss], float32 scalars.
    """
    num_rois = tf.cast(tf.maximum(tf.size(labels), 1), tf.float32)  # no rois: losses 0, not NaN
    label_loss = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=label_logits)
    label_loss = tf.truediv(tf.reduce_sum(label_loss), num_rois, name='label_loss')

    fg_inds = tf.where(labels > 0)[:, 0]
    fg_labels = tf.gather(labels, fg_inds)
    num_fg = tf.size(fg_inds, out_type=tf.int64)
    if int(fg_box_logits.shape[1]) > 1:
        # gather_nd rather than gather(batch_dims=1): the latter's gradient has a wrong shape when F == 0.
        fg_box_logits = tf.gather_nd(fg_box_logits, tf.stack([tf.range(num_fg), fg_labels], axis=1))
    fg_box_logits = tf.reshape(fg_box_logits, [-1, 4])

    with tf.name_scope('label_metrics'):
        no_fg = tf.equal(num_fg, 0)
        predictions = tf.argmax(label_logits, axis=1, name='label_prediction')
        correct = tf.cast(tf.equal(predictions, labels), tf.float32)
        accuracy = tf.truediv(tf.reduce_sum(correct), num_rois, name='accuracy')
        fg_predictions = tf.gather(predictions, fg_inds)
        num_zero = tf.reduce_sum(tf.cast(tf.equal(fg_predictions, 0), tf.float32))
        safe_num_fg = tf.cast(tf.maximum(num_fg, 1), tf.float32)
        false_negative = tf.where(no_fg, 0., num_zero / safe_num_fg, name='false_negative')
        fg_accuracy = tf.where(no_fg, 0., tf.reduce_sum(tf.gather(correct, fg_inds)) / safe_num_fg,
                               name='fg_accuracy')

    box_loss = tf.reduce_sum(tf.abs(fg_encoded_gt_boxes - fg_box_logits))
    box_loss = tf.truediv(box_loss, num_rois, name='box_loss')

    add_moving_summary(label_loss, box_loss, accuracy, fg_accuracy, false_negative,
                       tf.cast(num_fg, tf.float32, name='num_fg_label'))
    return [label_loss, box_loss]


@under_name_scope()
def fastrcnn_predictions(boxes, scores, score_thresh, nms_thresh, results_per_im):
    """Per-class NMS over all rois, then the best `results_per_im` detections of the image.

    Args:
        boxes: float32 [N, K + 1, 4], decoded and clipped; scores: float32 [N, K + 1].
        score_thresh: keep scores > this; nms_thresh: IoU above which a lower-scored box of the
        same class is suppressed; results_per_im: maximum number of detections R.
    Returns:
        boxes float32 [R, 4], scores float32 [R] (descending), labels int32 [R] in 1..K.
    """
    # One combined op instead of a loop over classes: it runs NMS per class (classes never
    # suppress each other) and keeps the top results_per_im over all classes, which is what
    # per-class NMS followed by a global top-k gives.
    nmsed = tf.image.combined_non_max_suppression(
        boxes[None, :, 1:, :], scores[None, :, 1:],
        max_output_size_per_class=results_per_im, max_total_size=results_per_im,
        iou_threshold=nms_thresh, score_threshold=score_thresh,
        pad_per_class=False, clip_boxes=False)
    num_valid = nmsed.valid_detections[0]
    final_boxes = tf.identity(nmsed.nmsed_boxes[0, :num_valid], name='boxes')
    final_scores = tf.identity(nmsed.nmsed_scores[0, :num_valid], name='scores')
    final_labels = tf.add(tf.cast(nmsed.nmsed_classes[0, :num_valid], tf.int32), 1, name='labels')
    return final_boxes, final_scores, final_labels


def flatten_chw(feature, data_format):
    """[N, C, S, S] (NCHW) or [N, S, S, C] (NHWC) -> [N, C*S*S] in C,H,W order.

    The fc weights of the checkpoints are [C*S*S, D] in that order, so NHWC features are
    transposed first; both layouts then load the same checkpoints.
    """
    if data_format == 'NHWC':
        feature = tf.transpose(feature, [0, 3, 1, 2])
    flat_dim = int(np.prod(feature.shape.as_list()[1:]))
    return tf.reshape(feature, [-1, flat_dim])


@layer_register(log_shape=True)
def fastrcnn_2fc_head(feature, *, conv_dim, fc_dim, data_format):
    """Two relu fc layers fc6, fc7. feature: float32 ROI features [N, ...] -> [N, fc_dim].

    conv_dim is unused (the head table gives every head the same keywords).
    """
    del conv_dim
    init = tf.variance_scaling_initializer()
    hidden = flatten_chw(feature, data_format)
    hidden = FullyConnected('fc6', hidden, fc_dim, kernel_initializer=init, activation=tf.nn.relu)
    return FullyConnected('fc7', hidden, fc_dim, kernel_initializer=init, activation=tf.nn.relu)


def _xconv1fc_head(feature, num_convs, norm, conv_dim, fc_dim, data_format):
    """num_convs 3x3 relu convs (each followed by GroupNorm if norm == 'GN'), then one relu fc.

    feature: float32 [N, C, S, S] or [N, S, S, C] -> float32 [N, fc_dim].
    """
    # Caffe2's MSRAFill: fan_out, untruncated normal.
    conv_init = tf.variance_scaling_initializer(scale=2.0, mode='fan_out', distribution='untruncated_normal')
    hidden = feature
    with argscope(Conv2D, data_format=data_format, kernel_initializer=conv_init):
        for k in range(num_convs):
            hidden = Conv2D('conv{}'.format(k), hidden, conv_dim, 3, activation=tf.nn.relu)
            if norm == 'GN':
                hidden = GroupNorm('gn{}'.format(k), hidden, data_format=data_format)
    hidden = flatten_chw(hidden, data_format)
    return FullyConnected('fc', hidden, fc_dim, kernel_initializer=tf.variance_scaling_initializer(),
                          activation=tf.nn.relu)


@layer_register(log_shape=True)
def fastrcnn_4conv1fc_head(feature, *, conv_dim, fc_dim, data_format):
    """conv0..conv3 + fc. feature: [N, C, S, S] | [N, S, S, C] -> float32 [N, fc_dim]."""
    return _xconv1fc_head(feature, 4, None, conv_dim, fc_dim, data_format)


@layer_register(log_shape=True)
def fastrcnn_4conv1fc_gn_head(feature, *, conv_dim, fc_dim, data_format):
    """conv0..conv3 each with GroupNorm gn0..gn3, + fc. Shapes as fastrcnn_4conv1fc_head."""
    return _xconv1fc_head(feature, 4, 'GN', conv_dim, fc_dim, data_format)


BOX_HEADS = {
    'fastrcnn_2fc_head': fastrcnn_2fc_head,
    'fastrcnn_4conv1fc_head': fastrcnn_4conv1fc_head,
    'fastrcnn_4conv1fc_gn_head': fastrcnn_4conv1fc_gn_head,
}


def get_box_head(name):
    """The FPN box head called `name` (cfg.FPN.FRCNN_HEAD_FUNC).

    Returned callable: head(scope, roi_feature, conv_dim=, fc_dim=, data_format=) -> [N, fc_dim].
    """
    if name not in BOX_HEADS:
        raise KeyError("Unknown FPN.FRCNN_HEAD_FUNC {!r}; valid names: {}".format(name, ', '.join(BOX_HEADS)))
    return BOX_HEADS[name]


class FastRCNNHead:
    """Decodes and scores the outputs of one Fast R-CNN classification + regression head.

    Args:
        proposals: BoxProposals of the N rois the head ran on (with labels in training).
        box_logits: float32 [N, K + 1, 4] or [N, 1, 4] (class agnostic), weighted deltas.
        label_logits: float32 [N, K + 1].
        gt_boxes: float32 [M, 4] (training only; may be None at inference).
        bbox_regression_weights: 4 floats (wx, wy, ww, wh) the deltas are scaled by.
        decode_clip: upper bound on the decoded log-scale deltas (log(MAX_SIZE / 16)).
    """

    def __init__(self, proposals, box_logits, label_logits, gt_boxes, bbox_regression_weights, decode_clip):
        self.proposals = proposals
        self.box_logits = box_logits
        self.label_logits = label_logits
        self.gt_boxes = gt_boxes
        self.bbox_regression_weights = tuple(float(w) for w in bbox_regression_weights)
        self.decode_clip = decode_clip
        self.class_agnostic = int(box_logits.shape[1]) == 1
        self._cache = {}

    def _once(self, key, build):
        # Each output is built once, however many callers ask for it.
        if key not in self._cache:
            self._cache[key] = build()
        return self._cache[key]

    def losses(self):
        """[label_loss, box_loss] against the proposals' labels and matched gt boxes."""
        def build():
            matched_gt = tf.gather(self.gt_boxes, self.proposals.fg_inds_wrt_gt)
            fg_encoded_gt = encode_bbox_target(matched_gt, self.proposals.fg_boxes, self.bbox_regression_weights)
            fg_box_logits = tf.gather(self.box_logits, self.proposals.fg_inds, name='fg_box_logits')
            return fastrcnn_losses(self.proposals.labels, self.label_logits, fg_encoded_gt, fg_box_logits)
        return self._once('losses', build)

    def decoded_output_boxes(self):
        """float32 [N, K + 1, 4] (or [N, 1, 4] if class agnostic), not clipped."""
        return self._once('decoded', lambda: decode_bbox_target(
            self.box_logits, tf.expand_dims(self.proposals.boxes, 1), self.bbox_regression_weights,
            clip=self.decode_clip))

    def decoded_output_boxes_class_agnostic(self):
        """float32 [N, 4], the regressed boxes of a class-agnostic head, not clipped."""
        assert self.class_agnostic
        return self._once('agnostic', lambda: decode_bbox_target(
            tf.reshape(self.box_logits, [-1, 4]), self.proposals.boxes, self.bbox_regression_weights,
            clip=self.decode_clip))

    def output_scores(self, name=None):
        """float32 [N, K + 1], softmax over classes."""
        return self._once(('scores', name), lambda: tf.nn.softmax(self.label_logits, name=name))
