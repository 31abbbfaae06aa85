"""Tests of modeling/backbone.py: tensorpack's variable names, freezing, padding, preprocessing.

Everything runs on tiny inputs; the ResNet-50 checks only build the graph.
"""
import numpy as np
import pytest

from utils.tf_compat import tf
from tensorpack.tfutils.tower import TowerContext

from modeling import backbone
from tests.tf_helpers import run_graph

BASE_KW = dict(norm='FreezeBN', freeze_at=2, freeze_affine=False, tf_pad_mode=False,
               stride_1x1=False, data_format='NHWC')
WIDTHS = (64, 128, 256, 512)
NORM_VARIABLES = {
    'FreezeBN': ('bn/gamma', 'bn/beta', 'bn/mean/EMA', 'bn/variance/EMA'),
    'GN': ('gn/gamma', 'gn/beta'),
    'None': (),
}


def expected_variables(num_blocks, norm, first_group=0, in_channels=None):
    """{name: shape} written from tensorpack's naming scheme, independently of backbone.py."""
    expected = {}

    def conv(name, kernel, cin, cout):
        expected[name + '/W'] = [kernel, kernel, cin, cout]
        for suffix in NORM_VARIABLES[norm]:
            expected[name + '/' + suffix] = [cout]

    if first_group == 0:
        conv('conv0', 7, 3, 64)
        in_channels = 64
    for group, count in enumerate(num_blocks, start=first_group):
        width = WIDTHS[group]
        for block in range(count):
            prefix = 'group{}/block{}/'.format(group, block)
            conv(prefix + 'conv1', 1, in_channels, width)
            conv(prefix + 'conv2', 3, width, width)
            conv(prefix + 'conv3', 1, width, 4 * width)
            if block == 0:
                conv(prefix + 'convshortcut', 1, in_channels, 4 * width)
            in_channels = 4 * width
    return expected


def build(fn, shape=(1, 64, 96, 3), training=False):
    """Build fn(image placeholder) in a new graph; return (graph, placeholder, outputs)."""
    graph = tf.Graph()
    with graph.as_default(), TowerContext('', is_training=training):
        image = tf.placeholder(tf.float32, shape, name='input')
        outputs = fn(image)
    return graph, image, outputs


def variable_shapes(graph, collection=tf.GraphKeys.GLOBAL_VARIABLES):
    with graph.as_default():
        return {v.op.name: v.shape.as_list() for v in tf.get_collection(collection)}


def fpn(num_blocks=(1, 1, 1, 1), **overrides):
    return lambda image: backbone.resnet_fpn_backbone(image, list(num_blocks), **dict(BASE_KW, **overrides))


# Variable names and shapes -------------------------------------------------------------

@pytest.mark.parametrize('norm', ['FreezeBN', 'GN', 'None'])
def test_fpn_variables_match_tensorpack_names(norm):
    graph, _, _ = build(fpn(norm=norm))
    assert variable_shapes(graph) == expected_variables([1, 1, 1, 1], norm)


def test_r50_fpn_variables_build_only():
    graph, _, _ = build(fpn([3, 4, 6, 3]), shape=(1, None, None, 3))
    shapes = variable_shapes(graph)
    assert shapes == expected_variables([3, 4, 6, 3], 'FreezeBN')
    # conv0 + 16 blocks x 3 convs + 4 shortcut convs
    assert len([name for name in shapes if name.endswith("/W")]) == 1 + 16 * 3 + 4


def test_c4_backbone_and_conv5_variables():
    kw = dict(BASE_KW, norm='GN')
    conv5_kw = {k: v for k, v in kw.items() if k != 'freeze_at'}

    def fn(image):
        c4 = backbone.resnet_c4_backbone(image, [1, 2, 1], **kw)
        return backbone.resnet_conv5(c4, 2, **conv5_kw)

    graph, _, _ = build(fn)
    expected = expected_variables([1, 2, 1], 'GN')
    expected.update(expected_variables([2], 'GN', first_group=3, in_channels=1024))
    assert variable_shapes(graph) == expected


def test_conv5_reuses_its_variables_when_called_twice():
    kw = {k: v for k, v in BASE_KW.items() if k != 'freeze_at'}

    def fn(features):
        first = backbone.resnet_conv5(features, 1, **kw)
        return first, backbone.resnet_conv5(features * 2., 1, **kw)

    graph, _, _ = build(fn, shape=(3, 14, 14, 1024))
    assert variable_shapes(graph) == expected_variables([1], 'FreezeBN', first_group=3, in_channels=1024)


