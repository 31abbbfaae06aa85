"""Region proposal network: the conv head, its losses, and proposal generation.

Shape shorthand: fH, fW feature-map height/width; A anchors per cell; C channels;
N candidate boxes; R proposals kept. Boxes are float32 x1y1x2y2 in pixels of the
resized input image (see model_box for the box model).
"""
from utils.tf_compat import tf
from tensorpack.models import Conv2D, layer_register
from tensorpack.tfutils.argscope import argscope
from tensorpack.tfutils.scope_utils import under_name_scope
from tensorpack.tfutils.summary import add_moving_summary

from utils.tensor_names import RPN_PROPOSALS_SCOPE

from .model_box import check_data_format, clip_boxes
from .variable_reuse import reuse_variables_when_called_again

# Recall/precision of the fg/bg classifier are summarized at these probabilities.
_METRIC_THRESHOLDS = (0.5, 0.2, 0.1)


@layer_register(log_shape=True)
@reuse_variables_when_called_again
def rpn_head(featuremap, channel, num_anchors, data_format):
    """The RPN conv head; calling it again under the same name reuses its variables,
    so one head serves every FPN level.

    featuremap: float32 [B, fH, fW, C] (NHWC) or [B, C, fH, fW] (NCHW), B images.
    channel: int, width of the shared 3x3 conv. num_anchors: int A.
    Returns label_logits float32 [B, fH, fW, A] and box_logits float32 [B, fH, fW, A, 4]
    (deltas dx, dy, dw, dh), in that layout whatever the data_format.
    Variables: conv0/{W,b} (3x3), class/{W,b} (1x1, A), box/{W,b} (1x1, 4A).
    """
    check_data_format(data_format)
    with argscope(Conv2D, data_format=data_format,
                  kernel_initializer=tf.random_normal_initializer(stddev=0.01)):
        hidden = Conv2D('conv0', featuremap, channel, 3, activation=tf.nn.relu)
        label_logits = Conv2D('class', hidden, num_anchors, 1)
        box_logits = Conv2D('box', hidden, 4 * num_anchors, 1)
    if data_format == 'NCHW':
        label_logits = tf.transpose(label_logits, [0, 2, 3, 1])
        box_logits = tf.transpose(box_logits, [0, 2, 3, 1])
    shape = tf.shape(box_logits)
    # The 4A output channels are anchor-major: channel 4a + k is coordinate k of anchor a.
    return label_logits, tf.reshape(box_logits, tf.stack([shape[0], shape[1], shape[2], num_anchors, 4]))


def _label_metrics(valid_labels, valid_logits, num_pos):
    """Moving summaries of recall and precision of the sampled anchors' predictions."""
    with tf.name_scope('label_metrics'):
        valid_prob = tf.nn.sigmoid(valid_logits)
        placeholder = 0.5   # reported when a ratio is undefined (nothing to count)
        summaries = []
        with tf.device('/cpu:0'):
            for threshold in _METRIC_THRESHOLDS:
                predicted_pos = valid_prob > threshold
                num_pos_prediction = tf.reduce_sum(tf.cast(predicted_pos, tf.int32),
                                                   name='num_pos_prediction')
                num_correct_pos = tf.count_nonzero(
                    tf.logical_and(predicted_pos, tf.equal(valid_labels, 1)), dtype=tf.int32)
                recall = tf.cast(tf.truediv(num_correct_pos, num_pos), tf.float32)
                recall = tf.where(tf.equal(num_pos, 0), placeholder, recall,
                                  name='recall_th{}'.format(threshold))
                precision = tf.cast(tf.truediv(num_correct_pos, num_pos_prediction), tf.float32)
                precision = tf.where(tf.equal(num_pos_prediction, 0), placeholder, precision,
                                     name='precision_th{}'.format(threshold))
                summaries.extend([precision, recall])
        add_moving_summary(*summaries)


def smooth_l1_sum(targets, predictions, beta):
    """sum of Huber(delta=beta) / beta over all elements: 0.5 x^2 / beta below beta, |x| - beta/2 above."""
    abs_diff = tf.abs(predictions - targets)
    losses = tf.where(abs_diff < beta, 0.5 * tf.square(abs_diff) / beta, abs_diff - 0.5 * beta)
    return tf.reduce_sum(losses)


