"""Every configuration key with its default, the command-line override parser, and derived values.

Usage, as in tensorpack's example:

    from config import config as cfg, finalize_configs
    cfg.update_args(['MODE_FPN=True', 'DATA.BASEDIR=~/data/coco'])
    finalize_configs(is_training=True)   # fills derived keys, validates, freezes

Keys and defaults mirror tensorpack's examples/FasterRCNN so its recipes and model-zoo
checkpoints carry over. Keys marked "(new)" are ours. Only the entry scripts, the dataflow
builders and the model assembly read this module; everything below them takes arguments.
"""
import ast
import copy
import difflib
import os
import pprint

__all__ = ['config', 'finalize_configs', 'reset_config', 'describe_config']


class _Spec:
    """What one key accepts: its default, a one-line description, the accepted types."""

    def __init__(self, default, doc, types):
        self.default = default
        self.doc = doc
        self.types = types

    def accepts_str(self):
        return str in self.types


class AttrDict:
    """A tree of config values with attribute access.

    Before `freeze()`, reading a missing attribute creates a sub-tree (so declarations can
    write `_C.DATA.TRAIN = ...`); after it, unknown keys raise instead of silently creating
    new ones, which is how typos in code are caught.
    """

    _frozen = False

    def __getattr__(self, name):
        if self._frozen or name.startswith('_'):
            raise AttributeError(name)
        child = AttrDict()
        setattr(self, name, child)
        return child

    def __setattr__(self, name, value):
        if self._frozen and name not in self.__dict__:
            raise AttributeError("Config is frozen; '{}' is not a config key.".format(name))
        super().__setattr__(name, value)

    def __getstate__(self):
        return self.__dict__

    def __setstate__(self, state):
        self.__dict__.update(state)

    def __str__(self):
        return pprint.pformat(self.to_dict(), indent=1, width=100, compact=True)

    __repr__ = __str__

    def to_dict(self):
        """A nested plain dict of the values (for logging and pickling into workers)."""
        return {k: v.to_dict() if isinstance(v, AttrDict) else v
                for k, v in self.__dict__.items() if not k.startswith('_')}

    def freeze(self, frozen=True):
        object.__setattr__(self, '_frozen', frozen)
        for value in self.__dict__.values():
            if isinstance(value, AttrDict):
                value.freeze(frozen)

    def update_args(self, args):
        """Apply command-line overrides such as `['TRAIN.BASE_LR=0.02', 'MODE_FPN=True']`.

        Values are parsed with `ast.literal_eval` and checked against the key's declared
        types. Either every override applies or, on the first bad one, none does.
        """
        parsed = [_parse_override(arg) for arg in args]
        _check_no_repeated_keys(args, parsed)
        for key, value in parsed:
            node, leaf = _resolve_parent(self, key)
            was_frozen = node._frozen
            node.freeze(False)
            setattr(node, leaf, value)
            node.freeze(was_frozen)

    # Comparing configs is almost always a bug (a config vs. a value of it).
    def __eq__(self, _):
        raise NotImplementedError('AttrDict does not support comparison.')

    def __ne__(self, _):
        raise NotImplementedError('AttrDict does not support comparison.')

    __hash__ = None


config = AttrDict()
_C = config
_SPECS = {}     # 'DATA.TRAIN' -> _Spec
_DERIVED = {}   # keys filled by finalize_configs -> doc


def _declare(key, default, doc, types=None):
    """Declare `key` with its default, a one-line description and (optionally) accepted types."""
    if types is None:
        types = _types_of(default)
    _SPECS[key] = _Spec(copy.deepcopy(default), doc, tuple(types))
    node = _C
    parts = key.split('.')
    for part in parts[:-1]:
        node = getattr(node, part)
    setattr(node, parts[-1], copy.deepcopy(default))