@pytest.mark.parametrize('norm', ['FreezeBN', 'GN'])
def test_nchw_graph_has_the_same_variables_as_nhwc(norm):
    # Build only: stock CPU TensorFlow has no NCHW conv kernels.
    nhwc, _, _ = build(fpn(norm=norm), shape=(1, None, None, 3))
    nchw, _, outputs = build(fpn(norm=norm, data_format='NCHW'), shape=(1, 3, None, None))
    assert variable_shapes(nchw) == variable_shapes(nhwc)
    assert [out.shape.as_list()[1] for out in outputs] == [256, 512, 1024, 2048]


# Outputs -------------------------------------------------------------------------------

def test_fpn_outputs_strides_4_to_32_of_the_padded_image():
    # 50x70 is padded to 64x96, the next multiples of 32.
    image = np.random.RandomState(0).randn(1, 50, 70, 3).astype(np.float32)
    outputs = run_graph(fpn(), image)
    assert [out.shape for out in outputs] == [
        (1, 16, 24, 256), (1, 8, 12, 512), (1, 4, 6, 1024), (1, 2, 3, 2048)]


def test_fpn_pads_to_resolution_requirement():
    image = np.zeros((1, 65, 64, 3), np.float32)
    c2, _, _, c5 = run_graph(
        lambda x: backbone.resnet_fpn_backbone(x, [1, 1, 1, 1], resolution_requirement=64, **BASE_KW), image)
    assert c2.shape[1:3] == (32, 16) and c5.shape[1:3] == (4, 2)


@pytest.mark.parametrize('stride_1x1', [False, True])
def test_c4_handles_odd_sizes(stride_1x1):
    # tensorpack's arithmetic, out = floor((in + total_pad - k) / 2) + 1: conv0 (k 7, pad 5)
    # 67 -> 33, pool (k 3, pad 1) -> 16, group1 -> 8, group2 -> 4; 99 -> 49 -> 24 -> 12 -> 6.
    # The crop before each strided 1x1 conv keeps both branches of a block the same size.
    kw = dict(BASE_KW, stride_1x1=stride_1x1)
    image = np.random.RandomState(1).randn(1, 67, 99, 3).astype(np.float32)
    c4 = run_graph(lambda x: backbone.resnet_c4_backbone(x, [1, 1, 1], **kw), image)
    assert c4.shape == (1, 4, 6, 1024)
    assert np.isfinite(c4).all()


def tensorpack_reference(image, graph, num_groups, tf_pad_mode, fpn_mode):
    """Forward pass of a norm='None' backbone written the way tensorpack writes it: tf.pad with
    maybe_reverse_pad amounts + 'VALID' for every stride-2 layer, crops in C4 mode. NHWC."""
    def weight(name):
        return graph.get_tensor_by_name(name + '/W:0')

    def pad(x, small, large, extra=None):
        before, after = (small, large) if tf_pad_mode else (large, small)
        rows = [before, after] if extra is None else [before, after + extra[0]]
        cols = [before, after] if extra is None else [before, after + extra[1]]
        return tf.pad(x, tf.stack([[0, 0], rows, cols, [0, 0]]))

    def conv(x, name, stride=1, padding='SAME'):
        return tf.nn.conv2d(x, weight(name), [1, stride, stride, 1], padding)

    extra = tf.math.floormod(-tf.shape(image)[1:3], 32) if fpn_mode else None
    x = tf.nn.relu(conv(pad(image, 2, 3, extra), 'conv0', 2, 'VALID'))
    x = tf.nn.max_pool2d(pad(x, 0, 1), 3, 2, 'VALID')
    outputs = []
    for group in range(num_groups):
        stride = 1 if group == 0 else 2
        prefix = 'group{}/block0/'.format(group)
        y = tf.nn.relu(conv(x, prefix + 'conv1'))
        if stride == 2:
            y = tf.nn.relu(conv(pad(y, 0, 1), prefix + 'conv2', 2, 'VALID'))
        else:
            y = tf.nn.relu(conv(y, prefix + 'conv2'))
        y = conv(y, prefix + 'conv3')
        shortcut = x[:, :-1, :-1, :] if (stride == 2 and not fpn_mode) else x
        x = tf.nn.relu(y + conv(shortcut, prefix + 'convshortcut', stride))
        outputs.append(x)
    return outputs


