"""config.py: declarations, command-line overrides, derived values."""
import os
import re
import subprocess
import sys

import pytest

import config as config_module
from config import Devices, config as cfg, finalize_configs, reset_config
from configlib.derive import expand_lr_schedule


@pytest.fixture
def registered_split():
    """Two splits with the same three classes and one with other classes."""
    from dataset import DatasetRegistry
    names = ['BG', 'circle', 'square', 'triangle']
    for split in ('cfgtest_train', 'cfgtest_val'):
        DatasetRegistry.register(split, lambda: None)
        DatasetRegistry.register_metadata(split, 'class_names', names)
    DatasetRegistry.register('cfgtest_other', lambda: None)
    DatasetRegistry.register_metadata('cfgtest_other', 'class_names', ['BG', 'cat'])
    cfg.update_args(["DATA.TRAIN=('cfgtest_train',)", "DATA.VAL=('cfgtest_val',)"])
    return names


def test_defaults_match_the_example():
    assert cfg.TRAINER == 'replicated'
    assert cfg.MODE_MASK is True and cfg.MODE_FPN is True
    assert cfg.BACKBONE.RESNET_NUM_BLOCKS == [3, 4, 6, 3]
    assert cfg.BACKBONE.NORM == 'FreezeBN' and cfg.BACKBONE.FREEZE_AT == 2
    assert cfg.TRAIN.BASE_LR == 1e-2 and cfg.TRAIN.WARMUP == 1000
    assert cfg.TRAIN.LR_SCHEDULE == '1x'
    assert cfg.PREPROC.TRAIN_SHORT_EDGE_SIZE == [800, 800] and cfg.PREPROC.MAX_SIZE == 1333
    assert cfg.RPN.ANCHOR_SIZES == (32, 64, 128, 256, 512)
    assert cfg.FRCNN.BBOX_REG_WEIGHTS == [10., 10., 5., 5.]
    assert cfg.FPN.ANCHOR_STRIDES == (4, 8, 16, 32, 64)
    assert cfg.CASCADE.IOUS == [0.5, 0.6, 0.7]
    assert cfg.TEST.RESULTS_PER_IM == 100


def test_every_key_in_the_tree_is_declared_with_its_default():
    """A key added to the tree without `_declare`/`_derived` has no description, type or check."""
    leaves = dict(_leaves(cfg))
    assert set(leaves) == set(config_module._KEYS.specs) | set(config_module._KEYS.derived)
    for key, spec in config_module._KEYS.specs.items():
        assert leaves[key] == spec.default, key
    described = [key for key, _, doc in config_module.describe_config() if doc.strip()]
    assert described == list(config_module._KEYS.specs)


def test_override_parses_literals():
    cfg.update_args(['MODE_FPN=False', 'TRAIN.BASE_LR=0.02', 'BACKBONE.RESNET_NUM_BLOCKS=[2,2,2,2]',
                     'TRAIN.LR_SCHEDULE=[100,200,300]', 'TRAIN.NUM_GPUS=1'])
    assert cfg.MODE_FPN is False
    assert cfg.TRAIN.BASE_LR == 0.02
    assert cfg.BACKBONE.RESNET_NUM_BLOCKS == [2, 2, 2, 2]
    assert cfg.TRAIN.LR_SCHEDULE == [100, 200, 300]
    assert cfg.TRAIN.NUM_GPUS == 1


def test_string_keys_keep_text():
    cfg.update_args(['DATA.BASEDIR=/tmp/some dir', 'BACKBONE.WEIGHTS=', 'TRAIN.LR_SCHEDULE=3x',
                     "FPN.NORM='GN'", 'DATA.VAL=shapes_val'])
    assert cfg.DATA.BASEDIR == '/tmp/some dir'
    assert cfg.BACKBONE.WEIGHTS == ''
    assert cfg.TRAIN.LR_SCHEDULE == '3x'
    assert cfg.FPN.NORM == 'GN'
    assert cfg.DATA.VAL == 'shapes_val'


