"""utils/checkpoint_check.py: saved weights of one tiny config loaded into the graph of another."""
import numpy as np
import pytest

from utils.tf_compat import tf  # noqa: I001  (must come before tensorpack)

from tensorpack.predict import OfflinePredictor, PredictConfig

from config import reset_config
from tests.modeling import rcnn_helpers as helpers
from utils import checkpoint_check
from utils import tensor_names as names

GN = ['BACKBONE.NORM=GN', 'FPN.NORM=GN']


def predictor_for(path, *overrides, num_category=None):
    """An OfflinePredictor of the tiny inference graph of `overrides`, restored from `path`."""
    reset_config()
    helpers.configure(*overrides, is_training=False, num_category=num_category)
    model = helpers.build_model()
    in_names, out_names = model.get_inference_tensor_names()
    return OfflinePredictor(PredictConfig(model=model, session_init=checkpoint_check.CheckedRestore(path),
                                          input_names=in_names, output_names=out_names))


@pytest.fixture(scope='module')
def saved(tmp_path_factory):
    """Random weights of a few tiny configs: name -> (path, values)."""
    directory = tmp_path_factory.mktemp('weights')
    models = {
        'gn_r1111.npz': GN,
        'box_only': GN + ['MODE_MASK=False'],   # a checkpoint
        'freezebn.npz': [],
    }
    out = {name: (str(directory / name), helpers.save_random_model(str(directory / name), *overrides))
           for name, overrides in models.items()}
    out['two_classes'] = (str(directory / 'two_classes'),
                          helpers.save_random_model(str(directory / 'two_classes'), *GN, num_category=2))
    return out


def test_saved_shapes_of_checkpoint_and_npz(saved):
    for name in ('gn_r1111.npz', 'box_only'):
        path, values = saved[name]
        shapes = checkpoint_check.saved_variable_shapes(path)
        assert shapes == {name: value.shape for name, value in values.items()}
        assert shapes['conv0/W'] == (7, 7, 3, 64) and shapes['fastrcnn/outputs/class/W'] == (64, 4)


@pytest.mark.parametrize('name, overrides', [('gn_r1111.npz', GN), ('box_only', GN + ['MODE_MASK=False'])])
def test_matching_weights_are_restored(saved, name, overrides):
    path, values = saved[name]
    predictor = predictor_for(path, *overrides)
    with predictor.graph.as_default():
        conv0 = [v for v in tf.global_variables() if v.op.name == 'conv0/W'][0]
    np.testing.assert_array_equal(predictor.sess.run(conv0), values['conv0/W'])
    image = helpers.synthetic_datapoint(shape_hw=(128, 160))[names.IMAGE]
    assert len(predictor(image)) == len(predictor.output_tensors)


def test_deeper_backbone_lists_missing_blocks_and_the_key(saved):
    path = saved['gn_r1111.npz'][0]
    with pytest.raises(ValueError) as info:
        predictor_for(path, *GN, 'BACKBONE.RESNET_NUM_BLOCKS=[2, 2, 2, 2]')
    message = str(info.value)
    assert 'variable(s) of the inference graph are missing from {}'.format(path) in message
    assert 'group0/block1/conv1/W' in message and 'and ' in message and ' more' in message
    assert 'likely: BACKBONE.RESNET_NUM_BLOCKS (the file looks like BACKBONE.RESNET_NUM_BLOCKS=[1, 1, 1, 1])' \
        in message


@pytest.mark.parametrize('overrides, key, says', [
    (['MODE_MASK=True'], 'MODE_MASK', 'MODE_MASK=False'),
    (['MODE_MASK=False', 'FPN.CASCADE=True'], 'FPN.CASCADE', 'FPN.CASCADE=False'),
    (['MODE_MASK=False', 'FPN.FRCNN_HEAD_FUNC=fastrcnn_4conv1fc_gn_head'], 'FPN.FRCNN_HEAD_FUNC',
     'FPN.FRCNN_HEAD_FUNC=fastrcnn_2fc_head'),
])
def test_missing_heads_hint_at_the_mode_keys(saved, overrides, key, says):
    with pytest.raises(ValueError, match=r'likely: {} \(the file looks like {}\)'.format(key, says)):
        predictor_for(saved['box_only'][0], *GN, *overrides)


def test_another_norm_hints_at_backbone_norm(saved):
    with pytest.raises(ValueError, match=r'conv0/gn/beta.*likely: BACKBONE.NORM \(the file looks like '
                                         r'BACKBONE.NORM=FreezeBN or SyncBN\)'):
        predictor_for(saved['freezebn.npz'][0], 'BACKBONE.NORM=GN')


def test_another_class_count_names_the_variables_shapes_and_key(saved):
    with pytest.raises(ValueError) as info:
        predictor_for(saved['two_classes'][0], *GN)   # the graph has 3 classes + background
    message = str(info.value)
    assert 'fastrcnn/outputs/class/W is [64, 4] in the graph but [64, 3] in the file' in message
    assert 'maskrcnn/conv/W is [1, 1, 32, 3] in the graph but [1, 1, 32, 2] in the file' in message
    assert 'likely: DATA.NUM_CATEGORY (the file looks like DATA.NUM_CATEGORY=2)' in message
    assert 'Assign requires shapes' not in message


def test_another_head_size_names_the_key(saved):
    with pytest.raises(ValueError, match=r'maskrcnn/fcn0/W is \[3, 3, 32, 16\] in the graph but \[3, 3, 32, 32\].*'
                                         r'likely: MRCNN.HEAD_DIM'):
        predictor_for(saved['gn_r1111.npz'][0], *GN, 'MRCNN.HEAD_DIM=16')
    with pytest.raises(ValueError, match=r'fastrcnn/fc6/W is \[3136, 64\] in the graph but \[1568, 64\].*'
                                         r'likely: FPN.NUM_CHANNEL\. '):   # 64 or 32 channels x 7 x 7
        predictor_for(saved['box_only'][0], *GN, 'MODE_MASK=False', 'FPN.NUM_CHANNEL=64')
