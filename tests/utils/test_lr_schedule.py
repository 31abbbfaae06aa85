"""utils/lr_schedule.py: the schedule in this run's steps and epochs, and the setters applying it."""
import numpy as np
import pytest

from tests.tf_helpers import train_tiny_model
from utils import lr_callbacks, lr_schedule
from utils.tf_compat import tf


def _schedule(images_per_step, **overrides):
    settings = dict(base_lr=0.01, warmup_steps=1000, warmup_init_lr=1e-5,
                    lr_schedule=[120000, 160000, 180000], steps_per_epoch=500, images_per_step=images_per_step)
    settings.update(overrides)
    return lr_schedule.compute_schedule(**settings)


def test_schedule_for_two_ranks():
    # 2 towers take 8 / 2 = 4x the steps of the batch-8 schedule: decays after 480000 and 640000 steps
    # (the ends of epochs 960 and 1280 of 500 steps), end after 720000 steps = 1440 epochs.
    s = _schedule(2)
    assert s.decay_steps == (480000, 640000) and s.last_step == 720000 and s.max_epoch == 1440
    assert s.announced() == [(0, 1e-5), (1000, 0.01), (480000, pytest.approx(0.001)),
                             (640000, pytest.approx(0.0001))]


def test_schedule_for_eight_towers_is_the_config_itself():
    s = _schedule(8)
    assert s.decay_steps == (120000, 160000) and s.last_step == 180000 and s.max_epoch == 360


def test_schedule_for_sixteen_towers_halves_steps_and_warmup_start():
    s = _schedule(16)
    assert s.init_lr == pytest.approx(5e-6)     # 1e-5 * 8 / 16
    assert s.decay_steps == (60000, 80000) and s.max_epoch == 180


def test_schedule_for_cpu_counts_one_tower():
    s = _schedule(1, lr_schedule=[1000, 1500, 2000], steps_per_epoch=100)
    assert s.decay_steps == (8000, 12000) and s.last_step == 16000 and s.max_epoch == 160


def test_decays_and_the_end_fall_on_their_exact_steps():
    # Two images per step: [2, 3, 4] steps of 8 images are steps 8, 12, 16 of this run. tensorpack's
    # example rounds decays down to epochs of 8 steps: both at step 8, and the 0.001 stage is lost.
    s = _schedule(2, lr_schedule=[2, 3, 4], steps_per_epoch=8, warmup_steps=0)
    assert s.decay_steps == (8, 12) and s.last_step == 16 and s.max_epoch == 2
    assert s.announced() == [(0, 0.01), (8, pytest.approx(0.001)), (12, pytest.approx(0.0001))]
    # three images per step: 8 * 5 / 3 = 13.3 steps: the decay comes once 40 images were seen, after step 14
    s = _schedule(3, lr_schedule=[5, 6, 7], steps_per_epoch=4, warmup_steps=0)
    assert s.decay_steps == (14, 16) and s.last_step == 19 and s.max_epoch == 5
    # a schedule shorter than an epoch runs one short epoch
    s = _schedule(8, lr_schedule=[10, 20, 30], steps_per_epoch=500)
    assert s.last_step == 30 and s.max_epoch == 1


@pytest.mark.parametrize('lr_schedule, images_per_step, message', [
    ([1, 2, 0], 8, 'ends before the first step'),
    ([0, 2, 4], 8, 'a decay at step 0 would apply before training starts'),
    ([1, 2, 3], 16, r'the decays at 1 and 2 \(steps of 8 images\) both fall on step 1 of this run'),
])
def test_a_schedule_that_cannot_be_followed_is_an_error(lr_schedule, images_per_step, message):
    with pytest.raises(ValueError, match=message):
        _schedule(images_per_step, lr_schedule=lr_schedule, steps_per_epoch=2, warmup_steps=0)


def test_steps_per_epoch_below_one_is_a_clear_error():
    for steps_per_epoch in (0, -5):
        with pytest.raises(ValueError, match='TRAIN.STEPS_PER_EPOCH={} must be at least 1'.format(steps_per_epoch)):
            _schedule(8, steps_per_epoch=steps_per_epoch)