def test_int_for_float_and_list_for_tuple():
    cfg.update_args(['TRAIN.BASE_LR=1', 'RPN.ANCHOR_SIZES=[16, 32]', 'PREPROC.PIXEL_MEAN=(1, 2, 3)'])
    assert cfg.TRAIN.BASE_LR == 1.0 and isinstance(cfg.TRAIN.BASE_LR, float)
    assert cfg.RPN.ANCHOR_SIZES == (16, 32)
    assert cfg.PREPROC.PIXEL_MEAN == [1, 2, 3]


@pytest.mark.parametrize('override', [
    'TRAIN.STEPS_PER_EPOCH=1.5',       # float for int
    'MODE_MASK=1',                     # int for bool
    'TRAIN.WARMUP=True',               # bool for int
    'TRAIN.BASE_LR=fast',              # not a literal, key takes no string
    'BACKBONE.RESNET_NUM_BLOCKS=3',    # scalar for list
    'TRAIN.NUM_GPUS=two',
])
def test_type_errors_name_the_key(override):
    with pytest.raises(ValueError, match=override.split('=')[0].replace('.', r'\.')):
        cfg.update_args([override])


@pytest.mark.parametrize('override, element', [
    ("PREPROC.TRAIN_SHORT_EDGE_SIZE=[192,'a']", "element 1 ('a') should be int"),
    ('PREPROC.TRAIN_SHORT_EDGE_SIZE=[192.5,224]', 'element 0 (192.5) should be int'),
    ("RPN.ANCHOR_SIZES=(16,'a',64,128,256)", "element 1 ('a') should be int"),
    ("TRAIN.LR_SCHEDULE=[2,'x',4]", "element 1 ('x') should be int"),
    ('RPN.ANCHOR_RATIOS=(0.5,True)', 'element 1 (True) should be float or int'),
    ("CASCADE.BBOX_REG_WEIGHTS=[[10,10,5,5],[20,20,10,'a'],[30,30,15,15]]", "element 3 ('a') should be float"),
    ('CASCADE.BBOX_REG_WEIGHTS=[1,2,3]', 'element 0 (1) should be a list'),
    ("DATA.TRAIN=('a',2)", 'element 1 (2) should be str'),
])
def test_list_elements_of_the_wrong_type_name_the_key(override, element):
    key = override.split('=')[0]
    with pytest.raises(ValueError) as caught:
        cfg.update_args([override])
    assert str(caught.value).startswith('Config {}='.format(key)) and element in str(caught.value)
    assert cfg.PREPROC.TRAIN_SHORT_EDGE_SIZE == [800, 800] and cfg.RPN.ANCHOR_SIZES == (32, 64, 128, 256, 512)


def test_a_bad_config_writes_nothing_to_disk(registered_split, tmp_path):
    """train.py raises every config error before it creates --logdir (or anything in it)."""
    import train
    for override in ("RPN.ANCHOR_SIZES=(16,'a',64,128,256)", 'TRAIN.LR_SCHEDULE=[0,2,4]'):
        logdir = tmp_path / 'log'
        with pytest.raises(ValueError, match=re.escape(override.split('=')[0])):
            train.main(['--logdir', str(logdir), '--config', 'DATA.TRAIN=cfgtest_train', 'DATA.VAL=()',
                        'TRAIN.EVAL_PERIOD=0', 'DATA.BASEDIR=' + str(tmp_path), override])
        assert not logdir.exists()


def test_unknown_key_suggests_close_matches():
    with pytest.raises(KeyError, match='TRAIN.BASE_LR'):
        cfg.update_args(['TRAIN.BASE_RL=0.1'])
    with pytest.raises(KeyError, match='Unknown config key'):
        cfg.update_args(['NOPE.NOTHING=1'])


def test_derived_key_cannot_be_set():
    with pytest.raises(KeyError, match='derived'):
        cfg.update_args(['RPN.NUM_ANCHOR=3'])


def test_failed_update_applies_nothing():
    with pytest.raises(KeyError):
        cfg.update_args(['TRAIN.BASE_LR=0.5', 'TRAIN.NOT_A_KEY=1'])
    assert cfg.TRAIN.BASE_LR == 1e-2


