"""Feature pyramid network: the top-down pyramid, ROI-to-level mapping, multi-level
ROIAlign, and the multi-level RPN losses and proposals.

Shape shorthand: levels p2..p6 have strides 4..64; hL, wL the size of level L; C channels;
A anchors per cell; R rois; S ROIAlign resolution. Boxes are float32 x1y1x2y2 in pixels of
the resized input image (see model_box for the box model).
"""
import numpy as np

from utils.tf_compat import tf
from tensorpack.models import Conv2D, layer_register
from tensorpack.tfutils.argscope import argscope
from tensorpack.tfutils.scope_utils import under_name_scope
from tensorpack.tfutils.summary import add_moving_summary

from utils.tensor_names import FPN_LEVELS, FPN_PROPOSALS_SCOPE

from .model_box import area, check_data_format, roi_align_nhwc
from .model_rpn import generate_rpn_proposals, rpn_losses
from .norms import GroupNorm

ROI_LEVELS = FPN_LEVELS[:4]                     # ROIAlign reads p2..p5 (never p6)
ROI_STRIDES = tuple(2 ** level for level in ROI_LEVELS)   # level L has stride 2**L: 4, 8, 16, 32


def _upsample2x(x, data_format):
    """Nearest-neighbour 2x upsampling in either layout, without transposes."""
    shape = tf.shape(x)
    channel_axis = 3 if data_format == 'NHWC' else 1
    # Keep the channel count static: the convs after the top-down sum need it.
    channels = x.shape.as_list()[channel_axis]
    if channels is None:
        channels = shape[channel_axis]
    if data_format == 'NHWC':
        x = tf.tile(x[:, :, None, :, None, :], [1, 1, 2, 1, 2, 1])    # N, h, 2, w, 2, C
        new_shape = [shape[0], shape[1] * 2, shape[2] * 2, channels]
    else:
        x = tf.tile(x[:, :, :, None, :, None], [1, 1, 1, 2, 1, 2])    # N, C, h, 2, w, 2
        new_shape = [shape[0], channels, shape[2] * 2, shape[3] * 2]
    return tf.reshape(x, tf.stack(new_shape))


def _group_norm(name, x, data_format):
    return GroupNorm(name, x, data_format=data_format)


@layer_register(log_shape=True)
def fpn_model(features, num_channel, use_gn, data_format):
    """The FPN top-down pathway.

    features: [c2, c3, c4, c5] float32 [1, hL, wL, CL] (NHWC) or [1, CL, hL, wL] (NCHW),
        each level exactly half the size of the previous one.
    num_channel: int C of every output. use_gn: GroupNorm after every conv.
    Returns [p2, p3, p4, p5, p6], float32 [1, hL, wL, C] or [1, C, hL, wL];
    p6 is p5 subsampled by 2 (a 1x1 max-pool with stride 2).
    Variables: lateral_1x1_c{2..5}/{W,b}, posthoc_3x3_p{2..5}/{W,b}, and with GN
    gn_c{2..5}/{gamma,beta}, gn_p{2..5}/{gamma,beta} (the convs keep their biases, as in
    tensorpack's checkpoints).
    """
    if len(features) != 4:
        raise ValueError("fpn_model takes [c2, c3, c4, c5], got {} features".format(len(features)))
    check_data_format(data_format)
    with argscope(Conv2D, data_format=data_format, activation=tf.identity, use_bias=True,
                  kernel_initializer=tf.variance_scaling_initializer(scale=1.)):
        laterals = [Conv2D('lateral_1x1_c{}'.format(level), c, num_channel, 1)
                    for level, c in zip(ROI_LEVELS, features)]
        if use_gn:
            laterals = [_group_norm('gn_c{}'.format(level), lat, data_format)
                        for level, lat in zip(ROI_LEVELS, laterals)]
        # Top-down: each level adds the upsampled sum of the level above.
        merged = [laterals[-1]]
        for level, lateral in zip(ROI_LEVELS[-2::-1], laterals[-2::-1]):
            with tf.name_scope('upsample_lat{}'.format(level + 1)):
                upsampled = _upsample2x(merged[-1], data_format)
            merged.append(lateral + upsampled)
        merged = merged[::-1]      # c2 .. c5 order
        outputs = [Conv2D('posthoc_3x3_p{}'.format(level), m, num_channel, 3)
                   for level, m in zip(ROI_LEVELS, merged)]
        if use_gn:
            outputs = [_group_norm('gn_p{}'.format(level), p, data_format)
                       for level, p in zip(ROI_LEVELS, outputs)]
    p5 = outputs[-1]
    # A 1x1 max-pool of stride 2 is just a strided slice (which also runs on CPU in NCHW).
    p6 = p5[:, ::2, ::2, :] if data_format == 'NHWC' else p5[:, :, ::2, ::2]
    return outputs + [tf.identity(p6, name='maxpool_p6')]


