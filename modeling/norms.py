"""Normalization layers of the project's own: GroupNorm (Wu & He, 2018).

Used by the GN backbone, the FPN with FPN.NORM='GN', and the *_gn_head box and mask heads.
Variables are tensorpack's: {scope}/beta and {scope}/gamma, so its GN checkpoints load.

Shape shorthand: N batch (images or rois), C channels, h, w the size of a feature map.
"""
from utils.tf_compat import tf

from tensorpack.models import layer_register
from tensorpack.utils.argtools import get_data_format


@layer_register(log_shape=True)
def GroupNorm(x, group=32, gamma_initializer=None, data_format='channels_last', epsilon=1e-5):
    """Group Normalization (Wu & He, 2018) over a 4D feature map.

    x: float32 [N, h, w, C] ('NHWC'/'channels_last') or [N, C, h, w] ('NCHW'/'channels_first');
    the layout comes from the argument or an enclosing argscope. C must be static and divisible
    by `group`. Variables: gamma [C] (ones unless `gamma_initializer`), beta [C] (zeros).
    Returns a tensor of x's shape.
    """
    data_format = get_data_format(data_format, keras_mode=False)
    if x.shape.ndims != 4:
        raise ValueError('GroupNorm expects a 4D tensor, got shape {}'.format(x.shape))
    channel_axis = 3 if data_format == 'NHWC' else 1
    channels = x.shape.as_list()[channel_axis]
    if channels is None or channels % group != 0:
        raise ValueError('GroupNorm needs a static channel count divisible by group={}, got {} '
                         '(data_format {})'.format(group, channels, data_format))
    group_size = channels // group

    # Statistics in two stages, both over contiguous axes: sums over h, w per channel ([N, C]),
    # then over the channels of each group on the small [N, G, C/G]. Reducing the [N, h, w, G, C/G]
    # view over its axes 1, 2, 4 at once (tensorpack's formula) took ~2-4x longer, backward
    # included, on CPU (docs/benchmarks.md, "GroupNorm"). The variance is two-pass, as tf.nn.moments computes it.
    spatial_axes = [1, 2] if data_format == 'NHWC' else [2, 3]
    dyn_shape = tf.shape(x)
    batch = dyn_shape[0]
    grouped_shape = tf.stack([batch, group, group_size])
    per_channel_shape = tf.stack([batch, 1, 1, channels] if data_format == 'NHWC' else [batch, channels, 1, 1])
    count = tf.cast(dyn_shape[spatial_axes[0]] * dyn_shape[spatial_axes[1]] * group_size, x.dtype)

    def group_mean(per_channel_sums):
        """[N, C] -> [N, G, 1]: the mean over each group's h * w * C/G elements."""
        return tf.reduce_sum(tf.reshape(per_channel_sums, grouped_shape), 2, keepdims=True) / count

    def to_channels(per_group):
        """[N, G, 1] or [N, G, C/G] -> [N, 1, 1, C] (NHWC) or [N, C, 1, 1] (NCHW), to broadcast on x."""
        return tf.reshape(tf.broadcast_to(per_group, grouped_shape), per_channel_shape)

    mean = group_mean(tf.reduce_sum(x, spatial_axes))
    # Without the gradient through the mean, as tf.nn.moments: that term is zero (deviations sum to 0).
    squared_deviations = tf.math.squared_difference(x, tf.stop_gradient(to_channels(mean)))
    variance = group_mean(tf.reduce_sum(squared_deviations, spatial_axes))

    if gamma_initializer is None:
        gamma_initializer = tf.ones_initializer()
    beta = tf.get_variable('beta', [channels], initializer=tf.zeros_initializer())
    gamma = tf.get_variable('gamma', [channels], initializer=gamma_initializer)
    # One multiply-add over the big tensor, as tf.nn.batch_normalization folds it: per image and
    # channel, scale = gamma / sqrt(variance + epsilon) and offset = beta - mean * scale.
    scale = tf.math.rsqrt(variance + epsilon) * tf.reshape(gamma, [group, group_size])   # [N, G, C/G]
    offset = tf.reshape(beta, [group, group_size]) - mean * scale
    out = tf.add(x * to_channels(scale), to_channels(offset), name='output')
    out.set_shape(x.shape)
    return out
