"""Every configuration key with its default, the command-line override parser, and derived values.

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
"""
import ast
import copy
import difflib
import os
import pprint
from collections import namedtuple

from modeling import params as model_params
from utils.lr_schedule import REFERENCE_TOTAL_BATCH   # the schedule keys count steps of this many images
from utils.devices import Devices

__all__ = ['config', 'finalize_configs', 'validate_config', 'derive_config', 'Derived', 'Devices',
           'new_config', 'reset_config', 'describe_config']


class _Spec:
    """What one key accepts: its default, a one-line description, the accepted types, and for a list
    value a template of its elements (a type tuple, or a list of one template for nested lists)."""

    def __init__(self, default, doc, types, elements=None):
        self.default = default
        self.doc = doc
        self.types = types
        self.elements = elements if elements is not None else _element_template(default)

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

    @property
    def derived(self):
        """The `Derived` values of the last `finalize_configs` of this config."""
        derived = self.__dict__.get('_derived')
        if derived is None:
            raise AttributeError('The config has no derived values yet: call finalize_configs first.')
        return derived

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


def _declare(key, default, doc, types=None, elements=None):
    """Declare `key` with its default, a one-line description and (optionally) accepted types and, for
    a list value, the accepted types of its elements (taken from the default's elements otherwise)."""
    if types is None:
        types = _types_of(default)
    _SPECS[key] = _Spec(copy.deepcopy(default), doc, tuple(types), elements)
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


def _element_template(default):
    """The element types of a list default: a type tuple, [template] for a list of lists, or None."""
    if not isinstance(default, (list, tuple)) or not default:
        return None
    if all(isinstance(e, (list, tuple)) for e in default):
        inner = _element_template(default[0])
        return [inner] if inner is not None else None
    kinds = {_types_of(e) for e in default}
    return kinds.pop() if len(kinds) == 1 else None


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

