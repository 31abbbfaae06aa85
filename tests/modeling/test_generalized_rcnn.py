"""Smoke tests of the model assembly on tiny configs, its variables, and its edge cases.

Graph builds dominate the time; each test builds at most two graphs. The slowest tests
(the R50 variable lists, the tensorpack trainer run and the overfit run) say so in their names.
"""
import itertools

import numpy as np
import pytest

from utils.tf_compat import tf  # noqa: I001  (must come before tensorpack)

from config import config as cfg, reset_config
from utils import tensor_names as names

from tests.modeling import expected_variables as expected
from tests.modeling import rcnn_helpers as helpers

TINY_BLOCKS = (1, 1, 1, 1)
TINY_DIMS = dict(num_blocks=TINY_BLOCKS, num_category=3)
TINY_FPN_DIMS = dict(TINY_DIMS, fpn_channels=32, conv_head_dim=32, fc_head_dim=64, mask_head_dim=32)

GN_HEADS = ['FPN.FRCNN_HEAD_FUNC=fastrcnn_4conv1fc_gn_head', 'FPN.MRCNN_HEAD_FUNC=maskrcnn_up4conv_gn_head',
            'FPN.NORM=GN', 'BACKBONE.NORM=GN']

# name -> (config overrides, expected variables of the tiny model)
VARIANTS = {
    'fpn_mask': ([], expected.fpn_model(**TINY_FPN_DIMS)),
    'fpn_box_only': (['MODE_MASK=False'], expected.fpn_model(mask=False, **TINY_FPN_DIMS)),
    'fpn_cascade_mask': (['FPN.CASCADE=True'], expected.fpn_model(cascade_stages=3, **TINY_FPN_DIMS)),
    'fpn_gn_4conv': (GN_HEADS, expected.fpn_model(
        norm='GN', fpn_norm='GN', box_head_name='fastrcnn_4conv1fc_gn_head',
        mask_head_name='maskrcnn_up4conv_gn_head', **TINY_FPN_DIMS)),
    'c4_mask': (['MODE_FPN=False', 'FRCNN.BATCH_PER_IM=16'],
                expected.c4_model(rpn_head_dim=64, mask_head_dim=32, **TINY_DIMS)),
}


def model_variables():
    """{name: shape} of the model's variables: no optimizer slots, moving summaries or lr."""
    out = {}
    for var in tf.global_variables():
        name = var.op.name
        if name.startswith('EMA/') or name == 'learning_rate' or name.endswith('/Momentum') \
                or name == 'global_step':
            continue
        out[name] = var.shape.as_list()
    return out


def diff(actual, wanted):
    """A readable description of how two {name: shape} dicts differ ('' if equal)."""
    lines = ['missing: {} {}'.format(k, wanted[k]) for k in sorted(set(wanted) - set(actual))]
    lines += ['unexpected: {} {}'.format(k, actual[k]) for k in sorted(set(actual) - set(wanted))]
    lines += ['shape of {}: {} != {}'.format(k, actual[k], wanted[k])
              for k in sorted(set(actual) & set(wanted)) if actual[k] != wanted[k]]
    return '\n'.join(lines)


def assert_losses_finite(losses):
    for name, value in losses.items():
        assert np.isfinite(value), '{} = {}'.format(name, value)


@pytest.mark.parametrize('variant', sorted(VARIANTS))
def test_training_step_variables_and_finite_losses(variant):
    overrides, wanted_variables = VARIANTS[variant]
    helpers.configure(*overrides)
    datapoint = helpers.synthetic_datapoint()
    with tf.Graph().as_default():
        model = helpers.build_model()
        inputs, cost, train_op = helpers.build_training_graph(model)
        assert diff(model_variables(), wanted_variables) == ''
        losses = helpers.loss_tensors()
        assert ('maskrcnn_loss/maskrcnn_loss' in losses) == cfg.MODE_MASK
        with tf.Session() as sess:
            sess.run(tf.global_variables_initializer())
            values, _ = sess.run([losses, train_op], feed_dict=helpers.feed(inputs, datapoint))
            after = sess.run(cost, feed_dict=helpers.feed(inputs, datapoint))
    assert_losses_finite(values)
    assert values['total_cost'] > 0 and np.isfinite(after)