def test_a_key_given_twice_is_an_error_naming_both_values():
    with pytest.raises(ValueError, match=r'TRAIN.BASE_LR is given twice: TRAIN.BASE_LR=0.02 and TRAIN.BASE_LR=0.5'):
        cfg.update_args(['TRAIN.BASE_LR=0.02', 'MODE_FPN=False', 'TRAIN.BASE_LR=0.5'])
    assert cfg.TRAIN.BASE_LR == 1e-2 and cfg.MODE_FPN is True   # nothing applied
    cfg.update_args(['TRAIN.BASE_LR=0.02'])
    cfg.update_args(['TRAIN.BASE_LR=0.5'])   # separate calls may override each other
    assert cfg.TRAIN.BASE_LR == 0.5


def test_combine_overrides_lets_later_lists_replace_keys():
    combined = config_module.combine_overrides(['MODE_FPN=True', 'TRAIN.BASE_LR=0.02', 'MODE_MASK=False'],
                                               ['TRAIN.BASE_LR=0.5'], ['MODE_FPN = False'])
    assert combined == ['MODE_MASK=False', 'TRAIN.BASE_LR=0.5', 'MODE_FPN = False']
    cfg.update_args(combined)
    assert cfg.TRAIN.BASE_LR == 0.5 and cfg.MODE_FPN is False


def test_override_without_equals_sign():
    with pytest.raises(ValueError, match='KEY=VALUE'):
        cfg.update_args(['MODE_FPN'])


def test_frozen_config_rejects_new_attributes():
    with pytest.raises(AttributeError):
        cfg.TRAIN.NEW_THING = 3
    with pytest.raises(AttributeError):
        cfg.TRAIN.NEW_THING  # noqa: B018


def test_reset_restores_defaults():
    cfg.update_args(['TRAIN.BASE_LR=0.5', 'BACKBONE.RESNET_NUM_BLOCKS=[1,1,1,1]'])
    reset_config()
    assert cfg.TRAIN.BASE_LR == 1e-2
    assert cfg.BACKBONE.RESNET_NUM_BLOCKS == [3, 4, 6, 3]


def test_config_pickles():
    import pickle
    copy = pickle.loads(pickle.dumps(cfg))
    assert copy.TRAIN.BASE_LR == cfg.TRAIN.BASE_LR
    assert copy.to_dict() == cfg.to_dict()


@pytest.mark.parametrize('schedule, expected', [
    ('1x', [120000, 160000, 180000]),
    ('2x', [240000, 320000, 360000]),
    ('3x', [420000, 500000, 540000]),
    ('9x', [1500000, 1580000, 1620000]),
    ([10, 20, 30], [10, 20, 30]),
])
def test_lr_schedule_expansion(schedule, expected):
    assert expand_lr_schedule(schedule) == expected


@pytest.mark.parametrize('schedule', ['x', '0x', 'fast', [30, 20, 10], []])
def test_bad_lr_schedule(schedule):
    with pytest.raises(ValueError, match='LR_SCHEDULE'):
        expand_lr_schedule(schedule)


CPU = Devices(tower_devices=0, horovod_size=None, default_data_format='NHWC')


def test_finalize_derives_values(registered_split):
    cfg.update_args(['PREPROC.MAX_SIZE=1000', 'TRAIN.LR_SCHEDULE=2x', "DATA.VAL='cfgtest_val'",
                     'DATA.BASEDIR=~/cfgtest', 'PREPROC.TRAIN_SHORT_EDGE_SIZE=600'])
    derived = finalize_configs(is_training=False, devices=CPU)
    assert cfg.derived is derived
    assert cfg.DATA.CLASS_NAMES == registered_split
    assert cfg.DATA.NUM_CATEGORY == 3
    assert cfg.RPN.NUM_ANCHOR == 15
    assert cfg.FPN.RESOLUTION_REQUIREMENT == 32
    assert derived.max_size == 1024.     # rounded up to a multiple of 32
    assert derived.lr_schedule == [240000, 320000, 360000]
    assert derived.train_splits == ('cfgtest_train',) and derived.val_splits == ('cfgtest_val',)
    assert derived.basedir == os.path.expanduser('~/cfgtest')
    assert derived.train_short_edge_size == (600, 600)
    assert derived.data_format == 'NHWC'   # the devices' default


