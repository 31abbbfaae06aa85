"""Mask R-CNN pieces: mask unpacking, the loss on the gt class channel, the heads' variables."""
import numpy as np
import pytest

from utils.tf_compat import tf  # noqa: I001  (must come before tensorpack)

from tensorpack.tfutils.tower import TowerContext

from modeling.model_mrcnn import (MASK_HEADS, get_mask_head, maskrcnn_c4_head, maskrcnn_loss, select_class_masks,
                                  unpackbits_masks)
from tests.tf_helpers import run_graph


@pytest.mark.parametrize('height, width', [(5, 13), (1, 1), (4, 16)])
def test_unpackbits_inverts_packbits_and_crops_to_the_image(height, width):
    rng = np.random.RandomState(0)
    masks = (rng.rand(3, height, width) > 0.5).astype(np.uint8)
    padded = np.zeros((3, height, (width + 7) // 8 * 8), np.uint8)
    padded[:, :, :width] = masks
    packed = np.packbits(padded, axis=-1)
    unpacked = run_graph(lambda p, hw: unpackbits_masks(p, hw), packed, np.array([height, width], np.int32))
    assert unpacked.dtype == np.uint8
    np.testing.assert_array_equal(unpacked, masks)


def test_unpackbits_rejects_other_dtypes():
    with tf.Graph().as_default(), pytest.raises(ValueError, match='uint8'):
        unpackbits_masks(tf.zeros([1, 2, 1], tf.int32), [2, 8])


def np_sigmoid_ce(logits, labels):
    return np.maximum(logits, 0) - logits * labels + np.log1p(np.exp(-np.abs(logits)))


def test_loss_uses_the_gt_class_channel():
    rng = np.random.RandomState(0)
    logits = rng.randn(2, 3, 4, 4).astype(np.float32)   # F=2 rois, K=3 classes, 4x4 masks
    labels = np.array([3, 1], np.int64)
    targets = (rng.rand(2, 4, 4) > 0.5).astype(np.float32)
    loss = run_graph(lambda *a: maskrcnn_loss(*a), logits, labels, targets, training=True)
    chosen = logits[[0, 1], labels - 1]
    np.testing.assert_allclose(loss, np_sigmoid_ce(chosen, targets).mean(), rtol=1e-5)


def test_loss_without_foreground_is_zero():
    loss = run_graph(lambda *a: maskrcnn_loss(*a), np.zeros((0, 3, 4, 4), np.float32), np.zeros((0,), np.int64),
                     np.zeros((0, 4, 4), np.float32), training=True)
    assert loss == 0


def test_select_class_masks():
    logits = np.arange(2 * 3 * 2 * 2, dtype=np.float32).reshape(2, 3, 2, 2)
    out = run_graph(select_class_masks, logits, np.array([2, 3], np.int32))
    np.testing.assert_array_equal(out, logits[[0, 1], [1, 2]])


def _variables():
    return {v.op.name: v.shape.as_list() for v in tf.global_variables()}


@pytest.mark.parametrize('name', sorted(MASK_HEADS))
@pytest.mark.parametrize('data_format', ['NHWC', 'NCHW'])
def test_fpn_mask_heads(name, data_format):
    shape = [None, 14, 14, 32] if data_format == 'NHWC' else [None, 32, 14, 14]
    with tf.Graph().as_default():
        feature = tf.placeholder(tf.float32, shape)
        with TowerContext('', is_training=True):
            logits = get_mask_head(name)('maskrcnn', feature, 5, head_dim=32, data_format=data_format)
        assert logits.shape.as_list() == [None, 5, 28, 28]   # class-major in both layouts
        found = _variables()
    assert found['maskrcnn/fcn0/W'] == [3, 3, 32, 32] and found['maskrcnn/fcn3/b'] == [32]
    assert found['maskrcnn/deconv/W'] == [2, 2, 32, 32]
    assert found['maskrcnn/conv/W'] == [1, 1, 32, 5] and found['maskrcnn/conv/b'] == [5]
    assert ('maskrcnn/gn0/gamma' in found) == name.endswith('_gn_head')


def test_c4_mask_head_has_only_deconv_and_conv():
    with tf.Graph().as_default():
        feature = tf.placeholder(tf.float32, [None, 7, 7, 64])
        with TowerContext('', is_training=True):
            logits = maskrcnn_c4_head('maskrcnn', feature, 4, head_dim=16, data_format='NHWC')
        assert logits.shape.as_list() == [None, 4, 14, 14]
        assert _variables() == {'maskrcnn/deconv/W': [2, 2, 16, 64], 'maskrcnn/deconv/b': [16],
                                'maskrcnn/conv/W': [1, 1, 16, 4], 'maskrcnn/conv/b': [4]}


def test_unknown_mask_head_lists_the_valid_ones():
    with pytest.raises(KeyError, match='maskrcnn_up4conv_head'):
        get_mask_head('maskrcnn_up8conv_head')