def _check_outputs(outputs, tensors, image_shape_hw, mask_size):
    boxes, scores, labels = (outputs[n] for n in (names.OUTPUT_BOXES, names.OUTPUT_SCORES, names.OUTPUT_LABELS))
    num = len(boxes)
    assert tensors[names.OUTPUT_BOXES].dtype == tf.float32 and boxes.shape == (num, 4)
    assert tensors[names.OUTPUT_SCORES].dtype == tf.float32 and scores.shape == (num,)
    assert tensors[names.OUTPUT_LABELS].dtype == tf.int32 and labels.shape == (num,)
    assert num <= cfg.TEST.RESULTS_PER_IM
    height, width = image_shape_hw
    assert np.all(boxes >= 0) and np.all(boxes[:, [0, 2]] <= width) and np.all(boxes[:, [1, 3]] <= height)
    assert np.all(np.diff(scores) <= 0)
    assert np.all((labels >= 1) & (labels <= cfg.DATA.NUM_CATEGORY))
    if cfg.MODE_MASK:
        masks = outputs[names.OUTPUT_MASKS]
        assert tensors[names.OUTPUT_MASKS].dtype == tf.float32
        assert masks.shape == (num, mask_size, mask_size)
        assert np.all((masks >= 0) & (masks <= 1))
    else:
        assert names.OUTPUT_MASKS not in outputs
    return num


@pytest.mark.parametrize('variant, mask_size', [('fpn_mask', 28), ('fpn_cascade_mask', 28),
                                                ('fpn_box_only', None), ('c4_mask', 14)])
def test_inference_outputs_names_dtypes_shapes(variant, mask_size):
    helpers.configure(*VARIANTS[variant][0], is_training=False)
    image = helpers.synthetic_datapoint(shape_hw=(128, 176))[names.IMAGE]
    outputs, tensors = helpers.run_inference(image)
    num = _check_outputs(outputs, tensors, (128, 176), mask_size)
    assert num > 0   # the score threshold is 0 in the tiny config


def test_inference_tensor_names():
    """The names are the contract with tensorpack's example and its tools: spelled out here."""
    helpers.configure(is_training=False)
    model = helpers.build_model()
    assert model.get_inference_tensor_names() == (
        ['image'], ['output/boxes', 'output/scores', 'output/labels', 'output/masks'])
    reset_config()
    helpers.configure('MODE_MASK=False', is_training=False)
    assert helpers.build_model().get_inference_tensor_names() == (
        ['image'], ['output/boxes', 'output/scores', 'output/labels'])


def test_inputs_declare_the_contract():
    helpers.configure()
    specs = {spec.name: spec for spec in helpers.build_model().inputs()}
    assert specs[names.IMAGE].dtype == tf.float32 and specs[names.IMAGE].shape.as_list() == [None, None, 3]
    for level in names.FPN_LEVELS:
        assert specs[names.fpn_anchor_labels(level)].shape.as_list() == [None, None, 3]
        assert specs[names.fpn_anchor_labels(level)].dtype == tf.int32
        assert specs[names.fpn_anchor_boxes(level)].shape.as_list() == [None, None, 3, 4]
    assert specs[names.GT_BOXES].shape.as_list() == [None, 4]
    assert specs[names.GT_LABELS].dtype == tf.int64
    assert specs[names.GT_MASKS_PACKED].dtype == tf.uint8
    reset_config()
    helpers.configure('MODE_FPN=False', 'MODE_MASK=False')
    specs = {spec.name: spec for spec in helpers.build_model().inputs()}
    assert specs[names.C4_ANCHOR_LABELS].shape.as_list() == [None, None, 15]
    assert specs[names.C4_ANCHOR_BOXES].shape.as_list() == [None, None, 15, 4]
    assert names.GT_MASKS_PACKED not in specs