def test_finalize_keeps_the_declared_values(registered_split):
    """What the user gave stays as given; only the keys declared as derived are filled."""
    cfg.update_args(['PREPROC.MAX_SIZE=1000', 'TRAIN.LR_SCHEDULE=2x', "DATA.VAL='cfgtest_val'",
                     'DATA.BASEDIR=~/cfgtest', 'PREPROC.TRAIN_SHORT_EDGE_SIZE=600'])
    declared = {key: value for key, value in _leaves(cfg) if key not in config_module._KEYS.derived}
    finalize_configs(is_training=True, devices=CPU)
    assert {key: value for key, value in _leaves(cfg) if key not in config_module._KEYS.derived} == declared
    assert cfg.PREPROC.MAX_SIZE == 1000 and cfg.TRAIN.LR_SCHEDULE == '2x'
    assert cfg.TRAIN.NUM_GPUS is None and cfg.TRAIN.ACCUMULATE_STEPS is None and cfg.BACKBONE.DATA_FORMAT is None


def test_finalize_has_no_side_effects(registered_split, monkeypatch):
    """No environment variable, no Horovod: process set-up belongs to the entry scripts."""
    monkeypatch.setitem(sys.modules, 'horovod', None)   # an import of Horovod would fail
    monkeypatch.setitem(sys.modules, 'horovod.tensorflow', None)
    environ = dict(os.environ)
    cfg.update_args(['TRAINER=horovod', 'PREPROC.TRAIN_SHORT_EDGE_SIZE=[600, 800]'])
    derived = finalize_configs(is_training=True, devices=Devices(0, 4, 'NHWC'))
    assert dict(os.environ) == environ
    assert derived.num_gpus == 4 and derived.accumulate_steps == 2


def test_validate_config_changes_nothing(registered_split):
    cfg.update_args(['TRAIN.LR_SCHEDULE=2x'])
    before = dict(_leaves(cfg))
    config_module.validate_config()
    assert dict(_leaves(cfg)) == before
    cfg.update_args(['TRAIN.LR_SCHEDULE=fast'])
    with pytest.raises(ValueError, match='LR_SCHEDULE'):
        config_module.validate_config()


def test_cudnn_autotune_is_set_by_the_entry_scripts_helper(monkeypatch):
    from utils import tf_compat
    for name in ('TF_CUDNN_USE_AUTOTUNE', 'TF_AUTOTUNE_THRESHOLD'):
        monkeypatch.delenv(name, raising=False)
    tf_compat.configure_cudnn_autotune(True, (800, 800))
    assert 'TF_CUDNN_USE_AUTOTUNE' not in os.environ and os.environ['TF_AUTOTUNE_THRESHOLD'] == '1'
    tf_compat.configure_cudnn_autotune(True, (640, 800))   # many shapes: autotuning each is too slow
    assert os.environ['TF_CUDNN_USE_AUTOTUNE'] == '0'
    monkeypatch.delenv('TF_CUDNN_USE_AUTOTUNE')
    tf_compat.configure_cudnn_autotune(False, (800, 800))
    assert os.environ['TF_CUDNN_USE_AUTOTUNE'] == '0'


def test_finalize_on_cpu_counts_zero_gpus_and_accumulates(registered_split):
    derived = finalize_configs(is_training=True)   # the devices this test process sees: no GPU
    assert derived.num_gpus == 0
    assert derived.accumulate_steps == 8     # one tower sums 8 steps, like 8 GPUs
    assert config_module.num_towers() == 1


def test_finalize_keeps_explicit_accumulation(registered_split):
    cfg.update_args(['TRAIN.ACCUMULATE_STEPS=1'])
    assert finalize_configs(is_training=True, devices=CPU).accumulate_steps == 1


def test_finalize_rejects_more_gpus_than_visible(registered_split):
    cfg.update_args(['TRAIN.NUM_GPUS=4'])
    with pytest.raises(ValueError, match='NUM_GPUS=4'):
        finalize_configs(is_training=True, devices=Devices(2, None, 'NCHW'))


