"""Check, before anything is restored, that saved weights fit the graph they are loaded into.

tensorpack's loaders only warn about a graph variable that the checkpoint or `.npz` lacks (it
keeps its random initial value), and a shape mismatch fails later with a bare
`Assign requires shapes ...`. For inference either means the config differs from the one the
model was trained with, so `CheckedRestore` compares names and shapes first and raises a
ValueError naming the variables, both shapes and the config key that likely differs.
Training's `--load` does not use it: fine-tuning skips and lists such variables on purpose.
"""
import re
import zipfile

import numpy as np

from utils.tf_compat import tf  # must come before tensorpack

from tensorpack.tfutils.sessinit import SessionInit, SmartInit
from tensorpack.tfutils.varmanip import is_training_name
from tensorpack.utils import logger

__all__ = ['saved_variable_shapes', 'graph_variable_shapes', 'check_weights_match_graph', 'CheckedRestore']

_NOT_MODEL_STATE = ('global_step', 'learning_rate')
_LISTED = 8   # names shown in the one-line message; the log has all of them


def _op_name(name):
    return name[:-2] if name.endswith(':0') else name


def saved_variable_shapes(path):
    """{variable name: shape tuple} stored in checkpoint prefix `path` or in the `.npz` file `path`.

    An `.npz` is read from its array headers only, without loading the arrays.
    """
    if not path.endswith('.npz'):
        reader = tf.train.NewCheckpointReader(path)
        return {_op_name(name): tuple(shape) for name, shape in reader.get_variable_to_shape_map().items()}
    header_readers = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}
    shapes = {}
    with zipfile.ZipFile(path) as archive:
        for info in archive.infolist():
            name = info.filename[:-len('.npy')] if info.filename.endswith('.npy') else info.filename
            with archive.open(info) as f:
                read_header = header_readers.get(np.lib.format.read_magic(f))
                shape = read_header(f)[0] if read_header else np.load(path)[name].shape
            shapes[_op_name(name)] = tuple(shape)
    return shapes


def graph_variable_shapes(graph=None):
    """{name: shape tuple} of the model state in `graph` (default: the current graph): its global
    variables without optimizer slots, moving-average summaries, global_step and learning_rate."""
    graph = graph or tf.get_default_graph()
    with graph.as_default():
        variables = tf.global_variables()
    return {v.op.name: tuple(v.shape.as_list()) for v in variables
            if not is_training_name(v.op.name) and v.op.name not in _NOT_MODEL_STATE}


# what the saved names say about the config they were trained with ------------------------
def _heads(saved, prefix):
    return {name[len(prefix):].split('/')[0] for name in saved if name.startswith(prefix)}


def _saved_num_blocks(saved):
    counts = []
    for group in range(4):
        found = [int(m.group(1)) for m in (re.match(r'group{}/block(\d+)/'.format(group), n) for n in saved) if m]
        counts.append(max(found) + 1 if found else 0)
    return counts


def _saved_box_head(saved):
    parts = _heads(saved, 'fastrcnn/') | _heads(saved, 'cascade_rcnn_stage1/head/')
    if 'fc6' in parts:
        return 'fastrcnn_2fc_head'
    if 'gn0' in parts:
        return 'fastrcnn_4conv1fc_gn_head'
    return 'fastrcnn_4conv1fc_head' if 'conv0' in parts else None


def _saved_norm(saved):
    if 'conv0/gn/gamma' in saved:
        return 'GN'
    if 'conv0/bn/gamma' in saved:
        return 'FreezeBN or SyncBN'
    return 'None' if 'conv0/b' in saved else None


def _saved_num_category(saved):
    for name in ('fastrcnn/outputs/class/W', 'fastrcnn/class/W', 'cascade_rcnn_stage1/outputs/class/W'):
        if name in saved:
            return saved[name][-1] - 1
    return saved['maskrcnn/conv/W'][-1] if 'maskrcnn/conv/W' in saved else None


def _what_the_file_says(key, saved):
    """A short 'the file has ...' for config `key`, or '' if the names don't tell."""
    scopes = {name.split('/')[0] for name in saved}
    value = {
        'BACKBONE.RESNET_NUM_BLOCKS': lambda: _saved_num_blocks(saved),
        'BACKBONE.NORM': lambda: _saved_norm(saved),
        'FPN.NORM': lambda: 'GN' if any(n.startswith('fpn/gn_') for n in saved) else 'None',
        'MODE_FPN': lambda: 'fpn' in scopes,
        'MODE_MASK': lambda: 'maskrcnn' in scopes,
        'FPN.CASCADE': lambda: any(s.startswith('cascade_rcnn_stage') for s in scopes),
        'FPN.FRCNN_HEAD_FUNC': lambda: _saved_box_head(saved),
        'FPN.MRCNN_HEAD_FUNC': lambda: ('maskrcnn_up4conv_gn_head' if 'gn0' in _heads(saved, 'maskrcnn/')
                                        else 'maskrcnn_up4conv_head'),
        'DATA.NUM_CATEGORY': lambda: _saved_num_category(saved),
    }.get(key, lambda: None)()
    return '' if value is None else ' (the file looks like {}={})'.format(key, value)