def test_optimizer_accumulates_and_keeps_lr_untrainable():
    from utils.optimizers import AccumGradOptimizer
    helpers.configure('TRAIN.ACCUMULATE_STEPS=4')
    with tf.Graph().as_default():
        opt = helpers.build_model().optimizer()
        assert isinstance(opt, AccumGradOptimizer)
        lr = [v for v in tf.global_variables() if v.op.name == 'learning_rate']
        assert len(lr) == 1 and lr[0] not in tf.trainable_variables()
    reset_config()
    helpers.configure('TRAIN.ACCUMULATE_STEPS=1')
    with tf.Graph().as_default():
        assert isinstance(helpers.build_model().optimizer(), tf.train.MomentumOptimizer)


@pytest.mark.parametrize('variant', ['fpn_gn_cascade_mask', 'c4_mask'])
def test_nchw_builds_the_checkpoint_variables(variant):
    """NCHW is the GPU layout; CPU kernels are missing for some of its ops, so build only."""
    if variant == 'c4_mask':
        overrides, wanted = VARIANTS[variant]
    else:
        overrides = GN_HEADS + ['FPN.CASCADE=True']
        wanted = expected.fpn_model(norm='GN', fpn_norm='GN', box_head_name='fastrcnn_4conv1fc_gn_head',
                                    mask_head_name='maskrcnn_up4conv_gn_head', cascade_stages=3, **TINY_FPN_DIMS)
    helpers.configure(*overrides, 'BACKBONE.DATA_FORMAT=NCHW', is_training=False)
    with tf.Graph().as_default():
        helpers.build_inference_graph(helpers.build_model())
        assert diff(model_variables(), wanted) == ''


def test_norm_none_backbone_convs_have_no_bias():
    """tensorpack's backbone convs never have a bias, also without a norm layer."""
    helpers.configure('BACKBONE.NORM=None', 'MODE_MASK=False', is_training=False)
    with tf.Graph().as_default():
        helpers.build_inference_graph(helpers.build_model())
        assert diff(model_variables(), expected.fpn_model(norm='None', mask=False, **TINY_FPN_DIMS)) == ''


def test_two_differently_configured_models_in_one_process():
    """A C4 and an FPN model from two config objects, their graphs built after the global
    config went back to its (unfinalized) defaults: each keeps its own settings."""
    import copy

    from modeling.generalized_rcnn import build_model

    helpers.configure()
    fpn_cfg = copy.deepcopy(cfg)
    c4_cfg = copy.deepcopy(cfg)
    c4_cfg.freeze(False)
    c4_cfg.MODE_FPN = False
    c4_cfg.MODE_MASK = False
    c4_cfg.DATA.NUM_CATEGORY = 5
    c4_cfg.RPN.HEAD_DIM = 48
    c4_cfg.freeze()
    fpn_model, c4_model = build_model(fpn_cfg), build_model(c4_cfg)
    reset_config()   # nothing below may read the global config
    assert cfg.DATA.NUM_CATEGORY == -1 and '_derived' not in cfg.__dict__

    c4_specs = {spec.name: spec.shape.as_list() for spec in c4_model.inputs()}
    fpn_specs = {spec.name: spec.shape.as_list() for spec in fpn_model.inputs()}
    assert c4_specs[names.C4_ANCHOR_LABELS] == [None, None, 15] and names.GT_MASKS_PACKED not in c4_specs
    assert fpn_specs[names.fpn_anchor_labels(2)] == [None, None, 3] and names.GT_MASKS_PACKED in fpn_specs
    with tf.Graph().as_default():
        helpers.build_training_graph(c4_model)
        assert diff(model_variables(), expected.c4_model(
            num_blocks=TINY_BLOCKS, num_category=5, mask=False, rpn_head_dim=48)) == ''
    with tf.Graph().as_default():
        helpers.build_inference_graph(fpn_model)
        assert diff(model_variables(), expected.fpn_model(**TINY_FPN_DIMS)) == ''
    assert c4_model.get_inference_tensor_names()[1] == ['output/boxes', 'output/scores', 'output/labels']
    assert fpn_model.get_inference_tensor_names()[1] == ['output/boxes', 'output/scores', 'output/labels',
                                                         'output/masks']


