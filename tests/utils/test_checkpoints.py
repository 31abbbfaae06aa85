"""utils/checkpoints.py: the newest complete checkpoint, its step, and what --load may name."""
import os

import numpy as np
import pytest

from utils import checkpoints
from utils.tf_compat import tf


def _save_checkpoint(logdir, step, value):
    with tf.Graph().as_default():
        var = tf.get_variable('w', initializer=np.full([64, 64], value, np.float32))
        global_step = tf.train.get_or_create_global_step()
        saver = tf.train.Saver(max_to_keep=10)
        with tf.Session() as sess:
            sess.run(tf.global_variables_initializer())
            sess.run(tf.assign(global_step, step))
            assert sess.run(var)[0, 0] == value
            return saver.save(sess, os.path.join(logdir, 'model'), global_step=step)


def test_latest_complete_checkpoint_skips_a_truncated_one(tmp_path):
    older = _save_checkpoint(str(tmp_path), 100, 1.0)
    newer = _save_checkpoint(str(tmp_path), 200, 2.0)
    assert checkpoints.list_checkpoints(str(tmp_path)) == [newer, older]
    assert checkpoints.latest_complete_checkpoint(str(tmp_path)) == newer

    data_file = [f for f in os.listdir(tmp_path) if f.startswith('model-200.data')][0]
    path = tmp_path / data_file
    path.write_bytes(path.read_bytes()[:100])     # an interrupted copy
    skipped = []
    assert checkpoints.latest_complete_checkpoint(str(tmp_path), log=skipped.append) == older
    assert len(skipped) == 1 and 'model-200' in skipped[0]
    assert checkpoints.checkpoint_global_step(older) == 100


def test_no_checkpoint_in_an_empty_dir(tmp_path):
    assert checkpoints.latest_complete_checkpoint(str(tmp_path)) is None


def test_resolve_model_path_forms(tmp_path):
    prefix = _save_checkpoint(str(tmp_path), 7, 1.0)
    assert checkpoints.resolve_model_path(str(tmp_path)) == prefix
    assert checkpoints.resolve_model_path(prefix) == prefix
    assert checkpoints.resolve_model_path(prefix + '.index') == prefix
    assert os.path.samefile(checkpoints.resolve_model_path(str(tmp_path / 'checkpoint')) + '.index', prefix + '.index')
    npz = tmp_path / 'w.npz'
    np.savez(npz, w=np.zeros(3))
    assert checkpoints.resolve_model_path(str(npz)) == str(npz)


@pytest.mark.parametrize('bad', ['missing.npz', 'no/such/prefix'])
def test_resolve_model_path_errors_name_the_path(tmp_path, bad):
    with pytest.raises(FileNotFoundError, match='no such|neither'):
        checkpoints.resolve_model_path(str(tmp_path / bad))


def test_resolve_model_path_empty_dir(tmp_path):
    with pytest.raises(FileNotFoundError, match='no complete checkpoint'):
        checkpoints.resolve_model_path(str(tmp_path))
