"""Every configuration key with its default and meaning, and `finalize_configs`.

Usage, as in tensorpack's example:

    from config import config as cfg, finalize_configs
    cfg.update_args(['MODE_FPN=True', 'DATA.BASEDIR=~/data/coco'])
    finalize_configs(is_training=True)   # validates, fills the derived keys, freezes
    cfg.derived.max_size                 # 1344.0: PREPROC.MAX_SIZE itself stays 1333

Keys and defaults mirror tensorpack's examples/FasterRCNN so its recipes and model-zoo
checkpoints carry over. Keys marked "(new)" are ours. Finalization has three steps:
`validate_config` (raises, changes nothing), `derive_config` (the resolved values of keys such
as NUM_GPUS=None or LR_SCHEDULE='1x', as a `Derived` record apart from what was declared) and
the keys declared as derived (class names, NUM_ANCHOR, ...). It sets no environment variable and
initializes nothing: process set-up is in the entry scripts and utils/tf_compat.py. Only the
entry scripts and the `from_config` steps of the dataflow and the model read this module.

The machinery is in configlib/: the tree and override parsing (`attrdict`, `keys`), the checks
(`validate`) and the derived values (`derive`).
"""
import copy

from configlib.attrdict import AttrDict
from configlib.derive import Derived, derive_config, resolution_requirement
from configlib.keys import KeyTable, combine_overrides
from configlib.validate import validate_config as _validate
from utils.devices import Devices

__all__ = ['config', 'finalize_configs', 'validate_config', 'derive_config', 'Derived', 'Devices',
           'new_config', 'reset_config', 'describe_config', 'combine_overrides', 'num_towers', 'AttrDict']

_KEYS = KeyTable()   # every declared key: .specs (users set them), .derived (finalize_configs fills them)


class Config(AttrDict):
    """The root of a config tree: `update_args` checks overrides against the keys declared below."""

    _key_table = _KEYS


config = Config()
_C = config


def _declare(key, default, doc, types=None, elements=None):
    """Declare `key` with its default, a one-line description and (optionally) accepted types and, for
    a list value, the accepted types of its elements (taken from the default's elements otherwise)."""
    _KEYS.declare(_C, key, default, doc, types, elements)


def _derived(key, placeholder, doc):
    """A key computed by `finalize_configs`; users don't set it."""
    _KEYS.declare_derived(_C, key, placeholder, doc)


# mode flags ------------------------------------------------------------------------------
_declare('TRAINER', 'replicated', "'replicated' (one or more GPUs, or the CPU) or 'horovod' (one process per GPU)")
_declare('MODE_MASK', True, 'True: Mask R-CNN; False: Faster R-CNN')
_declare('MODE_FPN', True, 'True: ResNet-FPN; False: ResNet-C4')

# dataset ---------------------------------------------------------------------------------
_declare('DATA.BASEDIR', '/path/to/your/DATA/DIR', 'root of the datasets; ~ is expanded')
_declare('DATA.TRAIN', ('coco_train2017',), 'split names (registered, coco_<split> or coco:<json>:<image_dir>), '
         'concatenated for training',
         types=(str, list, tuple), elements=(str,))
_declare('DATA.VAL', ('coco_val2017',), 'split names like DATA.TRAIN, each evaluated on its own',
         types=(str, list, tuple), elements=(str,))
_derived('DATA.NUM_CATEGORY', -1, 'number of classes without background, from the first TRAIN split')
_derived('DATA.CLASS_NAMES', [], "NUM_CATEGORY + 1 names, 'BG' first, from the first TRAIN split")
_declare('DATA.ABSOLUTE_COORD', True, 'True: roidb boxes are pixels; False: fractions of the image size in [0, 1]')
_declare('DATA.FILTER_EMPTY_ANNOTATIONS', True, 'drop training images that have no non-crowd box')
_declare('DATA.EXIF_ORIENTATION', 'apply', "(new) 'apply': a JPEG's EXIF orientation rotates its pixels before "
         "its annotations apply (OpenCV, detectron2); 'ignore': annotations are of the pixels as stored")
_declare('DATA.NUM_WORKERS', 10, 'data-loading processes (per rank under Horovod); 0 loads in the main process')
_declare('DATA.ROIDB_CACHE', '', "(new) directory of the memory-mapped roidb cache of COCO-format jsons, "
         "relative to the json's ('.': beside it); '' parses the json every time")
_declare('DATA.SEED', 42, '(new) seed of shuffling and augmentation; Horovod rank r uses SEED + r, '
         'also for its graph')

