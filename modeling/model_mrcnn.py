"""Mask R-CNN: the mask heads, their loss, and unpacking of the packed gt masks.

Shape shorthand:
    N  rois (F when only the foreground ones), K categories (no background channel),
    S  pooled ROI feature size (14 for FPN, 7 for the C4 conv5 feature), M = 2S mask size,
    H, W  image size in pixels, D head channels.
Mask logits are returned class-major, [N, K, M, M], in both data formats.
"""
from utils.tf_compat import tf  # noqa: I001  (must come before tensorpack)

from tensorpack.models import Conv2D, Conv2DTranspose, layer_register
from tensorpack.tfutils.argscope import argscope
from tensorpack.tfutils.scope_utils import under_name_scope
from tensorpack.tfutils.summary import add_moving_summary

from .norms import GroupNorm


@under_name_scope()
def maskrcnn_loss(mask_logits, fg_labels, fg_target_masks):
    """Per-pixel sigmoid cross entropy on the channel of each roi's gt class.

    Args:
        mask_logits: float32 [F, K, M, M]; fg_labels: int64 [F], 1..K;
        fg_target_masks: float32 [F, M, M] in [0, 1].
    Returns:
        float32 scalar, averaged over pixels; 0 when F == 0.
    """
    mask_logits = select_class_masks(mask_logits, fg_labels)  # [F, M, M]
    mask_probs = tf.sigmoid(mask_logits)

    with tf.name_scope('mask_viz'):
        viz = tf.expand_dims(tf.concat([fg_target_masks, mask_probs], axis=1), 3)
        viz = tf.cast(viz * 255, tf.uint8, name='viz')
        tf.summary.image('mask_truth|pred', viz, max_outputs=10)

    # An image without gt has no foreground rois; a mean over nothing would be NaN.
    num_pixels = tf.cast(tf.maximum(tf.size(mask_logits), 1), tf.float32)
    loss = tf.nn.sigmoid_cross_entropy_with_logits(labels=fg_target_masks, logits=mask_logits)
    loss = tf.truediv(tf.reduce_sum(loss), num_pixels, name='maskrcnn_loss')

    pred_fg = mask_probs > 0.5
    truth_fg = fg_target_masks > 0.5
    correct = tf.equal(pred_fg, truth_fg)
    accuracy = tf.truediv(tf.reduce_sum(tf.cast(correct, tf.float32)), num_pixels, name='accuracy')
    pos_accuracy = tf.truediv(tf.reduce_sum(tf.cast(tf.logical_and(correct, truth_fg), tf.float32)),
                              num_pixels, name='pos_accuracy')
    fg_pixel_ratio = tf.truediv(tf.reduce_sum(tf.cast(truth_fg, tf.float32)), num_pixels, name='fg_pixel_ratio')
    add_moving_summary(loss, accuracy, fg_pixel_ratio, pos_accuracy)
    return loss


def _to_class_major(logits, data_format):
    return tf.transpose(logits, [0, 3, 1, 2]) if data_format == 'NHWC' else logits


@layer_register(log_shape=True)
def maskrcnn_upXconv_head(feature, num_category, num_convs, *, head_dim, data_format, norm=None):
    """num_convs 3x3 relu convs fcn{k} (+ GroupNorm gn{k}), a 2x2 stride-2 deconv, a 1x1 conv.

    Args:
        feature: float32 [N, C, S, S] (NCHW) or [N, S, S, C] (NHWC).
        num_category: K; norm: None or 'GN'.
    Returns:
        mask_logits float32 [N, K, 2S, 2S].
    """
    if norm not in (None, 'GN'):
        raise ValueError("Mask head norm must be None or 'GN', not {!r}".format(norm))
    # Caffe2's MSRAFill: fan_out, untruncated normal.
    init = tf.variance_scaling_initializer(scale=2.0, mode='fan_out', distribution='untruncated_normal')
    hidden = feature
    with argscope([Conv2D, Conv2DTranspose], data_format=data_format, kernel_initializer=init):
        for k in range(num_convs):
            hidden = Conv2D('fcn{}'.format(k), hidden, head_dim, 3, activation=tf.nn.relu)
            if norm == 'GN':
                hidden = GroupNorm('gn{}'.format(k), hidden, data_format=data_format)
        hidden = Conv2DTranspose('deconv', hidden, head_dim, 2, strides=2, activation=tf.nn.relu)
        logits = Conv2D('conv', hidden, num_category, 1,
                        kernel_initializer=tf.random_normal_initializer(stddev=0.001))
    return _to_class_major(logits, data_format)


