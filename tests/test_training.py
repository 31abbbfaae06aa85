"""utils/training.py: schedules, checkpoint discovery, the non-finite-loss watchdog."""
import os

import numpy as np
import pytest

from utils import training
from utils.tf_compat import tf


def _schedule(towers, **overrides):
    settings = dict(base_lr=0.01, warmup_steps=1000, warmup_init_lr=1e-5,
                    lr_schedule=[120000, 160000, 180000], steps_per_epoch=500, towers=towers)
    settings.update(overrides)
    return training.compute_schedule(**settings)


def test_schedule_for_two_ranks():
    # 2 towers take 8 / 2 = 4x the steps of the batch-8 schedule:
    # decays at 120000 * 4 / 500 = 960 and 160000 * 4 / 500 = 1280 epochs, end at 180000 * 4 / 500 = 1440.
    s = _schedule(2)
    assert s.warmup == [(0, 1e-5), (1000, 0.01)]
    assert s.epochs == [(2, 0.01), (960, pytest.approx(0.001)), (1280, pytest.approx(0.0001))]
    assert s.max_epoch == 1440


def test_schedule_for_eight_towers_is_the_config_itself():
    s = _schedule(8)
    assert s.epochs == [(2, 0.01), (240, pytest.approx(0.001)), (320, pytest.approx(0.0001))]
    assert s.max_epoch == 360


def test_schedule_for_sixteen_towers_halves_steps_and_warmup_start():
    s = _schedule(16)
    assert s.warmup[0] == (0, pytest.approx(5e-6))     # 1e-5 * 8 / 16
    assert s.epochs[1:] == [(120, pytest.approx(0.001)), (160, pytest.approx(0.0001))]
    assert s.max_epoch == 180


def test_schedule_for_cpu_counts_one_tower():
    # One tower: 8x the steps; warmup of 1000 steps ends after epoch 1000 / 500 = 2.
    s = _schedule(1, lr_schedule=[1000, 1500, 2000], steps_per_epoch=100)
    assert s.epochs == [(10, 0.01), (80, pytest.approx(0.001)), (120, pytest.approx(0.0001))]
    assert s.max_epoch == 160


def test_schedule_shorter_than_an_epoch_is_an_error():
    with pytest.raises(ValueError, match='STEPS_PER_EPOCH'):
        _schedule(8, lr_schedule=[10, 20, 30], steps_per_epoch=500)


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
    assert training.list_checkpoints(str(tmp_path)) == [newer, older]
    assert training.latest_complete_checkpoint(str(tmp_path)) == newer

    data_file = [f for f in os.listdir(tmp_path) if f.startswith('model-200.data')][0]
    path = tmp_path / data_file
    path.write_bytes(path.read_bytes()[:100])     # an interrupted copy
    skipped = []
    assert training.latest_complete_checkpoint(str(tmp_path), log=skipped.append) == older
    assert len(skipped) == 1 and 'model-200' in skipped[0]
    assert training.checkpoint_global_step(older) == 100


def test_no_checkpoint_in_an_empty_dir(tmp_path):
    assert training.latest_complete_checkpoint(str(tmp_path)) is None


def test_resolve_model_path_forms(tmp_path):
    prefix = _save_checkpoint(str(tmp_path), 7, 1.0)
    assert training.resolve_model_path(str(tmp_path)) == prefix
    assert training.resolve_model_path(prefix) == prefix
    assert training.resolve_model_path(prefix + '.index') == prefix
    assert os.path.samefile(training.resolve_model_path(str(tmp_path / 'checkpoint')) + '.index', prefix + '.index')
    npz = tmp_path / 'w.npz'
    np.savez(npz, w=np.zeros(3))
    assert training.resolve_model_path(str(npz)) == str(npz)


@pytest.mark.parametrize('bad', ['missing.npz', 'no/such/prefix'])
def test_resolve_model_path_errors_name_the_path(tmp_path, bad):
    with pytest.raises(FileNotFoundError, match='no such|neither'):
        training.resolve_model_path(str(tmp_path / bad))


def test_resolve_model_path_empty_dir(tmp_path):
    with pytest.raises(FileNotFoundError, match='no complete checkpoint'):
        training.resolve_model_path(str(tmp_path))


def test_find_loss_tensors_picks_scalar_losses_only():
    with tf.Graph().as_default() as graph:
        x = tf.placeholder(tf.float32, [None])
        tf.reduce_mean(x, name='rpn_losses/label_loss')
        tf.add(tf.reduce_sum(x), 1., name='total_cost')
        tf.identity(x, name='not_scalar_loss')
        tf.reduce_sum(x, name='something_else')
        names = [t.op.name for t in training.find_loss_tensors(graph)]
    assert names == ['rpn_losses/label_loss', 'total_cost']


def test_check_losses_finite_names_step_and_values():
    training.check_losses_finite(3, ['a', 'b'], [1.0, 2.0])
    with pytest.raises(FloatingPointError, match=r'step 17.*a=1.*total_cost=nan'):
        training.check_losses_finite(17, ['a', 'total_cost'], [1.0, float('nan')])
    with pytest.raises(FloatingPointError, match='inf'):
        training.check_losses_finite(1, ['a'], [float('inf')])