def test_tower_count_rule_is_for_training_only(registered_split):
    """Three GPUs can't make the reference batch of 8, so training refuses them; prediction runs."""
    three_gpus = Devices(tower_devices=3, horovod_size=None, default_data_format='NCHW')
    with pytest.raises(ValueError, match=r"3 tower\(s\) x TRAIN.BATCH_SIZE_PER_GPU=1 = 3 images per step can't make up "
                                         r'the reference batch of 8: use 1, 2, 4 or a multiple of 8'):
        finalize_configs(is_training=True, devices=three_gpus)
    derived = finalize_configs(is_training=False, devices=three_gpus)
    assert derived.num_gpus == 3 and derived.data_format == 'NCHW'


@pytest.mark.parametrize('towers, per_tower, accumulate', [(1, 1, 8), (2, 1, 4), (8, 1, 1), (16, 1, 1),
                                                                (1, 2, 4), (1, 4, 2), (2, 4, 1)])
def test_accumulation_makes_up_the_reference_batch(registered_split, towers, per_tower, accumulate):
    cfg.update_args(['TRAIN.BATCH_SIZE_PER_GPU={}'.format(per_tower)])
    derived = finalize_configs(is_training=True, devices=Devices(towers, None, 'NCHW'))
    assert derived.images_per_step == towers * per_tower
    assert derived.accumulate_steps == accumulate


def test_cascade_trains_several_images_per_tower(registered_split):
    cfg.update_args(['FPN.CASCADE=True', 'TRAIN.BATCH_SIZE_PER_GPU=2'])
    derived = finalize_configs(is_training=True, devices=Devices(1, None, 'NCHW'))
    assert derived.images_per_step == 2 and derived.accumulate_steps == 4


def test_an_explicit_accumulation_lifts_the_reference_batch_rule(registered_split):
    cfg.update_args(['TRAIN.ACCUMULATE_STEPS=3'])
    derived = finalize_configs(is_training=True, devices=Devices(3, None, 'NCHW'))
    assert derived.images_per_step == 3 and derived.accumulate_steps == 3


def test_two_images_per_tower_count_the_schedule_in_steps_of_8_images(registered_split):
    """1 tower x TRAIN.BATCH_SIZE_PER_GPU=2: 4 accumulated steps per update, and the schedule train.py
    computes from the derived values takes 8 / 2 = 4 steps per step of 8 images: decays after
    60 x 4 = 240 and 80 x 4 = 320 steps (the ends of epochs 24 and 32 of 10 steps), end after 90 x 4 = 360 steps of
    2 images = 720 images = 90 updates of 8, as LR_SCHEDULE says."""
    from utils import lr_schedule
    cfg.update_args(['TRAIN.BATCH_SIZE_PER_GPU=2', 'TRAIN.LR_SCHEDULE=[60,80,90]', 'TRAIN.STEPS_PER_EPOCH=10',
                     'TRAIN.WARMUP=20'])
    derived = finalize_configs(is_training=True, devices=CPU)
    assert (derived.images_per_step, derived.accumulate_steps) == (2, 4)
    schedule = lr_schedule.compute_schedule(
        base_lr=cfg.TRAIN.BASE_LR, warmup_steps=cfg.TRAIN.WARMUP, warmup_init_lr=cfg.TRAIN.WARMUP_INIT_LR,
        lr_schedule=derived.lr_schedule, steps_per_epoch=cfg.TRAIN.STEPS_PER_EPOCH,
        images_per_step=derived.images_per_step)
    assert schedule.decay_steps == (240, 320) and schedule.last_step == 360 and schedule.max_epoch == 36
    steps = schedule.last_step
    assert steps * derived.images_per_step == 720 and steps // derived.accumulate_steps == 90


def test_two_configs_live_in_one_process(registered_split):
    other = config_module.new_config()
    other.update_args(["DATA.TRAIN=('cfgtest_train',)", "DATA.VAL=('cfgtest_val',)", 'MODE_FPN=False',
                       'PREPROC.MAX_SIZE=1000'])
    finalize_configs(is_training=False, devices=CPU, cfg=other)
    finalize_configs(is_training=False, devices=CPU)
    assert other.MODE_FPN is False and cfg.MODE_FPN is True
    assert other.derived.max_size == 1000 and cfg.derived.max_size == 1344.   # C4 keeps the value; FPN rounds