# the likely key of each difference ----------------------------------------------------------
def _missing_key(name, saved_scopes, saved_blocks):
    """The config key that most likely makes the graph have variable `name` that the file lacks."""
    block = re.match(r'(group\d+/block\d+)/', name)
    if block and block.group(1) not in saved_blocks:
        return 'BACKBONE.RESNET_NUM_BLOCKS'
    if re.search(r'/(bn|gn)/', name) or re.match(r'(conv0|group\d+/block\d+/conv\w+)/b$', name):
        return 'BACKBONE.NORM'
    top = name.split('/')[0]
    if name.startswith('fpn/gn_'):
        return 'FPN.NORM'
    if top == 'fpn' or (top == 'rpn' and 'fpn' not in saved_scopes):
        return 'MODE_FPN'
    if top.startswith('cascade_rcnn_stage'):
        return 'FPN.CASCADE'
    if top == 'fastrcnn':
        if any(s.startswith('cascade_rcnn_stage') for s in saved_scopes):
            return 'FPN.CASCADE'
        if re.match(r'fastrcnn/(class|box)/', name) or 'fpn' not in saved_scopes:
            return 'MODE_FPN'
        return 'FPN.FRCNN_HEAD_FUNC'
    if top == 'maskrcnn':
        return 'FPN.MRCNN_HEAD_FUNC' if 'maskrcnn' in saved_scopes else 'MODE_MASK'
    return None


def _mismatch_key(name, graph_shape, saved_shape, is_fpn):
    """The config key that most likely sets the dimension in which the two shapes differ."""
    last_differs = graph_shape[-1:] != saved_shape[-1:]
    if re.match(r'(fastrcnn|cascade_rcnn_stage\d+)/(outputs/)?(class|box)/', name) or name.startswith('maskrcnn/conv/'):
        if last_differs:
            return 'DATA.NUM_CATEGORY'
        return 'MRCNN.HEAD_DIM' if name.startswith('maskrcnn/') else 'FPN.FRCNN_FC_HEAD_DIM'
    if name.startswith('maskrcnn/'):
        return 'MRCNN.HEAD_DIM'
    if re.match(r'rpn/(class|box)/', name) and last_differs:
        return 'RPN.ANCHOR_RATIOS' if is_fpn else 'RPN.ANCHOR_SIZES or RPN.ANCHOR_RATIOS'
    if name.startswith('fpn/') or (name.startswith('rpn/') and is_fpn):
        return 'FPN.NUM_CHANNEL'
    if name.startswith('rpn/'):
        return 'RPN.HEAD_DIM'
    if re.match(r'(fastrcnn|cascade_rcnn_stage\d+/head)/fc6/W$', name) and not last_differs:
        return 'FPN.NUM_CHANNEL'
    if re.match(r'(fastrcnn|cascade_rcnn_stage\d+/head)/(fc\d*|conv\d|gn\d)/', name):
        return 'FPN.FRCNN_FC_HEAD_DIM' if '/fc' in name else 'FPN.FRCNN_CONV_HEAD_DIM'
    return None


_KEY_NOTES = {
    'DATA.NUM_CATEGORY': 'derived from the class names of DATA.TRAIN[0]: name the dataset the model was trained on',
}


def _listing(items):
    shown = ', '.join(items[:_LISTED])
    return shown + (', ... and {} more'.format(len(items) - _LISTED) if len(items) > _LISTED else '')


def check_weights_match_graph(saved, wanted, source):
    """Raise ValueError unless every variable of `wanted` is in `saved` with the same shape.

    Args:
        saved: {name: shape} of the file (`saved_variable_shapes`).
        wanted: {name: shape} of the graph (`graph_variable_shapes`).
        source: the file's path, for the message.
    The message names the missing variables, each mismatched variable with both shapes, and
    the config keys that likely differ (with what the file suggests for them where it can).
    """
    missing = sorted(name for name in wanted if name not in saved)
    mismatched = sorted(name for name in wanted if name in saved and tuple(saved[name]) != tuple(wanted[name]))
    if not missing and not mismatched:
        return
    keys = []
    parts = []
    if missing:
        scopes = {name.split('/')[0] for name in saved}
        blocks = {m.group(0)[:-1] for m in (re.match(r'group\d+/block\d+/', n) for n in saved) if m}
        keys += [_missing_key(name, scopes, blocks) for name in missing]
        parts.append('{} variable(s) of the inference graph are missing from {}: {}.'.format(
            len(missing), source, _listing(missing)))
        logger.error('Variables of the graph missing from {}: {}'.format(source, ', '.join(missing)))
    if mismatched:
        is_fpn = any(name.startswith('fpn/') for name in wanted)
        keys += [_mismatch_key(name, tuple(wanted[name]), tuple(saved[name]), is_fpn) for name in mismatched]
        described = ['{} is {} in the graph but {} in the file'.format(name, list(wanted[name]), list(saved[name]))
                     for name in mismatched]
        parts.append('{} variable(s) have another shape in {}: {}.'.format(len(mismatched), source,
                                                                              _listing(described)))
        logger.error('Variables whose shape differs in {}: {}'.format(source, '; '.join(described)))
    likely = [key for key in dict.fromkeys(keys) if key]
    if likely:
        hints = ['{}{}{}'.format(key, _what_the_file_says(key.split(' ')[0], saved),
                                 ' [{}]'.format(_KEY_NOTES[key]) if key in _KEY_NOTES else '') for key in likely]
        parts.append('The config differs from the one the model was trained with; likely: {}.'.format(
            '; '.join(hints)))
    else:
        parts.append('The config differs from the one the model was trained with.')
    parts.append('Pass the training config with --config (train.py --load may start from such a file: it skips '
                 'and lists these variables).')
    raise ValueError(' '.join(parts))


class CheckedRestore(SessionInit):
    """`SmartInit(path)` that first checks that the file holds every model variable of the graph
    with the graph's shape (`check_weights_match_graph`), before a session is restored."""

    def __init__(self, path):
        self._path = path
        self._restore = SmartInit(path)
        self._saved = None

    def _setup_graph(self):
        if self._saved is None:
            self._saved = saved_variable_shapes(self._path)
        check_weights_match_graph(self._saved, graph_variable_shapes(), self._path)
        self._restore._setup_graph()

    def _run_init(self, sess):
        self._restore._run_init(sess)