@pytest.mark.parametrize('fpn_mode', [False, True])
@pytest.mark.parametrize('tf_pad_mode', [False, True])
def test_matches_tensorpack_padding_and_cropping(tf_pad_mode, fpn_mode):
    # Odd sizes exercise the C4 crops; FPN pads 35x45 to 64x64 first.
    kw = dict(BASE_KW, norm='None', tf_pad_mode=tf_pad_mode)
    rng = np.random.RandomState(3)
    image = rng.randn(1, 35, 45, 3).astype(np.float32)
    graph = tf.Graph()
    with graph.as_default(), TowerContext('', is_training=False):
        placeholder = tf.placeholder(tf.float32, [1, None, None, 3])
        if fpn_mode:
            ours = list(backbone.resnet_fpn_backbone(placeholder, [1, 1, 1, 1], **kw))
        else:
            ours = [backbone.resnet_c4_backbone(placeholder, [1, 1, 1], **kw)]
        reference = tensorpack_reference(placeholder, graph, len(ours) + (0 if fpn_mode else 2),
                                         tf_pad_mode, fpn_mode)[-len(ours):]
        with tf.Session() as sess:
            for var in tf.global_variables():   # random weights: conv3 starts at zero otherwise
                fan_in = np.prod(var.shape.as_list()[:3])
                var.load(rng.randn(*var.shape.as_list()).astype(np.float32) / np.sqrt(fan_in), sess)
            ours_np, reference_np = sess.run([ours, reference], {placeholder: image})
    # Both pad modes give the same sizes: C4 35x45 -> 17x22 -> 8x11 -> 4x5 -> 2x2; FPN 64x64 -> 16, 8, 4, 2.
    expected_sizes = [(16, 16), (8, 8), (4, 4), (2, 2)] if fpn_mode else [(2, 2)]
    assert [got.shape[1:3] for got in ours_np] == expected_sizes
    for got, want in zip(ours_np, reference_np):
        assert got.shape == want.shape
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())


# Freezing ------------------------------------------------------------------------------

def trainable_names(graph):
    return set(variable_shapes(graph, tf.GraphKeys.TRAINABLE_VARIABLES))


@pytest.mark.parametrize('freeze_at, frozen_prefixes', [
    (0, ()), (1, ('conv0/',)), (2, ('conv0/', 'group0/'))])
def test_freeze_at_controls_trainable_variables(freeze_at, frozen_prefixes):
    graph, image, outputs = build(fpn(freeze_at=freeze_at), training=True)
    all_vars = variable_shapes(graph)
    learnable = {name for name in all_vars if not name.endswith('/EMA')}
    frozen = {name for name in learnable if name.startswith(frozen_prefixes)} if frozen_prefixes else set()
    assert trainable_names(graph) == learnable - frozen
    # Frozen variables are still model variables (saved and loaded with the model).
    assert frozen <= set(variable_shapes(graph, tf.GraphKeys.MODEL_VARIABLES))
    # Freezing keeps variables out of training but still lets gradients through.
    with graph.as_default():
        assert tf.gradients(tf.reduce_sum(outputs[-1]), image)[0] is not None


def test_freeze_affine_freezes_only_gamma_and_beta():
    graph, _, _ = build(fpn(freeze_at=0, freeze_affine=True), training=True)
    trainable = trainable_names(graph)
    all_vars = set(variable_shapes(graph))
    assert trainable == {name for name in all_vars if name.endswith('/W')}
    model_vars = set(variable_shapes(graph, tf.GraphKeys.MODEL_VARIABLES))
    assert {name for name in all_vars if name.endswith(('/gamma', '/beta'))} <= model_vars


def batch_norm_ops(graph, scope):
    return [op for op in graph.get_operations() if op.name.startswith(scope) and op.type == 'FusedBatchNormV3']


def test_freeze_bn_uses_moving_statistics_in_training():
    graph, _, _ = build(fpn(freeze_at=0), training=True)
    fused = batch_norm_ops(graph, '')
    assert fused and all(not op.get_attr('is_training') for op in fused)
    assert not graph.get_collection(tf.GraphKeys.UPDATE_OPS)


