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

    dyn_shape = tf.shape(x)
    if data_format == 'NHWC':
        grouped_shape = [dyn_shape[0], dyn_shape[1], dyn_shape[2], group, group_size]
        reduce_axes = [1, 2, 4]
        param_shape = [1, 1, 1, group, group_size]
    else:
        grouped_shape = [dyn_shape[0], group, group_size, dyn_shape[2], dyn_shape[3]]
        reduce_axes = [2, 3, 4]
        param_shape = [1, group, group_size, 1, 1]
    grouped = tf.reshape(x, tf.stack(grouped_shape))
    mean, variance = tf.nn.moments(grouped, reduce_axes, keepdims=True)

    if gamma_initializer is None:
        gamma_initializer = tf.ones_initializer()
    beta = tf.get_variable('beta', [channels], initializer=tf.zeros_initializer())
    gamma = tf.get_variable('gamma', [channels], initializer=gamma_initializer)
    # batch_normalization folds everything into one multiply-add over the big tensor.
    normalized = tf.nn.batch_normalization(
        grouped, mean, variance, tf.reshape(beta, param_shape), tf.reshape(gamma, param_shape), epsilon)
    out = tf.reshape(normalized, dyn_shape, name='output')
    out.set_shape(x.shape)
    return out
