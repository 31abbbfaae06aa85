"""Tests of modeling/norms.py: GroupNorm against a numpy oracle, its variables and errors."""
import numpy as np
import pytest

from utils.tf_compat import tf

from modeling import norms
from tests.tf_helpers import run_graph


def group_norm_oracle(x_nhwc, gamma, beta, group, epsilon=1e-5):
    n, h, w, c = x_nhwc.shape
    grouped = x_nhwc.astype(np.float64).reshape(n, h, w, group, c // group)
    mean = grouped.mean(axis=(1, 2, 4), keepdims=True)
    var = grouped.var(axis=(1, 2, 4), keepdims=True)
    normalized = ((grouped - mean) / np.sqrt(var + epsilon)).reshape(n, h, w, c)
    return normalized * gamma + beta


@pytest.mark.parametrize('data_format', ['NHWC', 'NCHW'])
def test_group_norm_matches_numpy_oracle(data_format):
    rng = np.random.RandomState(4)
    x = (rng.randn(2, 3, 5, 4) * 3 + 1).astype(np.float32)   # batch 2: statistics are per image
    gamma = rng.randn(4).astype(np.float32)
    beta = rng.randn(4).astype(np.float32)
    feed = x if data_format == 'NHWC' else x.transpose(0, 3, 1, 2)
    graph = tf.Graph()
    with graph.as_default():
        placeholder = tf.placeholder(tf.float32, [None, None, None, None])
        placeholder.set_shape([None, None, None, 4] if data_format == 'NHWC' else [None, 4, None, None])
        out = norms.GroupNorm('gn', placeholder, group=2, data_format=data_format)
        with tf.Session() as sess:
            sess.run(tf.global_variables_initializer())
            assert sorted(v.op.name for v in tf.global_variables()) == ['gn/beta', 'gn/gamma']
            graph.get_tensor_by_name('gn/gamma:0')   # variables live under the layer's name
            for var, value in zip(sorted(tf.global_variables(), key=lambda v: v.op.name), [beta, gamma]):
                var.load(value, sess)
            got = sess.run(out, {placeholder: feed})
    if data_format == 'NCHW':
        got = got.transpose(0, 2, 3, 1)
    np.testing.assert_allclose(got, group_norm_oracle(x, gamma, beta, 2), rtol=1e-4, atol=1e-4)


def test_group_norm_initial_output_is_standardized_and_zero_init_gives_zero():
    x = np.random.RandomState(5).randn(1, 4, 4, 64).astype(np.float32) * 5 + 3
    out, zero = run_graph(lambda t: (
        norms.GroupNorm('gn', tf.ensure_shape(t, [None, None, None, 64])),
        norms.GroupNorm('gn_zero', tf.ensure_shape(t, [None, None, None, 64]),
                           gamma_initializer=tf.zeros_initializer())), x)
    np.testing.assert_allclose(out, group_norm_oracle(x, 1., 0., 32), rtol=1e-4, atol=1e-4)
    assert not zero.any()


def test_group_norm_rejects_indivisible_channels():
    with tf.Graph().as_default(), pytest.raises(ValueError, match='divisible'):
        norms.GroupNorm('gn', tf.zeros([1, 2, 2, 48]))
