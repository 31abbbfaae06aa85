"""The checks of a config's values: one key's allowed values or bounds, and combinations that can't work.

`validate_config` raises a ValueError naming the key and what to give instead; it changes nothing.
"""
from modeling import params as model_params

from .attrdict import resolve_parent
from .derive import expand_lr_schedule, short_edge_range, split_names

# The model's choices come from modeling/params.py, TensorFlow-free lists that
# tests/modeling/test_params.py checks against the tables that implement them.
CHOICES = {
    'TRAINER': ('replicated', 'horovod'),
    'DATA.EXIF_ORIENTATION': ('apply', 'ignore'),
    'BACKBONE.NORM': model_params.BACKBONE_NORMS,
    'BACKBONE.FREEZE_AT': model_params.FREEZE_AT_VALUES,
    'BACKBONE.DATA_FORMAT': (None,) + model_params.DATA_FORMATS,
    'FPN.PROPOSAL_MODE': model_params.FPN_PROPOSAL_MODES,
    'FPN.NORM': ('None', 'GN'),
    'FPN.FRCNN_HEAD_FUNC': model_params.FPN_BOX_HEADS,
    'FPN.MRCNN_HEAD_FUNC': model_params.FPN_MASK_HEADS,
}
# Numeric keys with a lower bound: (bound, True if the bound itself is allowed).
LOWER_BOUNDS = {
    'TRAIN.BASE_LR': (0, False),
    'TRAIN.WARMUP_INIT_LR': (0, True),
    'TRAIN.WARMUP': (0, True),
    'TRAIN.WEIGHT_DECAY': (0, True),
    'TRAIN.STEPS_PER_EPOCH': (1, True),
    'TRAIN.BATCH_SIZE_PER_GPU': (1, True),
    'TRAIN.STARTING_EPOCH': (1, True),
    'TRAIN.CHECKPOINT_PERIOD': (1, True),
    'TRAIN.EVAL_PERIOD': (0, True),
}


def validate_config(cfg):
    """Raise ValueError for a value or combination of values of `cfg` that can't work. Changes nothing."""
    if not split_names(cfg.DATA.TRAIN):
        raise ValueError('DATA.TRAIN is empty: name at least one registered split.')
    for key in CHOICES:
        node, leaf = resolve_parent(cfg, key)
        _check_choice(key, getattr(node, leaf))
    for key in LOWER_BOUNDS:
        node, leaf = resolve_parent(cfg, key)
        _check_bound(key, getattr(node, leaf))
    if cfg.TRAIN.ACCUMULATE_STEPS is not None and cfg.TRAIN.ACCUMULATE_STEPS < 1:
        raise ValueError('TRAIN.ACCUMULATE_STEPS={} must be at least 1.'.format(cfg.TRAIN.ACCUMULATE_STEPS))
    if cfg.BACKBONE.NORM != 'FreezeBN' and cfg.BACKBONE.FREEZE_AFFINE:
        raise ValueError('BACKBONE.FREEZE_AFFINE=True only works with BACKBONE.NORM=FreezeBN, not {!r}.'
                         .format(cfg.BACKBONE.NORM))
    if len(cfg.FPN.ANCHOR_STRIDES) != len(cfg.RPN.ANCHOR_SIZES):
        raise ValueError('FPN.ANCHOR_STRIDES {} and RPN.ANCHOR_SIZES {} must have the same length.'
                         .format(cfg.FPN.ANCHOR_STRIDES, cfg.RPN.ANCHOR_SIZES))
    short_edge_range(cfg.PREPROC.TRAIN_SHORT_EDGE_SIZE)
    expand_lr_schedule(cfg.TRAIN.LR_SCHEDULE)
    if cfg.FPN.CASCADE and not cfg.MODE_FPN:
        raise ValueError('FPN.CASCADE=True needs MODE_FPN=True.')
    if cfg.MODE_FPN and cfg.FPN.CASCADE:
        if cfg.CASCADE.IOUS[0] != cfg.FRCNN.FG_THRESH:
            raise ValueError('CASCADE.IOUS[0]={} must equal FRCNN.FG_THRESH={}: the first stage samples '
                             'proposals with it.'.format(cfg.CASCADE.IOUS[0], cfg.FRCNN.FG_THRESH))
        if len(cfg.CASCADE.BBOX_REG_WEIGHTS) != len(cfg.CASCADE.IOUS):
            raise ValueError('CASCADE.BBOX_REG_WEIGHTS needs one entry per stage of CASCADE.IOUS ({}).'
                             .format(len(cfg.CASCADE.IOUS)))


def _check_choice(key, value):
    valid = CHOICES[key]
    if value not in valid:
        raise ValueError('Config {}={!r} is not one of {}.'.format(key, value, valid))


def _check_bound(key, value):
    bound, inclusive = LOWER_BOUNDS[key]
    if value < bound or (value == bound and not inclusive):
        raise ValueError('Config {}={!r} must be {} {}.'.format(key, value, '>=' if inclusive else '>', bound))
