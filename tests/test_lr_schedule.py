"""utils/lr_schedule.py: the schedule in this run's steps and epochs, and the setters applying it."""
import numpy as np
import pytest

from utils import lr_schedule
from utils.tf_compat import tf


def _schedule(images_per_step, **overrides):
    settings = dict(base_lr=0.01, warmup_steps=1000, warmup_init_lr=1e-5,
                    lr_schedule=[120000, 160000, 180000], steps_per_epoch=500, images_per_step=images_per_step)
    settings.update(overrides)
    return lr_schedule.compute_schedule(**settings)


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


def test_steps_per_epoch_below_one_is_a_clear_error():
    for steps_per_epoch in (0, -5):
        with pytest.raises(ValueError, match='TRAIN.STEPS_PER_EPOCH={} must be at least 1'.format(steps_per_epoch)):
            _schedule(8, steps_per_epoch=steps_per_epoch)


def learning_rates_in_effect(schedule, steps_per_epoch):
    """Train a one-variable model with tensorpack and the setters train.py uses; the learning
    rate each step ran with, as read in that step."""
    from tensorpack import ModelDesc, QueueInput, SimpleTrainer, TrainConfig, launch_train_with_config
    from tensorpack.callbacks import Callback
    from tensorpack.dataflow import DataFromList

    class OneVariable(ModelDesc):
        def inputs(self):
            return [tf.TensorSpec([], tf.float32, 'x')]

        def build_graph(self, x):
            weight = tf.get_variable('w', [], initializer=tf.zeros_initializer())
            return tf.square(weight - x, name='cost')

        def optimizer(self):
            lr = tf.get_variable('learning_rate', initializer=1.0, trainable=False)
            return tf.train.GradientDescentOptimizer(lr)

    class RecordLearningRate(Callback):
        def __init__(self):
            self.values = []

        def _setup_graph(self):
            self._lr = self.graph.get_tensor_by_name('learning_rate:0')

        def _before_run(self, _):
            return tf.train.SessionRunArgs(fetches=self._lr)

        def _after_run(self, _, run_values):
            self.values.append(float(run_values.results))

    record = RecordLearningRate()
    queue_input = QueueInput(DataFromList([[np.float32(1.)]], shuffle=False))
    config = TrainConfig(model=OneVariable(), data=queue_input, monitors=[],
                         callbacks=lr_schedule.learning_rate_setters(schedule) + [record],
                         steps_per_epoch=steps_per_epoch, max_epoch=schedule.max_epoch)
    with tf.Graph().as_default():
        launch_train_with_config(config, SimpleTrainer())
    queue_input.thread.join(timeout=30)
    return record.values


@pytest.mark.parametrize('warmup_steps', [5, 7])
def test_every_announced_learning_rate_takes_effect(warmup_steps):
    # One tower, 5 steps per epoch, schedule [1, 2, 3] x 8 = steps 8, 16, 24: decays at the ends of
    # epochs 1 (8 // 5) and 3 (16 // 5), i.e. after steps 5 and 15; 4 epochs. Warmup 0.001 -> 0.01.
    # warmup 5: it ends exactly where the first decay starts (the same epoch, as in the issue);
    # warmup 7: the first decay falls inside it and scales the rest of the ramp by 0.1.
    schedule = lr_schedule.compute_schedule(base_lr=0.01, warmup_steps=warmup_steps, warmup_init_lr=0.001,
                                         lr_schedule=[1, 2, 3], steps_per_epoch=5, images_per_step=1)
    ramp = [0.001 + 0.009 * s / warmup_steps for s in range(warmup_steps)]
    expected = ramp[:5] + [r * 0.1 for r in ramp[5:]]
    expected += [0.001] * (15 - len(expected)) + [0.0001] * 5   # steps 1..20, decayed after steps 5 and 15
    values = learning_rates_in_effect(schedule, steps_per_epoch=5)
    np.testing.assert_allclose(values, expected, rtol=1e-6)
    # and each announced epoch value is the one in effect right after that epoch
    for epoch, value in schedule.epochs:
        if epoch < schedule.max_epoch:
            assert values[epoch * 5] == pytest.approx(value, rel=1e-6)
