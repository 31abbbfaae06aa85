"""Finding checkpoints: the newest complete one of a log directory (to resume), their steps, and
what `--load` may name."""
import glob
import os
import re

from utils.tf_compat import tf

__all__ = ['checkpoint_is_complete', 'list_checkpoints', 'latest_complete_checkpoint', 'checkpoint_global_step',
           'resolve_model_path']

_STEP_RE = re.compile(r'-(\d+)$')


def _checkpoint_step(prefix):
    match = _STEP_RE.search(prefix)
    return int(match.group(1)) if match else -1


def checkpoint_is_complete(prefix):
    """True if every tensor of checkpoint `prefix` reads back (a truncated .data file fails)."""
    if not glob.glob(prefix + '.index') or not glob.glob(prefix + '.data-*'):
        return False
    try:
        reader = tf.train.NewCheckpointReader(prefix)
        for name in reader.get_variable_to_shape_map():
            reader.get_tensor(name)
    except Exception:   # noqa: BLE001 - any read failure means "not usable"
        return False
    return True


def list_checkpoints(logdir):
    """Checkpoint prefixes in `logdir`, newest step first."""
    prefixes = {p[:-len('.index')] for p in glob.glob(os.path.join(logdir, '*.index'))}
    return sorted(prefixes, key=_checkpoint_step, reverse=True)


def latest_complete_checkpoint(logdir, log=None):
    """The newest checkpoint in `logdir` that reads back completely, or None.

    Incomplete ones (an interrupted save, a truncated copy) are skipped, and said so via `log`.
    """
    for prefix in list_checkpoints(logdir):
        if checkpoint_is_complete(prefix):
            return prefix
        if log is not None:
            log('Skipping incomplete or unreadable checkpoint {}'.format(prefix))
    return None


def checkpoint_global_step(prefix):
    """The `global_step` stored in checkpoint `prefix` (0 if it has none)."""
    reader = tf.train.NewCheckpointReader(prefix)
    for name in ('global_step', 'global_step/value'):
        if reader.has_tensor(name):
            return int(reader.get_tensor(name))
    return 0


def resolve_model_path(path):
    """What `--load` may name -> a loadable path.

    Accepts an `.npz`, a checkpoint prefix (`model-5000`), the `checkpoint` file, a `.index`/
    `.data-*` file of a checkpoint, or a log directory (its newest complete checkpoint).
    """
    if path.endswith('.npz'):
        if not os.path.isfile(path):
            raise FileNotFoundError('--load: no such file: {}'.format(path))
        return path
    if os.path.isdir(path):
        prefix = latest_complete_checkpoint(path)
        if prefix is None:
            raise FileNotFoundError('--load: directory {} holds no complete checkpoint.'.format(path))
        return prefix
    if os.path.basename(path) == 'checkpoint' and os.path.isfile(path):
        state = tf.train.get_checkpoint_state(os.path.dirname(path) or '.')
        if state is None or not state.model_checkpoint_path:
            raise FileNotFoundError('--load: {} names no checkpoint.'.format(path))
        prefix = state.model_checkpoint_path
        if not os.path.isabs(prefix):
            prefix = os.path.join(os.path.dirname(path), prefix)
        return prefix
    prefix = re.sub(r'\.(index|data-\d+-of-\d+|meta)$', '', path)
    if glob.glob(prefix + '.index'):
        return prefix
    raise FileNotFoundError('--load: {} is neither an .npz, a checkpoint, nor a log directory.'.format(path))