# The model's choices come from modeling/params.py, TensorFlow-free lists that
# tests/modeling/test_params.py checks against the tables that implement them.
_VALID = {
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
_BOUNDS = {
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
    if isinstance(value, (list, tuple)) and spec.elements is not None:
        _check_elements(key, value, spec.elements, value)
    if isinstance(value, (list, tuple)) and isinstance(spec.default, (list, tuple)):
        value = type(spec.default)(value)   # lists and tuples are interchangeable on the command line
    return value


def _check_elements(key, value, template, whole):
    """Every element of list `value` matches `template` (see _Spec), else a ValueError naming `key`."""
    for position, element in enumerate(value):
        if isinstance(template, list):
            if not isinstance(element, (list, tuple)):
                raise ValueError('Config {}={!r}: element {} ({!r}) should be a list.'.format(
                    key, whole, position, element))
            _check_elements(key, element, template[0], whole)
            continue
        ok = isinstance(element, template) and (bool in template or not isinstance(element, bool))
        if not ok:
            default = _SPECS[key].default
            raise ValueError('Config {}={!r}: element {} ({!r}) should be {}{}.'.format(
                key, whole, position, element, _type_names(template),
                ', like the default {!r}'.format(default) if isinstance(default, (list, tuple)) else ''))


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


def _split_names(value):
    """DATA.TRAIN / DATA.VAL as a tuple: one name may be given as a string."""
    return (value,) if isinstance(value, str) else tuple(value)


def _short_edge_range(value):
    """PREPROC.TRAIN_SHORT_EDGE_SIZE as (min, max)."""
    scales = [value, value] if isinstance(value, int) else list(value)
    if len(scales) != 2 or scales[0] > scales[1]:
        raise ValueError('PREPROC.TRAIN_SHORT_EDGE_SIZE={!r}: give [min, max] or one size.'.format(value))
    return tuple(scales)


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


def validate_config(cfg=None):
    """Raise ValueError for a value or combination of values that can't work. Changes nothing."""
    cfg = _C if cfg is None else cfg
    if not _split_names(cfg.DATA.TRAIN):
        raise ValueError('DATA.TRAIN is empty: name at least one registered split.')
    for key in _VALID:
        node, leaf = _resolve_parent(cfg, key)
        _check_choice(key, getattr(node, leaf))
    for key in _BOUNDS:
        node, leaf = _resolve_parent(cfg, key)
        _check_bound(key, getattr(node, leaf))
    if cfg.TRAIN.ACCUMULATE_STEPS is not None and cfg.TRAIN.ACCUMULATE_STEPS < 1:
        raise ValueError('TRAIN.ACCUMULATE_STEPS={} must be at least 1.'.format(cfg.TRAIN.ACCUMULATE_STEPS))
    if cfg.BACKBONE.NORM != 'FreezeBN' and cfg.BACKBONE.FREEZE_AFFINE:
        raise ValueError('BACKBONE.FREEZE_AFFINE=True only works with BACKBONE.NORM=FreezeBN, not {!r}.'
                         .format(cfg.BACKBONE.NORM))
    if len(cfg.FPN.ANCHOR_STRIDES) != len(cfg.RPN.ANCHOR_SIZES):
        raise ValueError('FPN.ANCHOR_STRIDES {} and RPN.ANCHOR_SIZES {} must have the same length.'
                         .format(cfg.FPN.ANCHOR_STRIDES, cfg.RPN.ANCHOR_SIZES))
    _short_edge_range(cfg.PREPROC.TRAIN_SHORT_EDGE_SIZE)
    _expand_lr_schedule(cfg.TRAIN.LR_SCHEDULE)
    if cfg.FPN.CASCADE and not cfg.MODE_FPN:
        raise ValueError('FPN.CASCADE=True needs MODE_FPN=True.')
    if cfg.MODE_FPN and cfg.FPN.CASCADE:
        if cfg.CASCADE.IOUS[0] != cfg.FRCNN.FG_THRESH:
            raise ValueError('CASCADE.IOUS[0]={} must equal FRCNN.FG_THRESH={}: the first stage samples '
                             'proposals with it.'.format(cfg.CASCADE.IOUS[0], cfg.FRCNN.FG_THRESH))
        if len(cfg.CASCADE.BBOX_REG_WEIGHTS) != len(cfg.CASCADE.IOUS):
            raise ValueError('CASCADE.BBOX_REG_WEIGHTS needs one entry per stage of CASCADE.IOUS ({}).'
                             .format(len(cfg.CASCADE.IOUS)))


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
        stride = float(_resolution_requirement(cfg))
        max_size = float(-(-max_size // stride) * stride)
    return Derived(
        train_splits=_split_names(cfg.DATA.TRAIN), val_splits=_split_names(cfg.DATA.VAL),
        basedir=os.path.expanduser(cfg.DATA.BASEDIR), num_gpus=num_gpus, num_towers=towers,
        images_per_step=images, accumulate_steps=accumulate,
        data_format=cfg.BACKBONE.DATA_FORMAT or devices.default_data_format,
        max_size=max_size, lr_schedule=_expand_lr_schedule(cfg.TRAIN.LR_SCHEDULE),
        train_short_edge_size=_short_edge_range(cfg.PREPROC.TRAIN_SHORT_EDGE_SIZE))


def _resolution_requirement(cfg):
    return cfg.FPN.ANCHOR_STRIDES[3]   # the backbone's deepest stride, c5


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
    cfg.FPN.RESOLUTION_REQUIREMENT = _resolution_requirement(cfg)


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
    fresh = AttrDict()
    fresh.__dict__.update(copy.deepcopy(_DEFAULTS))
    fresh.__dict__.pop('_derived', None)
    fresh.freeze()
    return fresh


def describe_config():
    """Rows of (key, default, description) for every settable key."""
    return [(key, repr(spec.default), spec.doc) for key, spec in _SPECS.items()]


if __name__ == '__main__':
    from tabulate import tabulate
    print(tabulate(describe_config(), headers=['key', 'default', 'meaning']))