def train_and_record(setters, steps_per_epoch, max_epoch, starting_epoch=1, session_init=None, extra=()):
    """Train a one-variable model with `setters`; returns ([(global step, learning rate of that step)],
    [global step at the end of each epoch])."""
    from tensorpack.callbacks import Callback

    class Record(Callback):
        def __init__(self):
            self.steps, self.epoch_ends = [], []

        def _setup_graph(self):
            self._lr = self.graph.get_tensor_by_name('learning_rate:0')

        def _before_run(self, _):
            return tf.train.SessionRunArgs(fetches=self._lr)

        def _after_run(self, _, run_values):
            self.steps.append((self.global_step, float(run_values.results)))   # counted already

        def _after_epoch(self):
            self.epoch_ends.append(self.global_step)

    record = Record()
    train_tiny_model(list(setters) + [record] + list(extra), steps_per_epoch=steps_per_epoch, max_epoch=max_epoch,
                     starting_epoch=starting_epoch, session_init=session_init)
    return record.steps, record.epoch_ends


def test_epoch_aligned_schedules_keep_the_rates_of_the_example():
    """Where every boundary is a whole number of epochs, each step runs at the rate tensorpack's
    example sets with its two setters (linear step-based warmup, then epoch-based values)."""
    from tensorpack.callbacks import ScheduledHyperParamSetter
    base_lr, init_lr, warmup, steps_per_epoch = 0.01, 0.001, 7, 5
    schedule = lr_schedule.compute_schedule(base_lr=base_lr, warmup_steps=warmup, warmup_init_lr=init_lr,
                                            lr_schedule=[15, 20, 25], steps_per_epoch=steps_per_epoch,
                                            images_per_step=8)
    example = [ScheduledHyperParamSetter('learning_rate', [(0, init_lr), (warmup, base_lr)], interp='linear',
                                         step_based=True),
               ScheduledHyperParamSetter('learning_rate', [(2, base_lr), (3, base_lr * 0.1), (4, base_lr * 0.01)])]
    expected, _ = train_and_record(example, steps_per_epoch, max_epoch=5)
    values, _ = train_and_record(lr_callbacks.learning_rate_setters(schedule), steps_per_epoch, schedule.max_epoch)
    assert [step for step, _ in values] == list(range(1, 26))
    np.testing.assert_allclose([v for _, v in values], [v for _, v in expected], rtol=1e-6)


def test_a_resumed_run_has_the_learning_rate_of_every_step_of_an_uninterrupted_one(tmp_path):
    """Killed after step 13, inside an epoch of 6 steps; decays after steps 16 and 24, the end at 32:
    none of them is an epoch boundary. The resumed run finishes the epoch that holds step 14 first."""
    from tensorpack.callbacks import Callback
    from tensorpack.tfutils import SaverRestore

    from utils.checkpoint_saver import CheckpointSaver
    from utils.checkpoints import latest_complete_checkpoint

    schedule = lr_schedule.compute_schedule(base_lr=0.01, warmup_steps=5, warmup_init_lr=0.001,
                                            lr_schedule=[2, 3, 4], steps_per_epoch=6, images_per_step=1)
    assert (schedule.decay_steps, schedule.last_step, schedule.max_epoch) == ((16, 24), 32, 6)

    def run(logdir, **kwargs):
        return train_and_record(lr_callbacks.learning_rate_setters(schedule), 6, schedule.max_epoch, **kwargs)

    uninterrupted, uninterrupted_epochs = run(str(tmp_path / 'whole'))

    class KillAfterStep13(Callback):
        """Saves a checkpoint after step 13 and stops, as train.py does on SIGTERM."""

        def __init__(self, saver):
            self._saver = saver

        def _trigger_step(self):
            if self.global_step == 13:
                self._saver.trigger()
                raise KeyboardInterrupt

    saver = CheckpointSaver(checkpoint_dir=str(tmp_path / 'killed'))
    with pytest.raises(KeyboardInterrupt):
        run(None, extra=[saver, KillAfterStep13(saver)])
    checkpoint = latest_complete_checkpoint(str(tmp_path / 'killed'))
    assert checkpoint.endswith('model-13')
    resumed, resumed_epochs = run(None, starting_epoch=schedule.starting_epoch(13),
                                  session_init=SaverRestore(checkpoint))

    assert [step for step, _ in resumed] == list(range(14, 33))
    assert resumed == uninterrupted[13:]
    assert resumed_epochs == [18, 24, 30, 32] and uninterrupted_epochs == [6, 12, 18, 24, 30, 32]
    ramp = [0.001 + 0.009 * s / 5 for s in range(5)]
    np.testing.assert_allclose([v for _, v in uninterrupted], ramp + [0.01] * 11 + [0.001] * 8 + [0.0001] * 8,
                               rtol=1e-6)