@under_name_scope()
def rpn_losses(anchor_labels, anchor_boxes_encoded, label_logits, box_logits, batch_per_im):
    """Classification and box losses of one level's anchors.

    anchor_labels: int32 [B, fH, fW, A], 1 fg, 0 bg, -1 ignore (not sampled); B images, or none.
    anchor_boxes_encoded: float32 [B, fH, fW, A, 4], regression targets (may be -inf where not fg).
    label_logits: float32 [B, fH, fW, A]. box_logits: float32 [B, fH, fW, A, 4].
    batch_per_im: int, anchors sampled in all B images; both losses are sums divided by it.
    Returns [label_loss, box_loss], float32 scalars; 0 when there is nothing to learn from
    (no sampled anchors / no fg anchors), which happens on FPN levels.
    """
    with tf.device('/cpu:0'):
        valid_mask = tf.stop_gradient(tf.not_equal(anchor_labels, -1))
        pos_mask = tf.stop_gradient(tf.equal(anchor_labels, 1))
        num_valid = tf.stop_gradient(tf.count_nonzero(valid_mask, dtype=tf.int32), name='num_valid_anchor')
        num_pos = tf.identity(tf.count_nonzero(pos_mask, dtype=tf.int32), name='num_pos_anchor')
        valid_labels = tf.boolean_mask(anchor_labels, valid_mask)
    valid_logits = tf.boolean_mask(label_logits, valid_mask)
    _label_metrics(valid_labels, valid_logits, num_pos)

    normalizer = 1.0 / batch_per_im
    label_loss = tf.nn.sigmoid_cross_entropy_with_logits(
        labels=tf.cast(valid_labels, tf.float32), logits=valid_logits)
    label_loss = tf.reduce_sum(label_loss) * normalizer
    label_loss = tf.where(tf.equal(num_valid, 0), 0.0, label_loss, name='label_loss')

    pos_targets = tf.boolean_mask(anchor_boxes_encoded, pos_mask)
    pos_box_logits = tf.boolean_mask(box_logits, pos_mask)
    box_loss = smooth_l1_sum(pos_targets, pos_box_logits, beta=1.0 / 9) * normalizer
    box_loss = tf.where(tf.equal(num_pos, 0), 0.0, box_loss, name='box_loss')

    add_moving_summary(label_loss, box_loss, num_valid, num_pos)
    return [label_loss, box_loss]


@under_name_scope(RPN_PROPOSALS_SCOPE)
def generate_rpn_proposals(boxes, scores, img_shape_hw, pre_nms_topk, post_nms_topk,
                           nms_thresh, min_size):
    """Proposals: top `pre_nms_topk` by score, clip to the image, drop boxes not wider
    and taller than `min_size` (if > 0), NMS, keep at most `post_nms_topk`.

    boxes: float32 [N, 4], x1y1x2y2 decoded boxes. scores: float32 [N] logits.
    img_shape_hw: int [2], (h, w) of the resized image.
    Returns boxes float32 [R, 4] and scores float32 [R] (logits), best first, R <= post_nms_topk;
    R may be 0. Both carry no gradient.
    """
    if boxes.shape.ndims != 2:
        raise ValueError("boxes must be [N, 4], got shape {}".format(boxes.shape))
    topk = tf.minimum(pre_nms_topk, tf.size(scores))
    topk_scores, topk_indices = tf.nn.top_k(scores, k=topk, sorted=False)
    topk_boxes = clip_boxes(tf.gather(boxes, topk_indices), img_shape_hw)

    if min_size > 0:
        box_wh = topk_boxes[:, 2:] - topk_boxes[:, :2]
        large_enough = tf.reduce_all(box_wh > min_size, axis=1)
        topk_boxes = tf.boolean_mask(topk_boxes, large_enough)
        topk_scores = tf.boolean_mask(topk_scores, large_enough)

    # IoU does not care whether coordinates come x-first or y-first, so no reordering.
    keep = tf.image.non_max_suppression(
        topk_boxes, topk_scores, max_output_size=post_nms_topk, iou_threshold=nms_thresh)
    proposal_boxes = tf.gather(topk_boxes, keep)
    proposal_scores = tf.gather(topk_scores, keep)
    tf.sigmoid(proposal_scores, name='probs')    # for visualization
    return (tf.stop_gradient(proposal_boxes, name='boxes'),
            tf.stop_gradient(proposal_scores, name='scores'))