def maskrcnn_up4conv_head(name, feature, num_category, *, head_dim, data_format):
    """FPN mask head: fcn0..fcn3, deconv, conv. [N, ., 14, 14] -> logits [N, K, 28, 28]."""
    return maskrcnn_upXconv_head(name, feature, num_category, 4, head_dim=head_dim, data_format=data_format)


def maskrcnn_up4conv_gn_head(name, feature, num_category, *, head_dim, data_format):
    """FPN mask head with GroupNorm gn0..gn3 after the convs. Shapes as maskrcnn_up4conv_head."""
    return maskrcnn_upXconv_head(name, feature, num_category, 4, head_dim=head_dim, data_format=data_format,
                                 norm='GN')


def maskrcnn_c4_head(name, feature, num_category, *, head_dim, data_format):
    """C4 mask head on the conv5 ROI features: deconv, conv. [N, 2048, 7, 7] -> [N, K, 14, 14]."""
    return maskrcnn_upXconv_head(name, feature, num_category, 0, head_dim=head_dim, data_format=data_format)


MASK_HEADS = {
    'maskrcnn_up4conv_head': maskrcnn_up4conv_head,
    'maskrcnn_up4conv_gn_head': maskrcnn_up4conv_gn_head,
}


def get_mask_head(name):
    """The FPN mask head called `name` (cfg.FPN.MRCNN_HEAD_FUNC).

    Returned callable: head(scope, roi_feature, K, head_dim=, data_format=) -> [N, K, 28, 28].
    """
    if name not in MASK_HEADS:
        raise KeyError("Unknown FPN.MRCNN_HEAD_FUNC {!r}; valid names: {}".format(name, ', '.join(MASK_HEADS)))
    return MASK_HEADS[name]


def select_class_masks(mask_logits, labels):
    """The channel of each roi's class. mask_logits [N, K, M, M], labels int [N] 1..K -> [N, M, M]."""
    labels = tf.cast(labels, tf.int32)
    # gather_nd rather than gather(batch_dims=1): the latter's gradient has a wrong shape when N == 0.
    indices = tf.stack([tf.range(tf.size(labels)), labels - 1], axis=1)
    return tf.gather_nd(mask_logits, indices)


def unpackbits_masks(packed_masks, image_shape_hw):
    """Inverse of np.packbits along the last axis, cropped to the image.

    Args:
        packed_masks: uint8 [N, H, ceil(W / 8)]; image_shape_hw: int32 [2], (H, W).
    Returns:
        uint8 [N, H, W] of 0/1.
    """
    if packed_masks.dtype != tf.uint8:
        raise ValueError('Packed masks must be uint8, got {}'.format(packed_masks.dtype))
    bits = tf.constant([128, 64, 32, 16, 8, 4, 2, 1], dtype=tf.uint8)  # np.packbits is big-endian
    unpacked = tf.bitwise.bitwise_and(tf.expand_dims(packed_masks, -1), bits)  # [N, H, W/8, 8]
    shape = tf.shape(packed_masks)
    unpacked = tf.reshape(unpacked, tf.stack([shape[0], shape[1], shape[2] * 8]))
    unpacked = unpacked[:, :image_shape_hw[0], :image_shape_hw[1]]
    return tf.cast(unpacked > 0, tf.uint8)
