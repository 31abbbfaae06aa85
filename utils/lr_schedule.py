"""The learning-rate plan of a run: the config's "total batch of 8" schedule in this run's steps
(`utils.lr_callbacks` applies it step by step and lines the epochs up with it).

Everything counts global steps, so a run resumed from a checkpoint at any step changes the
learning rate at the same steps and ends at the same step as an uninterrupted run.
"""
import math
from collections import namedtuple

__all__ = ['REFERENCE_TOTAL_BATCH', 'Schedule', 'compute_schedule']

# The learning rates and schedules in the config are written for a total batch of this many
# images per step (tensorpack: 8 GPUs x 1 image). Gradients are summed over towers and
# accumulation steps, so the model's optimizer divides the learning rate by it, and a run with
# fewer towers accumulates REFERENCE_TOTAL_BATCH // towers steps.
REFERENCE_TOTAL_BATCH = 8


class Schedule(namedtuple('Schedule', ['base_lr', 'init_lr', 'warmup_steps', 'decay_steps', 'last_step',
                                       'steps_per_epoch'])):
    """The learning-rate plan of one run, in this run's global steps.

    base_lr: the rate after warmup, before any decay.
    init_lr: the rate of the first step (the start of the linear warmup).
    warmup_steps: steps of the linear ramp from init_lr to base_lr.
    decay_steps: sorted steps after which the rate is multiplied by 0.1 (several at one step multiply).
    last_step: the global step at which training ends.
    steps_per_epoch: TRAIN.STEPS_PER_EPOCH; epoch k covers steps ((k - 1) * steps_per_epoch,
        k * steps_per_epoch], the last one cut at `last_step`.
    """

    __slots__ = ()

    def lr_after(self, step):
        """The rate of the step that follows `step` completed steps: warmup(step) * 0.1^k, k the
        decays at or before `step`; warmup(step) rises linearly from init_lr to base_lr."""
        decay = 0.1 ** sum(1 for boundary in self.decay_steps if boundary <= step)
        if step >= self.warmup_steps:
            return self.base_lr * decay
        return (step * 1. / self.warmup_steps * (self.base_lr - self.init_lr) + self.init_lr) * decay

    @property
    def max_epoch(self):
        return -(-self.last_step // self.steps_per_epoch)

    def announced(self):
        """[(step, rate)]: the rate in effect after each listed number of completed steps; the
        warmup ramps linearly between its first two entries (and scales with a decay inside it)."""
        points = sorted({0, min(self.warmup_steps, self.last_step)} |
                        {s for s in self.decay_steps if s < self.last_step})
        return [(step, self.lr_after(step)) for step in points]

    def starting_epoch(self, global_step):
        """The epoch that holds the step after `global_step` (1-based)."""
        return global_step // self.steps_per_epoch + 1

    def steps_in_epoch(self, epoch, global_step):
        """How many steps epoch `epoch` runs when it starts after `global_step` completed steps."""
        return max(min(epoch * self.steps_per_epoch, self.last_step) - global_step, 0)


def _steps_of_run(steps, factor):
    """A step count of the batch-8 schedule in this run's steps: the first step by which the run has
    seen at least as many images (a fraction of a step can't be run)."""
    return int(math.ceil(steps * factor - 1e-9))


def compute_schedule(*, base_lr, warmup_steps, warmup_init_lr, lr_schedule, steps_per_epoch, images_per_step):
    """Translate the config's "total batch of 8" schedule into this run's steps.

    `lr_schedule` is [decay1, decay2, ..., last] in steps of a total batch of 8 images. A run
    whose step sees `images_per_step` images (towers, i.e. GPUs or Horovod ranks, 1 on the CPU,
    times TRAIN.BATCH_SIZE_PER_GPU) takes 8 / images_per_step times as many steps, rounded up to
    whole steps. Each decay takes effect at its exact step and training ends at the last one
    (tensorpack's example rounds them down to epochs). Warmup is counted in this run's own steps
    and starts lower when more than 8 images share a step.

    Raises ValueError for a schedule this run cannot follow: one that ends before its first step,
    a decay before the first step, or two different decays of the config that fall on one step
    of this run (a stage would vanish).
    """
    if images_per_step < 1:
        raise ValueError('images_per_step must be at least 1, got {}'.format(images_per_step))
    if steps_per_epoch < 1:
        raise ValueError('TRAIN.STEPS_PER_EPOCH={} must be at least 1.'.format(steps_per_epoch))
    if warmup_steps < 0:
        raise ValueError('TRAIN.WARMUP={} must be >= 0.'.format(warmup_steps))
    factor = float(REFERENCE_TOTAL_BATCH) / images_per_step
    init_lr = warmup_init_lr * min(factor, 1.)
    last_step = _steps_of_run(lr_schedule[-1], factor)
    if last_step < 1:
        raise ValueError('TRAIN.LR_SCHEDULE={} ends before the first step; its last entry must be at least 1.'
                         .format(list(lr_schedule)))
    decays = list(lr_schedule[:-1])
    decay_steps = tuple(_steps_of_run(steps, factor) for steps in decays)
    if any(step < 1 for step in decay_steps):
        raise ValueError('TRAIN.LR_SCHEDULE={}: a decay at step {} would apply before training starts; give decays '
                         '>= 1.'.format(list(lr_schedule), min(decays)))
    for (a, step_a), (b, step_b) in zip(zip(decays, decay_steps), zip(decays[1:], decay_steps[1:])):
        if a != b and step_a == step_b and step_a < last_step:
            raise ValueError(
                'TRAIN.LR_SCHEDULE={}: the decays at {} and {} (steps of 8 images) both fall on step {} of this run '
                '({} image(s) per step), so the stage between them would vanish. Space them at least {:g} apart, '
                'or make them equal to decay by 0.01 at once.'.format(
                    list(lr_schedule), a, b, step_a, images_per_step, images_per_step / float(REFERENCE_TOTAL_BATCH)))
    return Schedule(base_lr=base_lr, init_lr=init_lr, warmup_steps=warmup_steps, decay_steps=decay_steps,
                    last_step=last_step, steps_per_epoch=steps_per_epoch)
