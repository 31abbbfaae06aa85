"""Saving checkpoints during training so that a failed save stops the run and loses nothing.

tensorpack's ModelSaver logs a failed save ("Exception in ModelSaver!") and training goes on
without checkpoints; TensorFlow reports a file-size limit as OutOfRangeError, which the trainer
takes for the end of the data. `CheckpointSaver` instead removes what the failed save left,
retries once (logged), and then raises CheckpointSaveError, whose message names the file, the
cause and the free space. The previous checkpoint and the `checkpoint` file naming it are left
as they were: a rerun resumes from there.
"""
import glob
import os
import shutil
from datetime import datetime

from utils.tf_compat import tf  # before tensorpack, which imports TensorFlow
from tensorpack.callbacks import ModelSaver
from tensorpack.utils import logger

__all__ = ['CheckpointSaveError', 'CheckpointSaver', 'checkpoint_bytes', 'free_bytes', 'human_bytes',
           'remove_temporary_files']


class CheckpointSaveError(RuntimeError):
    """A checkpoint (or the graph file) could not be written; training stops."""


def human_bytes(count):
    for unit in ('B', 'KB', 'MB', 'GB'):
        if abs(count) < 1024 or unit == 'GB':
            return '{:.0f} {}'.format(count, unit) if unit == 'B' else '{:.1f} {}'.format(count, unit)
        count /= 1024.


def free_bytes(path):
    """Free bytes on the filesystem of `path` for an unprivileged writer, or None if unknown."""
    try:
        return shutil.disk_usage(path).free
    except OSError:
        return None


def checkpoint_bytes(variables):
    """The size of a checkpoint of `variables`: their values, without the small index file."""
    total = 0
    for var in variables:
        shape = var.shape.as_list()
        count = 1
        for dim in shape:
            count *= dim or 0
        total += count * var.dtype.base_dtype.size
    return total


# Files TensorFlow and tensorpack write under a temporary name and rename when complete.
_TEMPORARY_PATTERNS = ('*.tempstate*', '*_temp', '*_temp_*', 'checkpoint.tmp*', 'graph-*.meta.tmp*', '*.json.tmp')


def remove_temporary_files(logdir, prefix=None):
    """Remove the temporary files of interrupted writes in `logdir` (and, with `prefix`, every file
    of that checkpoint); returns the names removed."""
    patterns = list(_TEMPORARY_PATTERNS) + ([os.path.basename(prefix) + '.*'] if prefix else [])
    removed = []
    for pattern in patterns:
        for path in glob.glob(os.path.join(glob.escape(logdir), pattern)):
            try:
                if os.path.isdir(path):
                    shutil.rmtree(path)
                else:
                    os.remove(path)
            except FileNotFoundError:
                continue
            removed.append(os.path.basename(path))
    return sorted(set(removed))


def _cause(err, name):
    """The line of a (long, multi-line) TensorFlow error that names the file, else its last line."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    for line in lines:
        if name in line:
            return line
    return '{}: {}'.format(type(err).__name__, lines[-1] if lines else '')


class CheckpointSaver(ModelSaver):
    """A ModelSaver that stops training when it cannot write a checkpoint.

    At the start it warns when the log directory's disk cannot hold `max_to_keep + 1` checkpoints
    of this model (the saver deletes the oldest only after writing a new one).
    """

    RETRIES = 1
    _saved_step = None   # the step this saver last wrote

    def _setup_graph(self):
        super()._setup_graph()
        saved = {var for key in self.var_collections for var in tf.get_collection(key)}
        self.checkpoint_bytes = checkpoint_bytes(saved)

    def _before_train(self):
        needed = (self._max_to_keep + 1) * self.checkpoint_bytes
        free = free_bytes(self.checkpoint_dir)
        if free is not None and free < needed:
            logger.warn('{} has {} free, less than the {} that {} checkpoints of this model take ({} each); '
                        'training stops when a checkpoint cannot be written.'.format(
                            self.checkpoint_dir, human_bytes(free), human_bytes(needed), self._max_to_keep + 1,
                            human_bytes(self.checkpoint_bytes)))
        path = os.path.join(self.checkpoint_dir, 'graph-{}.meta'.format(datetime.now().strftime('%m%d-%H%M%S')))
        try:
            self.saver.export_meta_graph(path, collection_list=self.graph.get_all_collection_keys())
        except (OSError, tf.errors.OpError) as err:
            remove_temporary_files(self.checkpoint_dir)
            if os.path.exists(path):
                os.remove(path)
            raise self._error(path, err) from err

    def _trigger(self):
        step = self.global_step
        prefix = '{}-{}'.format(self.path, step)
        if step == self._saved_step:
            return   # saved already by this run (SIGTERM right after a periodic save)
        for attempt in range(self.RETRIES + 1):
            try:
                self.saver.save(tf.get_default_session(), self.path, global_step=step, write_meta_graph=False)
                logger.info('Model saved to {}.'.format(prefix))
                self._saved_step = step
                return
            except (OSError, tf.errors.OpError) as err:
                removed = remove_temporary_files(self.checkpoint_dir, prefix)
                if removed:
                    logger.warn('Removed what the failed save left: {}'.format(', '.join(removed)))
                if attempt < self.RETRIES:
                    logger.warn('Could not save checkpoint {} ({}); retrying once.'.format(
                        prefix, _cause(err, os.path.basename(prefix))))
                    continue
                raise self._error(prefix, err) from err

    def _error(self, path, err):
        free = free_bytes(self.checkpoint_dir)
        state = tf.train.get_checkpoint_state(self.checkpoint_dir)
        resume = ('a rerun with the same --logdir resumes from {}'.format(
            os.path.join(self.checkpoint_dir, state.model_checkpoint_path))
                  if state is not None and state.model_checkpoint_path else 'no checkpoint of this run is complete')
        return CheckpointSaveError(
            'Could not write {}: {}; {} free on {} (a checkpoint of this model takes {}). Free some space or '
            'choose another --logdir; {}.'.format(
                path, _cause(err, os.path.basename(path)), 'unknown space' if free is None else human_bytes(free),
                self.checkpoint_dir, human_bytes(self.checkpoint_bytes), resume))