def _leaves(node, prefix=''):
    """(dotted key, value) of every leaf of a config tree."""
    for name, value in node.__dict__.items():
        if name.startswith('_'):
            continue
        if isinstance(value, config_module.AttrDict):
            yield from _leaves(value, prefix + name + '.')
        else:
            yield prefix + name, value


def test_finalize_rejects_mismatched_classes(registered_split):
    cfg.update_args(["DATA.VAL=('cfgtest_other',)"])
    with pytest.raises(ValueError, match='cfgtest_other'):
        finalize_configs(is_training=False)


@pytest.mark.parametrize('overrides, message', [
    (['BACKBONE.NORM=BN'], 'BACKBONE.NORM'),
    (['BACKBONE.FREEZE_AT=3'], 'FREEZE_AT'),
    (['BACKBONE.NORM=GN', 'BACKBONE.FREEZE_AFFINE=True'], 'FREEZE_AFFINE'),
    (['FPN.PROPOSAL_MODE=Both'], 'PROPOSAL_MODE'),
    (['TRAINER=mirrored'], 'TRAINER'),
    (['FPN.CASCADE=True', 'CASCADE.IOUS=[0.4, 0.6, 0.7]'], 'CASCADE.IOUS'),
    (['FPN.CASCADE=True', 'MODE_FPN=False'], 'CASCADE'),
    (['FPN.ANCHOR_STRIDES=(4, 8, 16, 32)'], 'ANCHOR_STRIDES'),
    (['PREPROC.TRAIN_SHORT_EDGE_SIZE=[800, 600]'], 'TRAIN_SHORT_EDGE_SIZE'),
    (['BACKBONE.DATA_FORMAT=channels_last'], 'DATA_FORMAT'),
    (['TRAIN.ACCUMULATE_STEPS=0'], 'ACCUMULATE_STEPS'),
    (['TRAIN.BATCH_SIZE_PER_GPU=0'], r'TRAIN.BATCH_SIZE_PER_GPU=0 must be >= 1'),
    (['TRAIN.BASE_LR=-0.01'], r'TRAIN.BASE_LR=-0.01 must be > 0'),
    (['TRAIN.BASE_LR=0'], r'TRAIN.BASE_LR=0.0 must be > 0'),
    (['TRAIN.STEPS_PER_EPOCH=0'], r'TRAIN.STEPS_PER_EPOCH=0 must be >= 1'),
    (['TRAIN.STEPS_PER_EPOCH=-5'], r'TRAIN.STEPS_PER_EPOCH=-5 must be >= 1'),
    (['TRAIN.WARMUP_INIT_LR=-1e-5'], 'WARMUP_INIT_LR'),
    (['TRAIN.CHECKPOINT_PERIOD=0'], 'CHECKPOINT_PERIOD'),
])
def test_finalize_validation_errors(registered_split, overrides, message):
    cfg.update_args(overrides)
    with pytest.raises(ValueError, match=message):
        finalize_configs(is_training=False, devices=CPU)


@pytest.mark.parametrize('key, valid', [('FPN.FRCNN_HEAD_FUNC', 'fastrcnn_2fc_head'),
                                        ('FPN.MRCNN_HEAD_FUNC', 'maskrcnn_up4conv_head')])
def test_a_misspelt_head_name_fails_before_the_graph_and_lists_the_heads(registered_split, key, valid):
    cfg.update_args(['{}={}x'.format(key, valid)])
    with pytest.raises(ValueError, match=r"{}='{}x' is not one of .*'{}'".format(re.escape(key), valid, valid)):
        config_module.validate_config()


def test_finalize_unknown_split_is_a_key_error():
    cfg.update_args(["DATA.TRAIN=('no_such_split',)"])
    with pytest.raises(KeyError, match='no_such_split'):
        finalize_configs(is_training=False)


def test_finalized_config_is_frozen(registered_split):
    finalize_configs(is_training=False)
    with pytest.raises(AttributeError):
        cfg.DATA.SOMETHING_NEW = 1


def test_config_validation_imports_no_tensorflow():
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    code = 'import sys, config; config.validate_config(); print("tensorflow" in sys.modules)'
    out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, check=True, cwd=root)
    assert out.stdout.strip() == 'False'