class TestEdgeCases:
    """One tiny FPN Mask R-CNN training graph fed unusual images."""

    @pytest.fixture(scope='class')
    def session(self):
        reset_config()
        helpers.configure()
        datapoints = {
            'normal': helpers.synthetic_datapoint(),
            'no_gt': helpers.synthetic_datapoint(boxes=np.zeros((0, 4))),
            'all_crowd': helpers.synthetic_datapoint(is_crowd=[1, 1]),
            'tiny_gt': helpers.synthetic_datapoint(boxes=[(10, 10, 12, 11)]),
        }
        graph = tf.Graph()
        with graph.as_default():
            inputs, _, train_op = helpers.build_training_graph(helpers.build_model())
            losses = helpers.loss_tensors()
            num_sampled = [graph.get_tensor_by_name('sample_fast_rcnn_targets/num_{}:0'.format(kind))
                           for kind in ('fg', 'bg')]
            sess = tf.Session()
            sess.run(tf.global_variables_initializer())
        reset_config()
        yield sess, inputs, losses, train_op, num_sampled, datapoints
        sess.close()

    @pytest.mark.parametrize('case', ['normal', 'no_gt', 'all_crowd', 'tiny_gt'])
    def test_training_step_is_finite(self, session, case):
        sess, inputs, losses, train_op, num_sampled, datapoints = session
        datapoint = datapoints[case]
        values, (fg, bg), _ = sess.run([losses, num_sampled, train_op], feed_dict=helpers.feed(inputs, datapoint))
        assert_losses_finite(values)
        if case in ('no_gt', 'all_crowd'):
            # No foreground, but the classifier still trains on background rois.
            assert bg > 0 and values['fastrcnn_losses/label_loss'] > 0
            assert fg == 0 and values['maskrcnn_loss/maskrcnn_loss'] == 0
            assert values['fastrcnn_losses/box_loss'] == 0
        else:
            assert fg > 0


def test_no_surviving_proposals():
    """RPN.MIN_SIZE above the image size removes every proposal."""
    helpers.configure('RPN.MIN_SIZE=1000')
    datapoints = [helpers.synthetic_datapoint(), helpers.synthetic_datapoint(boxes=np.zeros((0, 4)))]
    history = helpers.run_training_steps(datapoints, num_steps=2)
    for losses in history:   # with gt, the gt boxes still give the heads rois; without, nothing does
        assert_losses_finite(losses)
    assert history[1]['fastrcnn_losses/label_loss'] == 0
    reset_config()
    helpers.configure('RPN.MIN_SIZE=1000', is_training=False)
    outputs, tensors = helpers.run_inference(helpers.synthetic_datapoint()[names.IMAGE])
    assert _check_outputs(outputs, tensors, (128, 160), 28) == 0


@pytest.mark.parametrize('variant', ['c4_mask', 'fpn_gn_4conv', 'fpn_cascade_mask'])
def test_conv_heads_train_and_infer_without_rois(variant):
    """No gt and no surviving proposal: every roi head (conv5, conv box heads, cascade stages,
    mask heads) gets zero rows, in training and in inference."""
    overrides = VARIANTS[variant][0] + ['RPN.MIN_SIZE=1000']
    helpers.configure(*overrides)
    history = helpers.run_training_steps([helpers.synthetic_datapoint(boxes=np.zeros((0, 4)))], num_steps=2)
    for losses in history:
        assert_losses_finite(losses)
        assert all(value == 0 for name, value in losses.items() if name.endswith(('box_loss', 'maskrcnn_loss')))
    reset_config()
    helpers.configure(*overrides, is_training=False)
    outputs, tensors = helpers.run_inference(helpers.synthetic_datapoint()[names.IMAGE])
    assert _check_outputs(outputs, tensors, (128, 160), 14 if variant == 'c4_mask' else 28) == 0


