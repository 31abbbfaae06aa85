"""ResNet backbones (C4 and FPN flavours).

Shape shorthand: H, W image size in pixels; C channels; h, w the size of a feature map.
A feature map is float32 [1, h, w, C] for data_format 'NHWC' and [1, C, h, w] for 'NCHW'.
Both layouts create the same variables (conv kernels are HWIO), so one checkpoint serves both.

Variable names and shapes are tensorpack's, so its model-zoo checkpoints load unchanged:
  conv0/W [7, 7, 3, 64] + norm, group{g}/block{i}/conv{1,2,3}/W + norm,
  group{g}/block0/convshortcut/W + norm, where "norm" is bn/{gamma, beta, mean/EMA,
  variance/EMA} (FreezeBN, SyncBN), gn/{gamma, beta} (GN) or nothing ('None').

Padding of the stride-2 layers follows tensorpack exactly, for odd sizes too. With
tf_pad_mode=False (the default) each stride-2 window starts one pixel (three for conv0) before
the image, like Caffe/Detectron's symmetric padding on even sizes; with tf_pad_mode=True they
start where TF's 'SAME' starts them on even sizes. The convs take these (top, bottom) paddings
as the op's explicit padding, which is tensorpack's tf.pad + 'VALID' without copying the tensor.
"""
import dataclasses
from contextlib import contextmanager

import numpy as np

from utils.tf_compat import tf

from tensorpack.models import BatchNorm
from tensorpack.tfutils.varreplace import custom_getter_scope, freeze_variables

from .model_box import check_data_format
from .norms import GroupNorm
from .params import FREEZE_AT_VALUES, SYNC_STATISTICS_BY_TRAINER
from .variable_reuse import reuse_variables_when_called_again

SYNC_STATISTICS = tuple(SYNC_STATISTICS_BY_TRAINER.values())


@dataclasses.dataclass(frozen=True)
class _Options:
    """Hyperparameters shared by every layer of one backbone build."""
    norm: str
    data_format: str
    tf_pad_mode: bool
    stride_1x1: bool
    freeze_affine: bool
    sync_statistics: str = None
    # C4 feature maps may have odd sizes; tensorpack crops the last row/column before the
    # strided 1x1 convs so both branches of a block agree. FPN pads the image so sizes are even.
    crop_odd: bool = False
    frozen: bool = False        # the current stage is frozen (set per stage)

    @property
    def channel_axis(self):
        return 3 if self.data_format == 'NHWC' else 1


def _batch_norm(x, opts, gamma_initializer):
    if opts.norm == 'FreezeBN' or opts.frozen:
        return BatchNorm('bn', x, training=False, gamma_initializer=gamma_initializer,
                         data_format=opts.data_format)
    return BatchNorm('bn', x, sync_statistics=opts.sync_statistics,
                     gamma_initializer=gamma_initializer, data_format=opts.data_format)


def _group_norm(x, opts, gamma_initializer):
    return GroupNorm('gn', x, gamma_initializer=gamma_initializer, data_format=opts.data_format)


# BACKBONE.NORM -> normalization after each conv (None: no normalization at all).
NORMS = {
    'FreezeBN': _batch_norm,   # BatchNorm with its statistics frozen (always uses the EMA)
    'SyncBN': _batch_norm,     # BatchNorm with batch statistics averaged over all GPUs
    'GN': _group_norm,
    'None': None,
}


def _check_options(norm, data_format, sync_statistics):
    if norm not in NORMS:
        raise ValueError('Unknown BACKBONE.NORM {!r}; valid: {}'.format(norm, ', '.join(NORMS)))
    check_data_format(data_format)
    if norm == 'SyncBN' and sync_statistics not in SYNC_STATISTICS:
        raise ValueError("BACKBONE.NORM='SyncBN' needs sync_statistics in {}, got {!r}".format(
            SYNC_STATISTICS, sync_statistics))


def _check_num_blocks(num_blocks, expected_len):
    if len(num_blocks) != expected_len or any(int(n) < 1 for n in num_blocks):
        raise ValueError('num_blocks must be {} positive ints, got {}'.format(expected_len, num_blocks))