def _derived(key, placeholder, doc):
    """A key computed by `finalize_configs`; users don't set it."""
    _DERIVED[key] = doc
    node = _C
    parts = key.split('.')
    for part in parts[:-1]:
        node = getattr(node, part)
    setattr(node, parts[-1], placeholder)


def _types_of(default):
    if isinstance(default, bool):
        return (bool,)
    if isinstance(default, int):
        return (int,)
    if isinstance(default, float):
        return (float, int)
    if isinstance(default, str):
        return (str,)
    if isinstance(default, (list, tuple)):
        return (list, tuple)
    raise TypeError('Declare the accepted types of a key whose default is {!r}'.format(default))


# mode flags ------------------------------------------------------------------------------
_declare('TRAINER', 'replicated', "'replicated' (one or more GPUs, or the CPU) or 'horovod' (one process per GPU)")
_declare('MODE_MASK', True, 'True: Mask R-CNN; False: Faster R-CNN')
_declare('MODE_FPN', True, 'True: ResNet-FPN; False: ResNet-C4')

# dataset ---------------------------------------------------------------------------------
_declare('DATA.BASEDIR', '/path/to/your/DATA/DIR', 'root of the datasets; ~ is expanded')
_declare('DATA.TRAIN', ('coco_train2017',), 'registered split names, concatenated for training',
         types=(str, list, tuple))
_declare('DATA.VAL', ('coco_val2017',), 'registered split names, each evaluated on its own',
         types=(str, list, tuple))
_derived('DATA.NUM_CATEGORY', -1, 'number of classes without background, from the first TRAIN split')
_derived('DATA.CLASS_NAMES', [], "NUM_CATEGORY + 1 names, 'BG' first, from the first TRAIN split")
_declare('DATA.ABSOLUTE_COORD', True, 'True: roidb boxes are pixels; False: fractions of the image size in [0, 1]')
_declare('DATA.FILTER_EMPTY_ANNOTATIONS', True, 'drop training images that have no non-crowd box')
_declare('DATA.NUM_WORKERS', 10, 'data-loading processes (per rank under Horovod); 0 loads in the main process')
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
         types=(str, list, tuple))
_declare('TRAIN.EVAL_PERIOD', 50, 'epochs between COCO evaluations (also at the end); 0 disables')
_declare('TRAIN.CHECKPOINT_PERIOD', 20, 'epochs between checkpoints')
_declare('TRAIN.ACCUMULATE_STEPS', None, '(new) steps of gradient accumulation; None means 8 // towers, '
         'so a step sees 8 images as in the example', types=(type(None), int))
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

_VALID = {
    'TRAINER': ('replicated', 'horovod'),
    'BACKBONE.NORM': ('FreezeBN', 'SyncBN', 'GN', 'None'),
    'BACKBONE.FREEZE_AT': (0, 1, 2),
    'BACKBONE.DATA_FORMAT': (None, 'NCHW', 'NHWC'),
    'FPN.PROPOSAL_MODE': ('Level', 'Joint'),
    'FPN.NORM': ('None', 'GN'),
}
# Numeric keys with a lower bound: (bound, True if the bound itself is allowed).
_BOUNDS = {
    'TRAIN.BASE_LR': (0, False),
    'TRAIN.WARMUP_INIT_LR': (0, True),
    'TRAIN.WARMUP': (0, True),
    'TRAIN.WEIGHT_DECAY': (0, True),
    'TRAIN.STEPS_PER_EPOCH': (1, True),
    'TRAIN.STARTING_EPOCH': (1, True),
    'TRAIN.CHECKPOINT_PERIOD': (1, True),
    'TRAIN.EVAL_PERIOD': (0, True),
}


# overrides -------------------------------------------------------------------------------
def _close_matches(key):
    matches = difflib.get_close_matches(key, list(_SPECS), n=3, cutoff=0.6)
    if not matches:
        last = key.split('.')[-1]
        matches = [k for k in _SPECS if k.split('.')[-1] == last]
    return matches


