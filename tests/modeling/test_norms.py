"""Tests of modeling/norms.py: GroupNorm against a numpy oracle and against tensorpack's formula
(the layer's previous implementation), its variables, gradients, empty batches and errors."""
import numpy as np
import pytest

from utils.tf_compat import tf

from modeling import norms
from utils.group_norm_reference import tensorpack_formula
from tests.tf_helpers import run_graph


def group_norm_oracle(x_nhwc, gamma, beta, group, epsilon=1e-5):
    n, h, w, c = x_nhwc.shape
    grouped = x_nhwc.astype(np.float64).reshape(n, h, w, group, c // group)
    mean = grouped.mean(axis=(1, 2, 4), keepdims=True)
    var = grouped.var(axis=(1, 2, 4), keepdims=True)
    normalized = ((grouped - mean) / np.sqrt(var + epsilon)).reshape(n, h, w, c)
    return normalized * gamma + beta


def layer_and_formula(x, gamma, beta, group, data_format):
    """Outputs and gradients wrt x, gamma, beta of sum(output * weights) for the layer, for
    tensorpack_formula in float32 and for it in float64 (the exact values, to float32 rounding):
    three lists [output, dx, dgamma, dbeta], all with the same gamma and beta."""
    weights = np.random.RandomState(7).randn(*x.shape).astype(np.float32)
    channel_axis = 3 if data_format == 'NHWC' else 1
    static_shape = [None] * 4
    static_shape[channel_axis] = x.shape[channel_axis]
    with tf.Graph().as_default():
        x_in = tf.placeholder(tf.float32, static_shape)   # dynamic N, h, w as in the roi heads
        layer_out = norms.GroupNorm('gn', x_in, group=group, data_format=data_format)
        variables = {v.op.name: v for v in tf.global_variables()}
        gamma_var, beta_var = variables['gn/gamma'], variables['gn/beta']
        formula_out = tensorpack_formula(x_in, gamma_var, beta_var, group, data_format)
        exact_out = tensorpack_formula(*(tf.cast(t, tf.float64) for t in (x_in, gamma_var, beta_var)),
                                       group, data_format)
        results = []
        for out in (layer_out, formula_out, exact_out):
            loss = tf.reduce_sum(out * tf.cast(weights, out.dtype))
            results.append([tf.cast(out, tf.float32)] + tf.gradients(loss, [x_in, gamma_var, beta_var]))
        with tf.Session() as sess:
            sess.run(tf.global_variables_initializer())
            gamma_var.load(gamma, sess)
            beta_var.load(beta, sess)
            return sess.run(results, {x_in: x})


# Inputs of [N, h, w, C] = [2, 3, 5, 8] in 4 groups of 2 channels: 30 elements per group.
# 'large_mean': x = 1000 + randn, where E[x^2] - E[x]^2 in float32 loses the variance (1e6 - 1e6
# with rounding errors of ~0.06, 6% of it); the two-pass variance keeps it.
# 'tiny_variance': std 1e-3, variance 1e-6 against epsilon = 1e-5 inside the rsqrt.
INPUTS = {
    'unit': lambda rng, shape: rng.randn(*shape) * 3 + 1,
    'large_mean': lambda rng, shape: rng.randn(*shape) + 1000,
    'tiny_variance': lambda rng, shape: rng.randn(*shape) * 1e-3 - 2,
}


@pytest.mark.parametrize('inputs', sorted(INPUTS))
@pytest.mark.parametrize('data_format', ['NHWC', 'NCHW'])
def test_group_norm_matches_tensorpack_formula_and_its_gradients(data_format, inputs):
    rng = np.random.RandomState(11)
    x = INPUTS[inputs](rng, (2, 3, 5, 8)).astype(np.float32)
    gamma, beta = rng.randn(8).astype(np.float32), rng.randn(8).astype(np.float32)
    feed = x if data_format == 'NHWC' else x.transpose(0, 3, 1, 2)
    layer, formula, exact = layer_and_formula(feed, gamma, beta, 4, data_format)
    for name, got, old, want in zip(['output', 'dx', 'dgamma', 'dbeta'], layer, formula, exact):
        # Both compute in float32, differing in the order of the sums only. On values of unit scale
        # (|gamma|, |beta| ~ 1, 'unit') that is a few float32 ulps, ~1e-6: within 1e-5 of each other.
        # Both fold the output into x * scale + offset (scale = gamma / std), as tf.nn.batch_normalization
        # does, whose terms cancel when |mean| >> std ('large_mean', 'tiny_variance'): ~1e3 each, so
        # one rounding of them is ~1e-4, and more in the gradients. There the layer must be as close
        # to the exact (float64) values as the formula, up to 2x, plus 1e-5 of the values' scale.
        scale = np.abs(want).max()
        if inputs == 'unit':
            np.testing.assert_allclose(got, old, rtol=1e-5, atol=1e-5 * scale, err_msg=name)
        assert np.abs(got - want).max() <= 2 * np.abs(old - want).max() + 1e-5 * scale, name
    layer_nhwc = layer[0] if data_format == 'NHWC' else layer[0].transpose(0, 2, 3, 1)
    # The float64 numpy oracle: one rounding of the ~1e3 terms is at most 2.5e-4 here.
    np.testing.assert_allclose(layer_nhwc, group_norm_oracle(x, gamma, beta, 4), rtol=1e-5,
                               atol=1e-5 if inputs == 'unit' else 5e-4)


def test_group_norm_of_an_empty_batch_is_empty_with_zero_parameter_gradients():
    """A roi head may get no rows (modeling/batching.run_on_nonempty_batch pads the convs'
    input, but the layer itself must not fail on N = 0 either)."""
    rng = np.random.RandomState(3)
    gamma, beta = rng.randn(8).astype(np.float32), rng.randn(8).astype(np.float32)
    layer, formula, _ = layer_and_formula(np.zeros((0, 3, 5, 8), np.float32), gamma, beta, 4, 'NHWC')
    for got, want in zip(layer, formula):
        assert got.shape == want.shape
    assert layer[0].shape == (0, 3, 5, 8) and layer[1].shape == (0, 3, 5, 8)
    assert not layer[2].any() and not layer[3].any()


@pytest.mark.parametrize('data_format', ['NHWC', 'NCHW'])
def test_group_norm_keeps_static_shape(data_format):
    shape = [2, 3, 5, 8] if data_format == 'NHWC' else [2, 8, 3, 5]
    partial = [None, None, None, 8] if data_format == 'NHWC' else [None, 8, None, None]
    with tf.Graph().as_default():
        full = norms.GroupNorm('full', tf.zeros(shape), group=4, data_format=data_format)
        dynamic = norms.GroupNorm('dynamic', tf.placeholder(tf.float32, partial), group=4, data_format=data_format)
    assert full.shape.as_list() == shape and full.op.name == 'full/output'
    assert dynamic.shape.as_list() == partial


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