def _freeze_affine_getter(getter, *args, **kwargs):
    """Variable getter that makes norm gamma/beta non-trainable but keeps them model variables."""
    name = args[0] if args else kwargs.get('name')
    if not (name.endswith('/gamma') or name.endswith('/beta')):
        return getter(*args, **kwargs)
    kwargs['trainable'] = False
    variable = getter(*args, **kwargs)
    if not any(v is variable for v in tf.get_collection(tf.GraphKeys.MODEL_VARIABLES)):
        tf.add_to_collection(tf.GraphKeys.MODEL_VARIABLES, variable)
    return variable


@contextmanager
def _stage_scope(opts, frozen):
    """Yields the options of one stage, with its variables frozen if asked.

    Frozen variables stay out of TRAINABLE_VARIABLES (gradients still flow through them to
    earlier layers); unfrozen stages may still freeze just the norm's gamma/beta.
    """
    stage_opts = dataclasses.replace(opts, frozen=frozen)
    if frozen:
        with freeze_variables(stop_gradient=False, skip_collection=True):
            yield stage_opts
    elif opts.freeze_affine:
        with custom_getter_scope(_freeze_affine_getter):
            yield stage_opts
    else:
        yield stage_opts


def _padding(opts, pad_before, pad_after):
    """Explicit padding of both spatial axes, in the op's layout."""
    spatial = [pad_before, pad_after]
    if opts.data_format == 'NHWC':
        return [[0, 0], spatial, spatial, [0, 0]]
    return [[0, 0], [0, 0], spatial, spatial]


def _stride2_padding(opts, kernel_size):
    """Tensorpack's padding of a stride-2 kxk window (k = 3 or 7), see the module docstring."""
    small, large = (kernel_size - 1) // 2 - 1, (kernel_size - 1) // 2
    if opts.tf_pad_mode:
        return _padding(opts, small, large)
    return _padding(opts, large, small)


def _strides(opts, stride):
    return [1, stride, stride, 1] if opts.data_format == 'NHWC' else [1, 1, stride, stride]


def _crop_last_row_col(x, opts):
    if opts.data_format == 'NHWC':
        return x[:, :-1, :-1, :]
    return x[:, :, :-1, :-1]


def _conv(name, x, out_channels, kernel_size, opts, *, stride=1, relu=True, zero_init=False, in_channels=None):
    """Conv (no bias) + norm (+ ReLU), variables `{name}/W` [k, k, C_in, out_channels] + norm.

    in_channels: C_in, when it is fixed by the architecture rather than read from x's static shape.

    zero_init: start the norm's gamma at 0 (or the kernel, without norm) so that a residual
    block begins as the identity.
    """
    norm_fn = NORMS[opts.norm]
    if stride == 1 or kernel_size == 1:
        padding = 'SAME'    # for 1x1 kernels 'SAME' never pads, whatever the stride
    else:
        padding = _stride2_padding(opts, kernel_size)
    with tf.variable_scope(name):
        if in_channels is None:
            in_channels = x.shape.as_list()[opts.channel_axis]
        if in_channels is None:
            raise ValueError('{}: the input channel count must be static, got shape {}'.format(name, x.shape))
        if norm_fn is None and zero_init:
            kernel_init = tf.zeros_initializer()
        else:
            kernel_init = tf.variance_scaling_initializer(scale=2.0, mode='fan_out')
        kernel = tf.get_variable('W', [kernel_size, kernel_size, in_channels, out_channels],
                                 initializer=kernel_init)
        y = tf.nn.conv2d(x, kernel, _strides(opts, stride), padding, data_format=opts.data_format)
        if norm_fn is not None:
            # tensorpack passes gamma_initializer=None here, which TF turns into a Glorot-uniform
            # gamma; ones is what is meant (it only matters when training from scratch).
            y = norm_fn(y, opts, tf.zeros_initializer() if zero_init else tf.ones_initializer())
        if relu:
            y = tf.nn.relu(y)
    return y


def _shortcut(x, out_channels, stride, opts):
    if x.shape.as_list()[opts.channel_axis] == out_channels:
        return x
    if stride == 2 and opts.crop_odd:
        x = _crop_last_row_col(x, opts)
    return _conv('convshortcut', x, out_channels, 1, opts, stride=stride, relu=False)


