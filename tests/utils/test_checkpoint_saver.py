"""utils/checkpoint_saver.py: a checkpoint that can't be written stops training, names the file, the
cause and the free space, leaves no temporary file, and leaves the previous checkpoint as the
resume point. The full disk is a small tmpfs where the test may mount one; the injected failures
(a file-size limit, reported by TensorFlow as OutOfRangeError) run everywhere."""
import os

import pytest

from tests.tf_helpers import train_tiny_model
from utils import checkpoint_saver, checkpoints, failures
from utils.checkpoint_saver import CheckpointSaveError, CheckpointSaver
from utils.tf_compat import tf

VARIABLE_SIZE = 150000   # float32: 600 KB per checkpoint


def _train(logdir, epochs):
    """A one-variable model of VARIABLE_SIZE floats, one step per epoch, a checkpoint after each epoch."""
    failures.fix_tensorpack_log_format()   # as train.py: tensorpack's "Training failed at global_step=" line
    train_tiny_model([CheckpointSaver(max_to_keep=3, checkpoint_dir=logdir)], steps_per_epoch=1, max_epoch=epochs,
                     size=VARIABLE_SIZE)


def _assert_model_1_is_the_resume_point(logdir):
    leftovers = [name for name in os.listdir(logdir) if 'tmp' in name or 'temp' in name or name.startswith('model-2')]
    assert leftovers == []
    assert checkpoints.latest_complete_checkpoint(logdir) == os.path.join(logdir, 'model-1')
    assert tf.train.get_checkpoint_state(logdir).model_checkpoint_path.endswith('model-1')


def test_a_full_disk_stops_training_and_keeps_the_previous_checkpoint(small_disk, log_messages):
    logdir = small_disk('1m')   # the graph and model-1 fit, model-2 does not
    if logdir is None:
        pytest.skip('cannot mount a tmpfs here; test_a_file_size_limit_stops_training injects the failure')
    with pytest.raises(CheckpointSaveError) as caught:
        _train(logdir, epochs=3)
    message = str(caught.value)
    assert message.startswith('Could not write {}/model-2: '.format(logdir))
    assert 'No space left on device' in message and ' free on {}'.format(logdir) in message
    assert 'resumes from {}/model-1'.format(logdir) in message
    assert any('retrying once' in m for m in log_messages)
    # the start-up warning: 4 checkpoints of 600 KB don't fit in 1 MB
    assert any('less than the 2.3 MB that 4 checkpoints of this model take (585.9 KB each)' in m for m in log_messages)
    _assert_model_1_is_the_resume_point(logdir)


def test_a_file_size_limit_stops_training(tmp_path, monkeypatch, log_messages):
    """TensorFlow reports EFBIG as OutOfRangeError, which tensorpack's loop takes for the end of the data."""
    logdir = str(tmp_path)
    save = tf.train.Saver.save
    calls = []

    def fail_from_the_second_save(self, sess, save_path, global_step=None, **kwargs):
        calls.append(global_step)
        if len(calls) == 1:
            return save(self, sess, save_path, global_step=global_step, **kwargs)
        partial = '{}-{}.data-00000-of-00001.tempstate42'.format(save_path, global_step)
        with open(partial, 'wb') as f:
            f.write(b'\0' * 1000)
        raise tf.errors.OutOfRangeError(None, None, '{}; File too large'.format(partial))

    monkeypatch.setattr(tf.train.Saver, 'save', fail_from_the_second_save)
    with pytest.raises(CheckpointSaveError, match=r'model-2\.data-00000-of-00001\.tempstate42; File too large'):
        _train(logdir, epochs=3)
    assert calls == [1, 2, 2]   # one retry, logged
    assert any('Could not save checkpoint {}/model-2'.format(logdir) in m and 'retrying once' in m
               for m in log_messages)
    _assert_model_1_is_the_resume_point(logdir)


def test_remove_temporary_files_keeps_complete_files(tmp_path):
    names = ['model-8.index', 'model-8.data-00000-of-00001', 'model-16.data-00000-of-00001.tempstate123',
             'checkpoint', 'checkpoint.tmp4a5b', 'stats.json', 'stats.json.tmp', 'graph-1206-051200.meta.tmp77',
             'graph-1206-051200.meta', 'model-160.index', 'log.log']
    for name in names:
        (tmp_path / name).write_text('x')
    removed = checkpoint_saver.remove_temporary_files(str(tmp_path))
    assert removed == ['checkpoint.tmp4a5b', 'graph-1206-051200.meta.tmp77',
                       'model-16.data-00000-of-00001.tempstate123', 'stats.json.tmp']
    removed = checkpoint_saver.remove_temporary_files(str(tmp_path), prefix=str(tmp_path / 'model-16'))
    assert removed == [] and (tmp_path / 'model-160.index').exists()