def _r50_variables(*overrides):
    helpers.configure(*overrides, tiny=False, is_training=False, num_category=80)
    with tf.Graph().as_default():
        helpers.build_inference_graph(helpers.build_model())
        return model_variables()


def test_slow_r50_fpn_mask_variables_match_checkpoint_names():
    assert diff(_r50_variables(), expected.fpn_model()) == ''


def test_slow_r50_c4_mask_variables_match_checkpoint_names():
    assert diff(_r50_variables('MODE_FPN=False'), expected.c4_model()) == ''


def test_slow_overfits_shapes_with_the_tensorpack_trainer(tmp_path):
    """The real training path: shapes data -> data.py -> QueueInput -> tensorpack's SimpleTrainer.

    Two fixed images, 120 steps (~30 s). Weight decay is lowered: on this from-scratch net its
    term is constant over so few steps and would hide what the losses do.

    The net has GroupNorm, as the demo's. Without normalization (FreezeBN from scratch) it sat on
    the edge of divergence: at a peak of 0.15 the cost climbed from 1.4 to 2.9 after step 40 with
    oneDNN off, and oneDNN's other summation order (runs equal to 1e-4 at step 6, apart by 0.3 at
    step 24, growing smoothly) pushed it over at step 51, to NaN; at 0.08 a CI rehearsal still
    diverged once.
    """
    from tensorpack import QueueInput, SimpleTrainer, TrainConfig, launch_train_with_config
    from tensorpack.callbacks import Callback, ScheduledHyperParamSetter
    from tensorpack.dataflow import DataFromList

    import data
    from dataset import register_shapes

    class RecordTotalCost(Callback):
        def __init__(self):
            self.values = []

        def _setup_graph(self):
            self._cost = tf.get_default_graph().get_tensor_by_name('total_cost:0')

        def _before_run(self, _):
            return [self._cost]

        def _after_run(self, _, run_values):
            self.values.append(run_values.results[0])

    register_shapes(str(tmp_path), num_train=4, num_val=1, image_size=128, seed=0)
    helpers.configure('DATA.TRAIN=("shapes_train",)', 'DATA.VAL=("shapes_val",)', 'DATA.NUM_WORKERS=0',
                      'TRAIN.WEIGHT_DECAY=1e-5', 'BACKBONE.NORM=GN', 'FPN.NORM=GN')
    dataflow = data.get_train_dataflow()
    dataflow.reset_state()
    datapoints = list(itertools.islice(dataflow, 2))
    assert len(datapoints) == 2 and all(len(dp[names.GT_BOXES]) for dp in datapoints)

    record = RecordTotalCost()
    warmup = ScheduledHyperParamSetter('learning_rate', [(0, 0.01), (30, 0.08)], interp='linear', step_based=True)
    queue_input = QueueInput(DataFromList(datapoints, shuffle=False))
    config = TrainConfig(
        model=helpers.build_model(), data=queue_input,
        callbacks=[warmup, record],
        monitors=[], steps_per_epoch=120, max_epoch=1)
    with tf.Graph().as_default():
        tf.set_random_seed(0)
        launch_train_with_config(config, SimpleTrainer())
    queue_input.thread.join(timeout=30)   # it logs on exit; let it do so while pytest still captures
    assert len(record.values) == 120 and np.all(np.isfinite(record.values))
    assert np.mean(record.values[-10:]) < 0.5 * record.values[0], record.values