# backbone --------------------------------------------------------------------------------
_declare('BACKBONE.WEIGHTS', '', "an .npz or checkpoint to initialize from; '' trains from scratch "
         "(then use FREEZE_AT=0)")
_declare('BACKBONE.RESNET_NUM_BLOCKS', [3, 4, 6, 3], 'blocks per ResNet stage: [3,4,6,3] R50, [3,4,23,3] R101')
_declare('BACKBONE.FREEZE_AFFINE', False, 'freeze gamma/beta of the norm layers (FreezeBN only)')
_declare('BACKBONE.NORM', 'FreezeBN', "'FreezeBN', 'SyncBN', 'GN' or 'None'")
_declare('BACKBONE.FREEZE_AT', 2, 'stages not trained: 0 none, 1 the stem, 2 the stem and group0')
_declare('BACKBONE.TF_PAD_MODE', False, "True: TF 'SAME' padding (model-zoo models without '-AlignPadding')")
_declare('BACKBONE.STRIDE_1X1', False, 'stride in the 1x1 conv of a bottleneck (MSRA-style models)')
_declare('BACKBONE.DATA_FORMAT', None, "(new) 'NCHW' or 'NHWC'; None picks NCHW with a GPU, NHWC without",
         types=(type(None), str))

# schedule --------------------------------------------------------------------------------
_declare('TRAIN.NUM_GPUS', None, 'GPUs to train on (0 on CPU); None counts them (Horovod: the number of ranks)',
         types=(type(None), int))
_declare('TRAIN.WEIGHT_DECAY', 1e-4, 'L2 weight decay on every .*/W variable')
_declare('TRAIN.BASE_LR', 1e-2, 'learning rate for a total batch of 8 images with summed gradients')
_declare('TRAIN.WARMUP', 1000, 'steps of linear warmup from WARMUP_INIT_LR to BASE_LR')
_declare('TRAIN.WARMUP_INIT_LR', 1e-5, 'learning rate at step 0, for a total batch of 8')
_declare('TRAIN.STEPS_PER_EPOCH', 500, 'steps between epoch-level callbacks')
_declare('TRAIN.STARTING_EPOCH', 1, 'first epoch number, to continue a schedule')
_declare('TRAIN.LR_SCHEDULE', '1x', "'1x', '2x', ... '9x' or [decay1, decay2, last] steps for a total batch of 8",
         types=(str, list, tuple), elements=(int,))
_declare('TRAIN.EVAL_PERIOD', 50, 'epochs between COCO evaluations (also at the end); 0 disables')
_declare('TRAIN.CHECKPOINT_PERIOD', 20, 'epochs between checkpoints')
_declare('TRAIN.ACCUMULATE_STEPS', None, '(new) steps of gradient accumulation; None means '
         '8 // (towers x BATCH_SIZE_PER_GPU), so a step sees 8 images as in the example', types=(type(None), int))
_declare('TRAIN.BATCH_SIZE_PER_GPU', 1, '(new) training images per tower and step, padded to one size; '
         '1 is the example\'s graph')
_declare('TRAIN.AMP', False, '(new) mixed precision: float16 with dynamic loss scaling on GPUs, bfloat16 '
         '(oneDNN) on CPUs; variables stay float32')

# preprocessing ---------------------------------------------------------------------------
_declare('PREPROC.TRAIN_SHORT_EDGE_SIZE', [800, 800], 'training short edge in pixels, sampled from [min, max]',
         types=(list, tuple, int))
_declare('PREPROC.TEST_SHORT_EDGE_SIZE', 800, 'inference short edge in pixels')
_declare('PREPROC.MAX_SIZE', 1333, 'cap on the long edge in pixels (rounded up to the FPN stride)',
         types=(int, float))
_declare('PREPROC.PIXEL_MEAN', [123.675, 116.28, 103.53], 'per-channel mean, RGB order, 0..255 scale')
_declare('PREPROC.PIXEL_STD', [58.395, 57.12, 57.375], 'per-channel std, RGB order, 0..255 scale')

# anchors ---------------------------------------------------------------------------------
_declare('RPN.ANCHOR_STRIDE', 16, 'anchor stride in pixels (C4)')
_declare('RPN.ANCHOR_SIZES', (32, 64, 128, 256, 512), 'sqrt(area) of anchors in pixels; one per level with FPN')
_declare('RPN.ANCHOR_RATIOS', (0.5, 1., 2.), 'anchor aspect ratios h/w')
_declare('RPN.POSITIVE_ANCHOR_THRESH', 0.7, 'IoU at or above which an anchor is foreground')
_declare('RPN.NEGATIVE_ANCHOR_THRESH', 0.3, 'IoU below which an anchor is background')
_derived('RPN.NUM_ANCHOR', -1, 'anchors per location: len(ANCHOR_SIZES) * len(ANCHOR_RATIOS)')