@under_name_scope()
def fpn_map_rois_to_levels(boxes):
    """Assign each box to a level 2..5 by its size, as in the FPN paper:
    level = floor(4 + log2(sqrt(area) / 224)), clamped to [2, 5]; a 1e-6 inside the log
    keeps exact powers of two on their level despite rounding (and zero areas finite).

    boxes: float32 [R, 4], x1y1x2y2 image pixels.
    Returns level_ids: 4 int64 vectors [R_L] of box indices per level 2..5 (may be empty),
    and level_boxes: 4 float32 [R_L, 4], the boxes of each level.
    """
    sqrt_area = tf.sqrt(area(boxes))
    level = tf.cast(tf.floor(
        4 + tf.math.log(sqrt_area * (1. / 224) + 1e-6) * (1.0 / np.log(2))), tf.int32)
    in_level = [tf.less_equal(level, 2), tf.equal(level, 3), tf.equal(level, 4),
                tf.greater_equal(level, 5)]
    level_ids = [tf.reshape(tf.where(mask), [-1], name='roi_level{}_id'.format(lvl))
                 for lvl, mask in zip(ROI_LEVELS, in_level)]
    add_moving_summary(*[tf.size(ids, name='num_roi_level{}'.format(lvl))
                         for lvl, ids in zip(ROI_LEVELS, level_ids)])
    level_boxes = [tf.gather(boxes, ids) for ids in level_ids]
    return level_ids, level_boxes


@under_name_scope()
def multilevel_roi_align(features, boxes, resolution, data_format, strides=ROI_STRIDES, box_indices=None):
    """ROIAlign of each box on the level `fpn_map_rois_to_levels` gives it.

    features: [p2, p3, p4, p5], float32 [B, hL, wL, C] (NHWC) or [B, C, hL, wL] (NCHW).
    boxes: float32 [R, 4], x1y1x2y2 image pixels. resolution: int S.
    strides: feature stride of each of the 4 levels.
    box_indices: int32 [R], the image of the batch each box reads (None: image 0).
    Returns float32 [R, S, S, C] (NHWC) or [R, C, S, S] (NCHW), in the order of `boxes`.
    """
    if len(features) != 4 or len(strides) != 4:
        raise ValueError("multilevel_roi_align takes 4 levels p2..p5, got {} features and strides {}"
                         .format(len(features), strides))
    check_data_format(data_format)
    level_ids, level_boxes = fpn_map_rois_to_levels(boxes)
    all_rois = []
    for level, ids, level_box, featuremap, stride in zip(ROI_LEVELS, level_ids, level_boxes, features, strides):
        with tf.name_scope('roi_level{}'.format(level)):
            if data_format == 'NCHW':
                featuremap = tf.transpose(featuremap, [0, 2, 3, 1])
            level_indices = None if box_indices is None else tf.gather(box_indices, ids)
            all_rois.append(roi_align_nhwc(featuremap, level_box * (1.0 / stride), resolution, level_indices))
    # Put row i back at boxes[i]: one stitch writes each level's rows in place (a concat in
    # level order followed by a gather with the inverse permutation copied them twice).
    all_rois = tf.dynamic_stitch([tf.cast(ids, tf.int32) for ids in level_ids], all_rois)
    if data_format == 'NCHW':
        # One transpose of the (small) result instead of one per level.
        all_rois = tf.transpose(all_rois, [0, 3, 1, 2])
    return tf.identity(all_rois, name='output')