def _unknown_key_error(key):
    if key in _DERIVED:
        return KeyError("Config key '{}' is derived by finalize_configs ({}); it can't be set."
                        .format(key, _DERIVED[key]))
    hint = _close_matches(key)
    msg = "Unknown config key '{}'.".format(key)
    if hint:
        msg += ' Did you mean: {}?'.format(', '.join(hint))
    return KeyError(msg)


def _resolve_parent(root, key):
    node = root
    parts = key.split('.')
    for part in parts[:-1]:
        node = node.__dict__[part]
    return node, parts[-1]


def _parse_override(arg):
    """'KEY=VALUE' -> (key, checked value), raising KeyError/ValueError naming the problem."""
    if '=' not in arg:
        raise ValueError("Config override '{}' must look like KEY=VALUE.".format(arg))
    key, text = arg.split('=', 1)
    key = key.strip()
    if key not in _SPECS:
        raise _unknown_key_error(key)
    spec = _SPECS[key]
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        if not spec.accepts_str():
            raise ValueError("Config {}={!r}: not a Python literal; this key takes {}."
                             .format(key, text, _type_names(spec.types))) from None
        value = text
    if spec.types == (str,) and not isinstance(value, str):
        value = text   # a str key keeps the text as typed, e.g. DATA.BASEDIR=2017
    return key, _check_type(key, value, spec)


def _check_no_repeated_keys(args, parsed):
    """A key given twice in one list of overrides is a mistake: say which, with both values."""
    first_text = {}
    for arg, (key, _) in zip(args, parsed):
        text = arg.split('=', 1)[1]
        if key in first_text:
            raise ValueError("Config key {} is given twice: {}={} and {}={}; give it once."
                             .format(key, key, first_text[key], key, text))
        first_text[key] = text


def _type_names(types):
    return ' or '.join('None' if t is type(None) else t.__name__ for t in types)


def _check_type(key, value, spec):
    ok = isinstance(value, spec.types)
    if isinstance(value, bool) and bool not in spec.types:
        ok = False   # True is an int in Python, but never a valid count or size
    if not ok:
        raise ValueError("Config {}={!r}: expected {}, got {}."
                         .format(key, value, _type_names(spec.types), type(value).__name__))
    if isinstance(spec.default, float) and isinstance(value, int):
        value = float(value)
    if isinstance(value, (list, tuple)) and isinstance(spec.default, (list, tuple)):
        value = type(spec.default)(value)   # lists and tuples are interchangeable on the command line
    return value


# derived values --------------------------------------------------------------------------
def _expand_lr_schedule(schedule):
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


def _check_choice(key, value):
    valid = _VALID[key]
    if value not in valid:
        raise ValueError('Config {}={!r} is not one of {}.'.format(key, value, valid))


def _check_bound(key, value):
    bound, inclusive = _BOUNDS[key]
    if value < bound or (value == bound and not inclusive):
        raise ValueError('Config {}={!r} must be {} {}.'.format(key, value, '>=' if inclusive else '>', bound))


def _count_training_towers(trainer, num_gpus):
    """NUM_GPUS for training: Horovod ranks, or visible GPUs (0 on a CPU-only machine)."""
    if trainer == 'horovod':
        try:
            import horovod.tensorflow as hvd
        except ImportError:
            raise ImportError(
                'TRAINER=horovod needs Horovod. Install it into the venv with `make horovod` '
                '(see README: Horovod 0.28.1 built against TensorFlow 2.15.1 with Gloo).') from None
        hvd.init()
        size = hvd.size()
        if num_gpus is not None and num_gpus != size:
            raise ValueError('TRAIN.NUM_GPUS={} but Horovod runs {} ranks (hvd.size()); leave TRAIN.NUM_GPUS '
                             'unset under Horovod.'.format(num_gpus, size))
        return size
    from utils.tf_compat import num_tower_devices
    visible = num_tower_devices()
    if num_gpus is None:
        return visible
    if num_gpus > visible:
        raise ValueError('TRAIN.NUM_GPUS={} but only {} GPU(s) are visible.'.format(num_gpus, visible))
    return num_gpus