def _bottleneck(x, width, stride, opts):
    """ResNet v1 bottleneck: 1x1 width, 3x3 width, 1x1 4*width; the stride in conv1 or conv2."""
    shortcut = x
    if opts.stride_1x1:
        if stride == 2 and opts.crop_odd:
            x = _crop_last_row_col(x, opts)
        x = _conv('conv1', x, width, 1, opts, stride=stride)
        x = _conv('conv2', x, width, 3, opts)
    else:
        x = _conv('conv1', x, width, 1, opts)
        x = _conv('conv2', x, width, 3, opts, stride=stride)
    x = _conv('conv3', x, width * 4, 1, opts, relu=False, zero_init=True)
    return tf.nn.relu(x + _shortcut(shortcut, width * 4, stride, opts), name='output')


def _resnet_group(name, x, width, count, stride, opts):
    with tf.variable_scope(name):
        for i in range(count):
            with tf.variable_scope('block{}'.format(i)):
                x = _bottleneck(x, width, stride if i == 0 else 1, opts)
    return x


def _stem(image, opts):
    """conv0 (7x7/2, 64) + 3x3/2 max pool: stride 4."""
    x = _conv('conv0', image, 64, 7, opts, stride=2, in_channels=3)   # BGR
    # A separate zero pad (as tensorpack) because several GPU max-pool kernels lack explicit padding.
    x = tf.pad(x, _stride2_padding(opts, 3))
    return tf.nn.max_pool2d(x, 3, 2, 'VALID', data_format=opts.data_format, name='pool0')


def _make_options(norm, freeze_affine, tf_pad_mode, stride_1x1, data_format, sync_statistics, crop_odd):
    _check_options(norm, data_format, sync_statistics)
    return _Options(norm=norm, data_format=data_format, tf_pad_mode=bool(tf_pad_mode),
                    stride_1x1=bool(stride_1x1), freeze_affine=bool(freeze_affine),
                    sync_statistics=sync_statistics if norm == 'SyncBN' else None, crop_odd=crop_odd)


def _check_freeze_at(freeze_at):
    if freeze_at not in FREEZE_AT_VALUES:
        raise ValueError('BACKBONE.FREEZE_AT must be one of {}, got {!r}'.format(FREEZE_AT_VALUES, freeze_at))


def image_preprocess(image, pixel_mean, pixel_std, data_format):
    """Normalize one BGR image and add the batch axis (a batch [B, H, W, 3] keeps its own).

    image: [H, W, 3] BGR, float32 (other dtypes are cast). pixel_mean, pixel_std: 3 floats in
    RGB order (as in the config). Returns float32 [1, H, W, 3] ('NHWC') or [1, 3, H, W] ('NCHW')
    holding (image - mean) / std per channel.
    """
    check_data_format(data_format)
    with tf.name_scope('image_preprocess'):
        image = tf.cast(image, tf.float32)
        mean_bgr = np.asarray(pixel_mean, dtype=np.float32)[::-1]
        inv_std_bgr = 1.0 / np.asarray(pixel_std, dtype=np.float32)[::-1]
        image = (image - tf.constant(mean_bgr)) * tf.constant(inv_std_bgr)
        if image.shape.ndims != 4:
            image = tf.expand_dims(image, 0)
        if data_format == 'NCHW':
            image = tf.transpose(image, [0, 3, 1, 2])
        return image


def resnet_c4_backbone(image, num_blocks, *, norm, freeze_at, freeze_affine, tf_pad_mode,
                       stride_1x1, data_format, sync_statistics=None):
    """ResNet stem + groups 0..2 for the C4 models.

    image: float32 [1, H, W, 3] or [1, 3, H, W], preprocessed (any H, W).
    num_blocks: 3 ints (blocks in group0..2). Returns c4: [1, h, w, 1024] (or NCHW), stride 16.
    freeze_at: 0 nothing frozen, 1 conv0 frozen, 2 conv0 and group0 frozen.
    """
    _check_num_blocks(num_blocks, 3)
    _check_freeze_at(freeze_at)
    opts = _make_options(norm, freeze_affine, tf_pad_mode, stride_1x1, data_format, sync_statistics,
                         crop_odd=True)
    with _stage_scope(opts, frozen=freeze_at > 0) as stage:
        x = _stem(image, stage)
    with _stage_scope(opts, frozen=freeze_at > 1) as stage:
        x = _resnet_group('group0', x, 64, num_blocks[0], 1, stage)
    with _stage_scope(opts, frozen=False) as stage:
        x = _resnet_group('group1', x, 128, num_blocks[1], 2, stage)
        return _resnet_group('group2', x, 256, num_blocks[2], 2, stage)