# RPN training ----------------------------------------------------------------------------
_declare('RPN.FG_RATIO', 0.5, 'largest fraction of foreground among the sampled anchors')
_declare('RPN.BATCH_PER_IM', 256, 'anchors sampled per image (across all FPN levels)')
_declare('RPN.MIN_SIZE', 0, 'proposals smaller than this (pixels) are dropped')
_declare('RPN.PROPOSAL_NMS_THRESH', 0.7, 'NMS IoU threshold of proposals')
_declare('RPN.CROWD_OVERLAP_THRESH', 9.99, 'anchors overlapping a crowd box above this IoA are ignored; > 1 disables')
_declare('RPN.HEAD_DIM', 1024, 'channels of the RPN conv (C4 only; FPN uses FPN.NUM_CHANNEL)')

# RPN proposal selection ------------------------------------------------------------------
_declare('RPN.TRAIN_PRE_NMS_TOPK', 12000, 'C4/Joint: proposals kept before NMS in training')
_declare('RPN.TRAIN_POST_NMS_TOPK', 2000, 'C4/Joint: proposals kept after NMS in training')
_declare('RPN.TEST_PRE_NMS_TOPK', 6000, 'C4/Joint: proposals kept before NMS at inference')
_declare('RPN.TEST_POST_NMS_TOPK', 1000, 'C4/Joint: proposals kept after NMS at inference (lower it on OOM)')
_declare('RPN.TRAIN_PER_LEVEL_NMS_TOPK', 2000, 'FPN Level mode: proposals per level and in total, training')
_declare('RPN.TEST_PER_LEVEL_NMS_TOPK', 1000, 'FPN Level mode: proposals per level and in total, inference')

# Fast R-CNN training ---------------------------------------------------------------------
_declare('FRCNN.BATCH_PER_IM', 512, 'ROIs sampled per image for the box head')
_declare('FRCNN.BBOX_REG_WEIGHTS', [10., 10., 5., 5.], 'weights of the (dx, dy, dw, dh) box targets')
_declare('FRCNN.FG_THRESH', 0.5, 'IoU with a gt box at or above which an ROI is foreground')
_declare('FRCNN.FG_RATIO', 0.25, 'largest fraction of foreground among the sampled ROIs')

# FPN -------------------------------------------------------------------------------------
_declare('FPN.ANCHOR_STRIDES', (4, 8, 16, 32, 64), 'stride of each level p2..p6; as long as RPN.ANCHOR_SIZES')
_declare('FPN.PROPOSAL_MODE', 'Level', "'Level': NMS per level; 'Joint': over all levels at once")
_declare('FPN.NUM_CHANNEL', 256, 'channels of the FPN features')
_declare('FPN.NORM', 'None', "'None' or 'GN' inside the FPN")
_declare('FPN.FRCNN_HEAD_FUNC', 'fastrcnn_2fc_head',
         "box head: 'fastrcnn_2fc_head', 'fastrcnn_4conv1fc_head' or 'fastrcnn_4conv1fc_gn_head'")
_declare('FPN.FRCNN_CONV_HEAD_DIM', 256, 'channels of the conv box heads')
_declare('FPN.FRCNN_FC_HEAD_DIM', 1024, 'width of the fc layers of the box heads')
_declare('FPN.MRCNN_HEAD_FUNC', 'maskrcnn_up4conv_head', "mask head: 'maskrcnn_up4conv_head' or "
         "'maskrcnn_up4conv_gn_head'")
_declare('FPN.CASCADE', False, 'Cascade R-CNN box heads (FPN only)')
_derived('FPN.RESOLUTION_REQUIREMENT', -1, 'the image is padded to a multiple of this: ANCHOR_STRIDES[3]')

# Mask R-CNN ------------------------------------------------------------------------------
_declare('MRCNN.HEAD_DIM', 256, 'channels of the mask head convs')
_declare('MRCNN.ACCURATE_PASTE', True, 'sub-pixel bilinear mask pasting; False: faster integer-box resize')

# Cascade R-CNN ---------------------------------------------------------------------------
_declare('CASCADE.IOUS', [0.5, 0.6, 0.7], 'foreground IoU of each stage; the first equals FRCNN.FG_THRESH')
_declare('CASCADE.BBOX_REG_WEIGHTS', [[10., 10., 5., 5.], [20., 20., 10., 10.], [30., 30., 15., 15.]],
         'box target weights of each stage')