def _class_names_of(split):
    from dataset import DatasetRegistry
    return list(DatasetRegistry.get_metadata(split, 'class_names'))


def finalize_configs(is_training):
    """Validate the config, fill the derived keys and freeze it. Call after `update_args`.

    Datasets must be registered first: class names come from the first DATA.TRAIN split.
    """
    from tensorpack.utils import logger

    _C.freeze(False)
    try:
        _finalize(is_training)
    finally:
        _C.freeze()
    logger.info('Config: ------------------------------------------\n' + str(_C))


def _finalize(is_training):
    for key in ('DATA.TRAIN', 'DATA.VAL'):
        node, leaf = _resolve_parent(_C, key)
        value = getattr(node, leaf)
        setattr(node, leaf, (value,) if isinstance(value, str) else tuple(value))
    if not _C.DATA.TRAIN:
        raise ValueError('DATA.TRAIN is empty: name at least one registered split.')
    _C.DATA.BASEDIR = os.path.expanduser(_C.DATA.BASEDIR)

    class_names = _class_names_of(_C.DATA.TRAIN[0])
    for split in list(_C.DATA.TRAIN[1:]) + list(_C.DATA.VAL):
        other = _class_names_of(split)
        if other != class_names:
            raise ValueError('Split {!r} has classes {} but {!r} (DATA.TRAIN[0]) has {}; all splits of one '
                             'model must share their classes.'.format(split, other, _C.DATA.TRAIN[0], class_names))
    _C.DATA.CLASS_NAMES = class_names
    _C.DATA.NUM_CATEGORY = len(class_names) - 1

    for key in _VALID:
        node, leaf = _resolve_parent(_C, key)
        _check_choice(key, getattr(node, leaf))
    for key in _BOUNDS:
        node, leaf = _resolve_parent(_C, key)
        _check_bound(key, getattr(node, leaf))
    if _C.BACKBONE.NORM != 'FreezeBN' and _C.BACKBONE.FREEZE_AFFINE:
        raise ValueError('BACKBONE.FREEZE_AFFINE=True only works with BACKBONE.NORM=FreezeBN, not {!r}.'
                         .format(_C.BACKBONE.NORM))

    _C.RPN.NUM_ANCHOR = len(_C.RPN.ANCHOR_SIZES) * len(_C.RPN.ANCHOR_RATIOS)
    if len(_C.FPN.ANCHOR_STRIDES) != len(_C.RPN.ANCHOR_SIZES):
        raise ValueError('FPN.ANCHOR_STRIDES {} and RPN.ANCHOR_SIZES {} must have the same length.'
                         .format(_C.FPN.ANCHOR_STRIDES, _C.RPN.ANCHOR_SIZES))
    _C.FPN.RESOLUTION_REQUIREMENT = _C.FPN.ANCHOR_STRIDES[3]   # the backbone's deepest stride, c5

    scales = _C.PREPROC.TRAIN_SHORT_EDGE_SIZE
    if isinstance(scales, int):
        scales = [scales, scales]
    if len(scales) != 2 or scales[0] > scales[1]:
        raise ValueError('PREPROC.TRAIN_SHORT_EDGE_SIZE={!r}: give [min, max] or one size.'.format(scales))
    _C.PREPROC.TRAIN_SHORT_EDGE_SIZE = list(scales)

    if _C.MODE_FPN:
        mult = float(_C.FPN.RESOLUTION_REQUIREMENT)
        _C.PREPROC.MAX_SIZE = float(-(-_C.PREPROC.MAX_SIZE // mult) * mult)
        for key in ('FPN.FRCNN_HEAD_FUNC', 'FPN.MRCNN_HEAD_FUNC'):
            node, leaf = _resolve_parent(_C, key)
            if not getattr(node, leaf).endswith('_head'):
                raise ValueError('Config {}={!r} does not name a head function.'.format(key, getattr(node, leaf)))
        if _C.FPN.CASCADE:
            if _C.CASCADE.IOUS[0] != _C.FRCNN.FG_THRESH:
                raise ValueError('CASCADE.IOUS[0]={} must equal FRCNN.FG_THRESH={}: the first stage samples '
                                 'proposals with it.'.format(_C.CASCADE.IOUS[0], _C.FRCNN.FG_THRESH))
            if len(_C.CASCADE.BBOX_REG_WEIGHTS) != len(_C.CASCADE.IOUS):
                raise ValueError('CASCADE.BBOX_REG_WEIGHTS needs one entry per stage of CASCADE.IOUS ({}).'
                                 .format(len(_C.CASCADE.IOUS)))
    elif _C.FPN.CASCADE:
        raise ValueError('FPN.CASCADE=True needs MODE_FPN=True.')

    _C.TRAIN.LR_SCHEDULE = _expand_lr_schedule(_C.TRAIN.LR_SCHEDULE)

    if is_training:
        if scales[1] - scales[0] > 100:
            os.environ['TF_CUDNN_USE_AUTOTUNE'] = '0'   # autotuning every new shape is too slow
        os.environ['TF_AUTOTUNE_THRESHOLD'] = '1'
        _C.TRAIN.NUM_GPUS = _count_training_towers(_C.TRAINER, _C.TRAIN.NUM_GPUS)
    else:
        os.environ['TF_CUDNN_USE_AUTOTUNE'] = '0'
        if _C.TRAIN.NUM_GPUS is None:
            from utils.tf_compat import num_tower_devices
            _C.TRAIN.NUM_GPUS = num_tower_devices()

    towers = max(_C.TRAIN.NUM_GPUS, 1)
    # Only training needs the towers to make up the reference batch of 8; prediction runs on any number of GPUs.
    if is_training and towers % 8 != 0 and 8 % towers != 0:
        raise ValueError('Training runs on 1, 2, 4 or a multiple of 8 towers, not {} (TRAIN.NUM_GPUS).'
                         .format(towers))
    if _C.TRAIN.ACCUMULATE_STEPS is None:
        _C.TRAIN.ACCUMULATE_STEPS = max(8 // towers, 1)
    if _C.TRAIN.ACCUMULATE_STEPS < 1:
        raise ValueError('TRAIN.ACCUMULATE_STEPS={} must be at least 1.'.format(_C.TRAIN.ACCUMULATE_STEPS))

    if _C.BACKBONE.DATA_FORMAT is None:
        from utils.tf_compat import default_data_format
        _C.BACKBONE.DATA_FORMAT = default_data_format()


def combine_overrides(*groups):
    """One override list from several lists of `KEY=VALUE`: a key in a later list replaces it in earlier ones.

    For scripts that build a config from a base and changes; one list given to `update_args`
    may not repeat a key.
    """
    combined = {}
    for group in groups:
        for override in group:
            key = override.split('=', 1)[0].strip()
            combined.pop(key, None)   # the replacement goes where the later list puts it
            combined[key] = override
    return list(combined.values())


def num_towers():
    """Towers (GPUs, Horovod ranks, or 1 for the CPU) after finalize_configs."""
    return max(_C.TRAIN.NUM_GPUS or 0, 1)


def reset_config():
    """Restore every key to its declared default and freeze (for tests and notebooks)."""
    restored = copy.deepcopy(_DEFAULTS)
    _C.freeze(False)
    _C.__dict__.clear()
    _C.__dict__.update(restored)
    _C.freeze()


def describe_config():
    """Rows of (key, default, description) for every settable key."""
    return [(key, repr(spec.default), spec.doc) for key, spec in _SPECS.items()]


if __name__ == '__main__':
    from tabulate import tabulate
    print(tabulate(describe_config(), headers=['key', 'default', 'meaning']))