@reuse_variables_when_called_again
def resnet_conv5(features, num_block, *, norm, freeze_affine, tf_pad_mode, stride_1x1, data_format,
                 sync_statistics=None):
    """group3 (stride 2, 2048 channels) of the C4 models, applied to pooled ROI features.

    features: float32 [N, h, w, 1024] (or NCHW). Returns [N, ceil(h/2), ceil(w/2), 2048] for
    even h, w. Variables are reused when called again in the same scope.
    """
    _check_num_blocks([num_block], 1)
    opts = _make_options(norm, freeze_affine, tf_pad_mode, stride_1x1, data_format, sync_statistics,
                         crop_odd=True)
    with _stage_scope(opts, frozen=False) as stage:
        return _resnet_group('group3', features, 512, num_block, 2, stage)


def pad_to_multiple(image, multiple, data_format):
    """Zero-pad the bottom/right of [1, H, W, C] (or NCHW) so H and W are multiples of `multiple`."""
    with tf.name_scope('pad_to_multiple'):
        spatial = tf.shape(image)[1:3] if data_format == 'NHWC' else tf.shape(image)[2:4]
        extra = tf.math.floormod(-spatial, multiple)
        no_pad = tf.constant([0, 0])
        rows_pad, cols_pad = tf.stack([0, extra[0]]), tf.stack([0, extra[1]])
        if data_format == 'NHWC':
            paddings = [no_pad, rows_pad, cols_pad, no_pad]
        else:
            paddings = [no_pad, no_pad, rows_pad, cols_pad]
        padded = tf.pad(image, tf.stack(paddings))
        # The dynamic paddings hide every static size; batch and channels are unchanged.
        static = image.shape.as_list()
        if data_format == 'NHWC':
            padded.set_shape([static[0], None, None, static[3]])
        else:
            padded.set_shape([static[0], static[1], None, None])
        return padded


def resnet_fpn_backbone(image, num_blocks, *, norm, freeze_at, freeze_affine, tf_pad_mode, stride_1x1,
                        data_format, resolution_requirement=32, sync_statistics=None):
    """ResNet stem + groups 0..3 for the FPN models.

    image: float32 [1, H, W, 3] or [1, 3, H, W], preprocessed. It is zero-padded at the
    bottom/right to Hp, Wp = multiples of `resolution_requirement` (a multiple of 32).
    num_blocks: 4 ints. Returns (c2, c3, c4, c5) with strides 4, 8, 16, 32 (sizes Hp/s, Wp/s)
    and 256, 512, 1024, 2048 channels, in `data_format`.
    """
    _check_num_blocks(num_blocks, 4)
    _check_freeze_at(freeze_at)
    if resolution_requirement % 32 != 0:
        raise ValueError('resolution_requirement must be a multiple of 32, got {}'.format(resolution_requirement))
    opts = _make_options(norm, freeze_affine, tf_pad_mode, stride_1x1, data_format, sync_statistics,
                         crop_odd=False)
    image = pad_to_multiple(image, resolution_requirement, data_format)
    with _stage_scope(opts, frozen=freeze_at > 0) as stage:
        x = _stem(image, stage)
    with _stage_scope(opts, frozen=freeze_at > 1) as stage:
        c2 = _resnet_group('group0', x, 64, num_blocks[0], 1, stage)
    with _stage_scope(opts, frozen=False) as stage:
        c3 = _resnet_group('group1', c2, 128, num_blocks[1], 2, stage)
        c4 = _resnet_group('group2', c3, 256, num_blocks[2], 2, stage)
        c5 = _resnet_group('group3', c4, 512, num_blocks[3], 2, stage)
    return c2, c3, c4, c5
