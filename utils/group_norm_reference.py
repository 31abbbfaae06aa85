"""tensorpack's GroupNorm formula: the reference that modeling/norms.py's faster layer must match
(tests/modeling/test_norms.py) and is timed against (bench/bench_norms.py)."""
from utils.tf_compat import tf


def tensorpack_formula(x, gamma, beta, group, data_format, epsilon=1e-5):
    """GroupNorm as tensorpack's example (and this project until it was sped up) computed it: one
    tf.nn.moments over the axes h, w, C/G of a [N, h, w, G, C/G] view (NHWC) or [N, G, C/G, h, w]
    (NCHW), then tf.nn.batch_normalization.

    x: float [N, h, w, C] (NHWC) or [N, C, h, w]; gamma, beta: float [C]; group: G, dividing C.
    Returns the normalized x, shaped and typed like x.
    """
    channels = gamma.shape.as_list()[0]
    shape = tf.shape(x)
    if data_format == 'NHWC':
        grouped_shape = [shape[0], shape[1], shape[2], group, channels // group]
        axes, param_shape = [1, 2, 4], [1, 1, 1, group, channels // group]
    else:
        grouped_shape = [shape[0], group, channels // group, shape[2], shape[3]]
        axes, param_shape = [2, 3, 4], [1, group, channels // group, 1, 1]
    grouped = tf.reshape(x, tf.stack(grouped_shape))
    mean, variance = tf.nn.moments(grouped, axes, keepdims=True)
    out = tf.nn.batch_normalization(grouped, mean, variance, tf.reshape(beta, param_shape),
                                    tf.reshape(gamma, param_shape), epsilon)
    return tf.reshape(out, shape)