# inference -------------------------------------------------------------------------------
_declare('TEST.FRCNN_NMS_THRESH', 0.5, 'per-class NMS IoU threshold of the final boxes')
_declare('TEST.RESULT_SCORE_THRESH', 0.05, 'detections scoring below this are dropped')
_declare('TEST.RESULT_SCORE_THRESH_VIS', 0.5, 'only detections above this are drawn')
_declare('TEST.RESULTS_PER_IM', 100, 'detections kept per image')
_declare('TEST.AMP', False, '(new) mixed-precision inference: float16 on GPUs, bfloat16 (oneDNN) on CPUs')

_C.freeze()
_DEFAULTS = copy.deepcopy(_C.__dict__)


def validate_config(cfg=None):
    """Raise ValueError for a value or combination of values that can't work. Changes nothing."""
    _validate(_C if cfg is None else cfg)


def _class_names_of(split):
    from dataset import DatasetRegistry
    return list(DatasetRegistry.get_metadata(split, 'class_names'))


def _fill_derived_keys(cfg, train_splits, val_splits):
    """The keys declared as derived (never set by users): class names and counts of the model."""
    class_names = _class_names_of(train_splits[0])
    for split in train_splits[1:] + val_splits:
        other = _class_names_of(split)
        if other != class_names:
            raise ValueError('Split {!r} has classes {} but {!r} (DATA.TRAIN[0]) has {}; all splits of one '
                             'model must share their classes.'.format(split, other, train_splits[0], class_names))
    cfg.DATA.CLASS_NAMES = class_names
    cfg.DATA.NUM_CATEGORY = len(class_names) - 1
    cfg.RPN.NUM_ANCHOR = len(cfg.RPN.ANCHOR_SIZES) * len(cfg.RPN.ANCHOR_RATIOS)
    cfg.FPN.RESOLUTION_REQUIREMENT = resolution_requirement(cfg)


def finalize_configs(is_training, devices=None, cfg=None):
    """Validate the config, fill its derived keys, attach its `Derived` values and freeze it.

    Call after `update_args`, with datasets registered (class names come from the first
    DATA.TRAIN split). `devices` (utils.tf_compat.detect_devices) says what the process runs on;
    None looks at the visible devices without setting anything up, and under TRAINER=horovod
    needs Horovod initialized. The declared keys keep the values given; the resolved ones are
    in `cfg.derived`. Process set-up (environment, Horovod) is the entry scripts' job.
    Returns the `Derived` record.
    """
    cfg = _C if cfg is None else cfg
    validate_config(cfg)
    if devices is None:
        from utils.tf_compat import detect_devices
        devices = detect_devices(cfg.TRAINER, setup_horovod=False)
    derived = derive_config(cfg, is_training, devices)
    cfg.freeze(False)
    try:
        _fill_derived_keys(cfg, derived.train_splits, derived.val_splits)
        object.__setattr__(cfg, '_derived', derived)
    finally:
        cfg.freeze()
    _log_config(cfg)
    return derived


def _log_config(cfg):
    from tensorpack.utils import logger
    logger.info('Config: ------------------------------------------\n' + str(cfg))
    logger.info('Derived: ' + ', '.join('{}={!r}'.format(k, v) for k, v in cfg.derived._asdict().items()))


def num_towers():
    """Towers (GPUs, Horovod ranks, or 1 for the CPU) after finalize_configs."""
    return _C.derived.num_towers


def reset_config():
    """Restore every key to its declared default and freeze (for tests and notebooks)."""
    restored = copy.deepcopy(_DEFAULTS)
    _C.freeze(False)
    _C.__dict__.clear()
    _C.__dict__.update(restored)
    _C.freeze()


def new_config():
    """A config of its own with every key at its default, independent of `config`.

    For two differently configured models in one process; update and finalize it with
    `new_config().update_args(...)` and `finalize_configs(..., cfg=it)`.
    """
    fresh = Config()
    fresh.__dict__.update(copy.deepcopy(_DEFAULTS))
    fresh.__dict__.pop('_derived', None)
    fresh.freeze()
    return fresh


def describe_config():
    """Rows of (key, default, description) for every settable key."""
    return [(key, repr(spec.default), spec.doc) for key, spec in _KEYS.specs.items()]


if __name__ == '__main__':
    from tabulate import tabulate
    print(tabulate(describe_config(), headers=['key', 'default', 'meaning']))
