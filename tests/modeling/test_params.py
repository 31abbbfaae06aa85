"""Tests of modeling/params.py: from_config maps each key to its field, the records are frozen,
the ROI/mask size rule, and that modeling/ reads the config only through these records."""
import copy
import dataclasses
import math
import os
import subprocess
import sys

import pytest

from config import config as cfg, reset_config
from modeling import params as model_params
from tests.modeling import rcnn_helpers as helpers

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _finalized_copy(*overrides, **kwargs):
    """A private copy of a finalized tiny config (the global one is reset by conftest)."""
    reset_config()
    helpers.configure(*overrides, **kwargs)
    return copy.deepcopy(cfg)


def test_topk_fields_come_from_their_own_keys():
    config = _finalized_copy('RPN.TRAIN_PRE_NMS_TOPK=11', 'RPN.TRAIN_POST_NMS_TOPK=12',
                             'RPN.TRAIN_PER_LEVEL_NMS_TOPK=13', 'RPN.TEST_PRE_NMS_TOPK=21',
                             'RPN.TEST_POST_NMS_TOPK=22', 'RPN.TEST_PER_LEVEL_NMS_TOPK=23')
    rpn = model_params.ModelParams.from_config(config).rpn
    assert rpn.topk(training=True) == model_params.ProposalTopK(pre_nms_topk=11, post_nms_topk=12, per_level_topk=13)
    assert rpn.topk(training=False) == model_params.ProposalTopK(pre_nms_topk=21, post_nms_topk=22, per_level_topk=23)


def test_sampling_test_and_head_fields():
    config = _finalized_copy('FRCNN.BATCH_PER_IM=24', 'FRCNN.FG_RATIO=0.3', 'FRCNN.FG_THRESH=0.55',
                             'TEST.RESULT_SCORE_THRESH=0.2', 'TEST.FRCNN_NMS_THRESH=0.4', 'TEST.RESULTS_PER_IM=7',
                             'FPN.FRCNN_HEAD_FUNC=fastrcnn_4conv1fc_head', 'MRCNN.HEAD_DIM=16',
                             'RPN.ANCHOR_RATIOS=(1.,)')
    params = model_params.ModelParams.from_config(config)
    assert params.frcnn == model_params.FastRCNNParams(batch_per_im=24, fg_ratio=0.3, fg_thresh=0.55,
                                                       bbox_reg_weights=(10., 10., 5., 5.))
    assert params.test == model_params.DetectionParams(result_score_thresh=0.2, frcnn_nms_thresh=0.4, results_per_im=7)
    assert params.fpn.box_head == 'fastrcnn_4conv1fc_head' and params.mask.head_dim == 16
    assert params.rpn.num_anchors_fpn == 1 and params.rpn.num_anchors_c4 == 5   # 5 sizes x 1 ratio
    assert params.num_category == 3 and params.meta_architecture == 'ResNetFPN'


def test_derived_values_are_read_as_finalized():
    # The default 1333 is rounded up to the FPN stride 32: 1344, so the clip is log(1344 / 16)
    # (the old DEFAULT_DECODE_CLIP, log(1333 / 16), matched only C4).
    fpn = model_params.ModelParams.from_config(_finalized_copy(tiny=False))
    assert fpn.max_size == 1344 and fpn.decode_clip == pytest.approx(math.log(84.))
    assert fpn.backbone.data_format == 'NHWC' and fpn.train.accumulate_steps == 8
    c4 = model_params.ModelParams.from_config(_finalized_copy('MODE_FPN=False', tiny=False))
    assert c4.max_size == 1333 and c4.meta_architecture == 'ResNetC4'


@pytest.mark.parametrize('trainer, expected', [('replicated', 'nccl'), ('horovod', 'horovod')])
def test_syncbn_averages_statistics_with_the_trainers_backend(trainer, expected):
    config = _finalized_copy('BACKBONE.NORM=SyncBN')
    config.freeze(False)
    config.TRAINER = trainer
    assert model_params.ModelParams.from_config(config).backbone.sync_statistics == expected
    config.BACKBONE.NORM = 'GN'
    assert model_params.ModelParams.from_config(config).backbone.sync_statistics is None


def test_from_config_refuses_an_unfinalized_config():
    with pytest.raises(ValueError, match='finalize_configs'):
        model_params.ModelParams.from_config(cfg)   # the defaults: NUM_CATEGORY and DATA_FORMAT not derived


def test_records_are_frozen():
    params = model_params.ModelParams.from_config(_finalized_copy())
    with pytest.raises(dataclasses.FrozenInstanceError):
        params.num_category = 5
    with pytest.raises(dataclasses.FrozenInstanceError):
        params.rpn.train_topk.pre_nms_topk = 1
    assert params.replace(num_category=5).num_category == 5 and params.num_category == 3


def test_mask_size_is_twice_the_mask_head_input():
    # C4: ROIAlign 14 -> conv5 (stride 2) 7 -> deconv 14. FPN: ROIAlign 14 -> deconv 28.
    assert model_params.C4_ROI_SIZES.mask_size == 14
    assert model_params.FPN_ROI_SIZES.mask_size == 28
    assert model_params.RoiSizes(box_roi_resolution=7, mask_roi_resolution=10, mask_feature_stride=1).mask_size == 20


def test_unknown_meta_architecture_lists_the_valid_ones():
    from modeling.generalized_rcnn import ResNetFPNModel, model_from_params
    params = model_params.ModelParams.from_config(_finalized_copy())
    with pytest.raises(KeyError, match='ResNetC4, ResNetFPN'):
        model_from_params(params.replace(meta_architecture='ResNetC5'))
    with pytest.raises(TypeError, match='ModelParams'):
        ResNetFPNModel(cfg)


def test_params_module_loads_no_tensorflow():
    code = 'import sys, modeling.params; assert "tensorflow" not in sys.modules, "tensorflow was imported"'
    subprocess.run([sys.executable, '-c', code], cwd=REPO, check=True)


def test_name_lists_equal_the_tables():
    from modeling import backbone, model_fpn, model_frcnn, model_mrcnn
    assert model_params.BACKBONE_NORMS == tuple(backbone.NORMS)
    assert model_params.FPN_PROPOSAL_MODES == tuple(model_fpn.PROPOSAL_MODES)
    assert model_params.FPN_BOX_HEADS == tuple(model_frcnn.BOX_HEADS)
    assert model_params.FPN_MASK_HEADS == tuple(model_mrcnn.MASK_HEADS)