def test_sync_bn_uses_batch_statistics_only_outside_frozen_stages():
    graph, _, _ = build(fpn(norm='SyncBN', sync_statistics='nccl', freeze_at=2), training=True)
    assert all(not op.get_attr('is_training') for op in batch_norm_ops(graph, 'group0/'))
    # Unfrozen stages compute (synchronized) batch moments instead of a frozen fused BN.
    assert not batch_norm_ops(graph, 'group1/')
    assert [op for op in graph.get_operations() if op.name.startswith('group1/') and op.type == 'Mean']


# Argument errors -----------------------------------------------------------------------

@pytest.mark.parametrize('overrides, message', [
    (dict(norm='BN'), 'FreezeBN, SyncBN, GN, None'),
    (dict(norm='SyncBN'), 'sync_statistics'),
    (dict(freeze_at=3), 'FREEZE_AT'),
    (dict(data_format='channels_first'), 'NHWC, NCHW'),
])
def test_bad_arguments_raise_naming_the_value(overrides, message):
    with pytest.raises(ValueError, match=message):
        build(fpn(**overrides))


def test_wrong_number_of_groups_raises():
    with pytest.raises(ValueError, match='4 positive ints'):
        build(fpn([1, 1, 1]))


# Preprocessing -------------------------------------------------------------------------

@pytest.mark.parametrize('data_format', ['NHWC', 'NCHW'])
def test_image_preprocess_reverses_rgb_statistics_for_bgr_input(data_format):
    # A pixel equal to the mean (written BGR) maps to 0; mean + std maps to 1 in every channel.
    mean_rgb, std_rgb = [100., 110., 120.], [10., 20., 40.]
    image = np.array([[[120., 110., 100.], [160., 130., 110.]]], np.float32)   # [1, 2, 3] BGR
    out = run_graph(lambda x: backbone.image_preprocess(x, mean_rgb, std_rgb, data_format), image)
    expected = np.array([[[[0., 0., 0.], [1., 1., 1.]]]], np.float32)
    if data_format == 'NCHW':
        expected = expected.transpose(0, 3, 1, 2)
    np.testing.assert_allclose(out, expected, atol=1e-6)


# Training ------------------------------------------------------------------------------

def _in_residual_branch(name):
    """conv1..conv3 of a block, except conv3's norm (which is what starts at zero)."""
    layer = name.split('/')[2] if name.startswith('group') else ''
    return layer in ('conv1', 'conv2') or (layer == 'conv3' and name.endswith('/W'))


def test_gn_training_step_starts_blocks_as_identity_and_lowers_the_loss():
    """conv3's norm starts with gamma = 0, so every residual branch outputs 0 at first: exactly
    the branch's own variables (conv1, conv2, conv3/W) get a zero gradient, everything on the
    identity/shortcut path (conv0, convshortcut, conv3's gamma and beta) a nonzero one. One small
    gradient step on the quadratic loss then lowers it."""
    rng = np.random.RandomState(6)
    graph, image, outputs = build(fpn(norm='GN', freeze_at=0), shape=(1, None, None, 3), training=True)
    with graph.as_default():
        loss = tf.add_n([tf.reduce_mean(tf.square(out - 0.5)) for out in outputs])
        optimizer = tf.train.GradientDescentOptimizer(0.01)
        grads_and_vars = optimizer.compute_gradients(loss)
        assert len(grads_and_vars) == len(tf.trainable_variables()) > 0
        assert all(grad is not None for grad, _ in grads_and_vars)
        train_op = optimizer.apply_gradients(grads_and_vars)
        feed = {image: rng.randn(1, 32, 40, 3).astype(np.float32)}
        with tf.Session() as sess:
            sess.run(tf.global_variables_initializer())
            loss_before, grads = sess.run([loss, [grad for grad, _ in grads_and_vars]], feed)
            sess.run(train_op, feed)
            loss_after = sess.run(loss, feed)
    names = [var.op.name for _, var in grads_and_vars]
    zero = {name for name, grad in zip(names, grads) if not np.any(grad)}
    assert zero == {name for name in names if _in_residual_branch(name)}
    assert all(np.isfinite(grad).all() for grad in grads)
    assert loss_after < loss_before
