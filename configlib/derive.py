"""The values `finalize_configs` resolves from the declared keys and the devices, kept apart from them.

`derive_config` reads a validated config and returns a `Derived` record; the keys keep what was
given (TRAIN.NUM_GPUS=None, TRAIN.LR_SCHEDULE='1x', ...).
"""
import os
from collections import namedtuple

from utils.lr_schedule import REFERENCE_TOTAL_BATCH   # the schedule keys count steps of this many images


class Derived(namedtuple('Derived', [
        'train_splits', 'val_splits', 'basedir', 'num_gpus', 'num_towers', 'images_per_step', 'accumulate_steps',
        'data_format', 'max_size', 'lr_schedule', 'train_short_edge_size'])):
    """Values resolved from the declared keys by `finalize_configs`; the keys keep what was given.

    train_splits, val_splits: DATA.TRAIN / DATA.VAL as tuples of split names.
    basedir: DATA.BASEDIR with ~ expanded.
    num_gpus: TRAIN.NUM_GPUS resolved: Horovod ranks, or the GPUs (0 on a CPU) to put towers on.
    num_towers: max(num_gpus, 1), the towers of one step.
    images_per_step: num_towers x TRAIN.BATCH_SIZE_PER_GPU, the images of one step before accumulation.
    accumulate_steps: TRAIN.ACCUMULATE_STEPS, or REFERENCE_TOTAL_BATCH // images_per_step when None.
    data_format: BACKBONE.DATA_FORMAT, or the device's default when None.
    max_size: PREPROC.MAX_SIZE; with FPN a float rounded up to FPN.RESOLUTION_REQUIREMENT.
    lr_schedule: TRAIN.LR_SCHEDULE as a list of steps ('1x' expanded).
    train_short_edge_size: PREPROC.TRAIN_SHORT_EDGE_SIZE as (min, max).
    """


def expand_lr_schedule(schedule):
    """'1x' -> [120000, 160000, 180000]; 'Nx' -> thousands [180N-120, 180N-40, 180N]."""
    if isinstance(schedule, str):
        text = schedule.strip()
        try:
            mult = int(text[:-1]) if text.endswith('x') else None
        except ValueError:
            mult = None
        if mult is None or mult < 1:
            raise ValueError("TRAIN.LR_SCHEDULE={!r}: use '1x' ... '9x' or a list of steps.".format(schedule))
        kilo = [120, 160, 180] if mult == 1 else [180 * mult - 120, 180 * mult - 40, 180 * mult]
        return [k * 1000 for k in kilo]
    steps = [int(s) for s in schedule]
    if not steps or steps != sorted(steps):
        raise ValueError('TRAIN.LR_SCHEDULE={!r}: needs increasing steps, the last one ending training.'
                         .format(schedule))
    return steps


def split_names(value):
    """DATA.TRAIN / DATA.VAL as a tuple: one name may be given as a string."""
    return (value,) if isinstance(value, str) else tuple(value)


def short_edge_range(value):
    """PREPROC.TRAIN_SHORT_EDGE_SIZE as (min, max)."""
    scales = [value, value] if isinstance(value, int) else list(value)
    if len(scales) != 2 or scales[0] > scales[1]:
        raise ValueError('PREPROC.TRAIN_SHORT_EDGE_SIZE={!r}: give [min, max] or one size.'.format(value))
    return tuple(scales)


def resolution_requirement(cfg):
    """FPN.RESOLUTION_REQUIREMENT: the image is padded to a multiple of this."""
    return cfg.FPN.ANCHOR_STRIDES[3]   # the backbone's deepest stride, c5


def _resolve_num_gpus(cfg, is_training, devices):
    """TRAIN.NUM_GPUS for this process: Horovod ranks, or the tower devices asked for / visible."""
    num_gpus = cfg.TRAIN.NUM_GPUS
    if is_training and cfg.TRAINER == 'horovod':
        if devices.horovod_size is None:
            raise ValueError('TRAINER=horovod, but Horovod is not initialized: call '
                             'utils.tf_compat.detect_devices(cfg.TRAINER) before finalize_configs.')
        if num_gpus is not None and num_gpus != devices.horovod_size:
            raise ValueError('TRAIN.NUM_GPUS={} but Horovod runs {} ranks (hvd.size()); leave TRAIN.NUM_GPUS '
                             'unset under Horovod.'.format(num_gpus, devices.horovod_size))
        return devices.horovod_size
    if num_gpus is None:
        return devices.tower_devices
    if is_training and num_gpus > devices.tower_devices:
        raise ValueError('TRAIN.NUM_GPUS={} but only {} GPU(s) are visible.'.format(num_gpus, devices.tower_devices))
    return num_gpus


def derive_config(cfg, is_training, devices):
    """The `Derived` values of a validated config on `devices`. Reads `cfg`, changes nothing."""
    num_gpus = _resolve_num_gpus(cfg, is_training, devices)
    towers = max(num_gpus, 1)
    images = towers * cfg.TRAIN.BATCH_SIZE_PER_GPU
    accumulate = cfg.TRAIN.ACCUMULATE_STEPS
    if accumulate is None:
        # Only training needs a step to make up the reference batch; prediction runs on any number of GPUs.
        if is_training and images % REFERENCE_TOTAL_BATCH != 0 and REFERENCE_TOTAL_BATCH % images != 0:
            raise ValueError(
                '{} tower(s) x TRAIN.BATCH_SIZE_PER_GPU={} = {} images per step can\'t make up the reference batch '
                'of {}: use 1, 2, 4 or a multiple of {} towers x images, or set TRAIN.ACCUMULATE_STEPS '
                '(TRAIN.NUM_GPUS={}).'.format(towers, cfg.TRAIN.BATCH_SIZE_PER_GPU, images, REFERENCE_TOTAL_BATCH,
                                              REFERENCE_TOTAL_BATCH, num_gpus))
        accumulate = max(REFERENCE_TOTAL_BATCH // images, 1)
    max_size = cfg.PREPROC.MAX_SIZE
    if cfg.MODE_FPN:
        stride = float(resolution_requirement(cfg))
        max_size = float(-(-max_size // stride) * stride)
    return Derived(
        train_splits=split_names(cfg.DATA.TRAIN), val_splits=split_names(cfg.DATA.VAL),
        basedir=os.path.expanduser(cfg.DATA.BASEDIR), num_gpus=num_gpus, num_towers=towers,
        images_per_step=images, accumulate_steps=accumulate,
        data_format=cfg.BACKBONE.DATA_FORMAT or devices.default_data_format,
        max_size=max_size, lr_schedule=expand_lr_schedule(cfg.TRAIN.LR_SCHEDULE),
        train_short_edge_size=short_edge_range(cfg.PREPROC.TRAIN_SHORT_EDGE_SIZE))