def multilevel_rpn_losses(multilevel_anchors, multilevel_label_logits, multilevel_box_logits,
                          batch_per_im):
    """Sum over levels of `rpn_losses`.

    multilevel_anchors: per level an RPNAnchors (gt_labels [B, hL, wL, A], gt_boxes [B, hL, wL, A, 4]).
    multilevel_label_logits: per level float32 [B, hL, wL, A].
    multilevel_box_logits: per level float32 [B, hL, wL, A, 4].
    batch_per_im: int, anchors sampled in all B images (over all levels).
    Returns [label_loss, box_loss], float32 scalars.
    """
    num_levels = len(multilevel_anchors)
    if not (len(multilevel_label_logits) == len(multilevel_box_logits) == num_levels):
        raise ValueError("got {} anchor levels, {} label-logit levels and {} box-logit levels".format(
            num_levels, len(multilevel_label_logits), len(multilevel_box_logits)))
    losses = []
    with tf.name_scope('rpn_losses'):
        for level, anchors, label_logits, box_logits in zip(
                FPN_LEVELS, multilevel_anchors, multilevel_label_logits, multilevel_box_logits):
            losses.extend(rpn_losses(
                anchors.gt_labels, anchors.encoded_gt_boxes(), label_logits, box_logits,
                batch_per_im, name_scope='level{}'.format(level)))
        total_label_loss = tf.add_n(losses[::2], name='label_loss')
        total_box_loss = tf.add_n(losses[1::2], name='box_loss')
        add_moving_summary(total_label_loss, total_box_loss)
    return [total_label_loss, total_box_loss]


def _proposals_per_level(boxes_list, scores_list, image_shape2d, *, per_level_topk, nms_thresh,
                         min_size, **_):
    """'Level' mode: top-k + NMS within each level, then the best `per_level_topk` overall."""
    all_boxes, all_scores = [], []
    for level, boxes, scores in zip(FPN_LEVELS, boxes_list, scores_list):
        with tf.name_scope('Lvl{}'.format(level)):
            level_boxes, level_scores = generate_rpn_proposals(
                boxes, scores, image_shape2d, per_level_topk, per_level_topk, nms_thresh, min_size)
        all_boxes.append(level_boxes)
        all_scores.append(level_scores)
    boxes = tf.concat(all_boxes, axis=0)
    scores = tf.concat(all_scores, axis=0)
    # Like tensorpack (and unlike Detectron, which ranks over the batch), ranked per image.
    topk = tf.minimum(tf.size(scores), per_level_topk)
    scores, indices = tf.nn.top_k(scores, k=topk, sorted=False)
    return tf.gather(boxes, indices, name='all_proposals'), scores


def _proposals_joint(boxes_list, scores_list, image_shape2d, *, pre_nms_topk, post_nms_topk,
                     nms_thresh, min_size, **_):
    """'Joint' mode: all levels' boxes compete in one top-k + NMS."""
    return generate_rpn_proposals(
        tf.concat(boxes_list, axis=0), tf.concat(scores_list, axis=0), image_shape2d,
        pre_nms_topk, post_nms_topk, nms_thresh, min_size)


PROPOSAL_MODES = {'Level': _proposals_per_level, 'Joint': _proposals_joint}


@under_name_scope(FPN_PROPOSALS_SCOPE)
def generate_fpn_proposals(multilevel_pred_boxes, multilevel_label_logits, image_shape2d, *,
                           proposal_mode, pre_nms_topk, post_nms_topk, per_level_topk,
                           nms_thresh, min_size):
    """RPN proposals from all levels.

    multilevel_pred_boxes: per level float32 [hL, wL, A, 4], decoded x1y1x2y2 boxes.
    multilevel_label_logits: per level float32 [hL, wL, A].
    image_shape2d: int [2], (h, w) of the resized image.
    proposal_mode: 'Level' (uses per_level_topk) or 'Joint' (uses pre/post_nms_topk).
    Returns boxes float32 [R, 4] and scores float32 [R] (logits), without gradient.
    """
    if proposal_mode not in PROPOSAL_MODES:
        raise ValueError("Unknown FPN proposal_mode {!r}; valid: {}".format(
            proposal_mode, sorted(PROPOSAL_MODES)))
    if len(multilevel_pred_boxes) != len(multilevel_label_logits):
        raise ValueError("got {} box levels and {} logit levels".format(
            len(multilevel_pred_boxes), len(multilevel_label_logits)))
    boxes_list = [tf.reshape(b, [-1, 4]) for b in multilevel_pred_boxes]
    scores_list = [tf.reshape(s, [-1]) for s in multilevel_label_logits]
    boxes, scores = PROPOSAL_MODES[proposal_mode](
        boxes_list, scores_list, image_shape2d, pre_nms_topk=pre_nms_topk,
        post_nms_topk=post_nms_topk, per_level_topk=per_level_topk, nms_thresh=nms_thresh,
        min_size=min_size)
    tf.sigmoid(scores, name='probs')    # for visualization
    return tf.stop_gradient(boxes, name='boxes'), tf.stop_gradient(scores, name='scores')
