"""The tensorpack callbacks that apply a `utils.lr_schedule.Schedule` step by step and line the
epochs up with it (the schedule itself is plain Python, importable without TensorFlow)."""
from utils.tf_compat import tf  # noqa: F401 - before tensorpack, which imports TensorFlow
from tensorpack.callbacks import Callback, HyperParamSetter

__all__ = ['StepLearningRate', 'EpochsAlignedToSteps', 'learning_rate_setters']


class StepLearningRate(HyperParamSetter):
    """Sets `learning_rate` to schedule.lr_after(global_step) before training and after every step
    (only when it changes): the same rate at each step whatever step the run started from."""

    def __init__(self, schedule):
        super().__init__('learning_rate')
        self._schedule = schedule

    def _get_value_to_set(self):
        value = self._schedule.lr_after(self.global_step)
        return None if value == self._last_value else value

    def _trigger_step(self):
        self.trigger()

    def _trigger_epoch(self):
        pass


class EpochsAlignedToSteps(Callback):
    """Makes epoch k end at global step k * STEPS_PER_EPOCH, and the last one at the schedule's last
    step: a run resumed from a step inside an epoch finishes that epoch first, so checkpoints,
    evaluations and the end fall on the same steps as in an uninterrupted run.

    tensorpack runs `trainer.loop.steps_per_epoch` steps per epoch, reading it after the callbacks'
    before_epoch; this sets it there for the epoch about to run.
    """

    _chief_only = False

    def __init__(self, schedule):
        self._schedule = schedule

    def _before_epoch(self):
        self.trainer.loop.steps_per_epoch = self._schedule.steps_in_epoch(self.epoch_num, self.global_step)


def learning_rate_setters(schedule):
    """The tensorpack callbacks that apply `schedule`: the rate of every step, and epochs that
    follow the global step."""
    return [StepLearningRate(schedule), EpochsAlignedToSteps(schedule)]
