"""The learning-rate plan of a run: the config's "total batch of 8" schedule in this run's steps
and epochs, and the tensorpack callbacks that apply it."""
from collections import namedtuple

__all__ = ['REFERENCE_TOTAL_BATCH', 'Schedule', 'compute_schedule', 'learning_rate_setters']

# The learning rates and schedules in the config are written for a total batch of this many
# images per step (tensorpack: 8 GPUs x 1 image). Gradients are summed over towers and
# accumulation steps, so the model's optimizer divides the learning rate by it, and a run with
# fewer towers accumulates REFERENCE_TOTAL_BATCH // towers steps.
REFERENCE_TOTAL_BATCH = 8

Schedule = namedtuple('Schedule', ['warmup', 'epochs', 'max_epoch'])
Schedule.__doc__ = """The learning-rate plan of one run, as tensorpack's setters take it.

warmup: [(step, lr), ...] interpolated linearly, step-based.
epochs: [(epoch, lr), ...] set after the completion of each epoch.
max_epoch: int, the epoch after which training stops.
"""


def compute_schedule(*, base_lr, warmup_steps, warmup_init_lr, lr_schedule, steps_per_epoch, images_per_step):
    """Translate the config's "total batch of 8" schedule into this run's steps and epochs.

    `lr_schedule` is [decay1, decay2, ..., last] in steps of a total batch of 8 images. A run
    whose step sees `images_per_step` images (towers, i.e. GPUs or Horovod ranks, 1 on the CPU,
    times TRAIN.BATCH_SIZE_PER_GPU) takes 8 / images_per_step times as many steps; the decays land
    on epoch boundaries, as in tensorpack's example. Warmup is counted in this run's own steps and
    starts lower when more than 8 images share a step.

    The learning rate after `s` completed steps is warmup(s) * 0.1^k, where warmup(s) rises
    linearly from the initial rate to `base_lr` over `warmup_steps` (then stays there) and k
    counts the decay boundaries at or before step s. The two lists encode exactly that for
    tensorpack's two setters (`learning_rate_setters`): a decay that falls inside the warmup
    scales the rest of the ramp and is a point of the warmup list; the epoch list holds one
    entry per boundary from the end of warmup on. Every listed value takes effect.
    """
    if images_per_step < 1:
        raise ValueError('images_per_step must be at least 1, got {}'.format(images_per_step))
    if steps_per_epoch < 1:
        raise ValueError('TRAIN.STEPS_PER_EPOCH={} must be at least 1.'.format(steps_per_epoch))
    if warmup_steps < 0:
        raise ValueError('TRAIN.WARMUP={} must be >= 0.'.format(warmup_steps))
    factor = float(REFERENCE_TOTAL_BATCH) / images_per_step
    init_lr = warmup_init_lr * min(factor, 1.)
    decay_steps = [int(steps * factor // steps_per_epoch) * steps_per_epoch for steps in lr_schedule[:-1]]

    def lr_after(step):
        decay = 0.1 ** sum(1 for boundary in decay_steps if boundary <= step)
        if step >= warmup_steps:
            return base_lr * decay
        return (init_lr + (base_lr - init_lr) * step / warmup_steps) * decay

    # Linear between consecutive points; a decay inside the warmup is a jump between two of them.
    points = {0, warmup_steps}
    points.update(s for boundary in decay_steps if 0 < boundary <= warmup_steps for s in (boundary - 1, boundary))
    warmup = [(step, lr_after(step)) for step in sorted(points)]
    warmup_end_epoch = -(-warmup_steps // steps_per_epoch)   # the first boundary at or after the end of warmup
    epochs = sorted({warmup_end_epoch} | {boundary // steps_per_epoch for boundary in decay_steps
                                          if boundary // steps_per_epoch >= warmup_end_epoch})
    epochs = [(epoch, lr_after(epoch * steps_per_epoch)) for epoch in epochs]
    max_epoch = int(lr_schedule[-1] * factor // steps_per_epoch)
    if max_epoch < 1:
        raise ValueError(
            'TRAIN.LR_SCHEDULE ends at {} steps (x{:g} for {} image(s) per step) which is less than one epoch of '
            'TRAIN.STEPS_PER_EPOCH={}; lower STEPS_PER_EPOCH or lengthen the schedule.'
            .format(lr_schedule[-1], factor, images_per_step, steps_per_epoch))
    return Schedule(warmup, epochs, max_epoch)


def learning_rate_setters(schedule):
    """The two tensorpack callbacks that apply `schedule` to the graph's `learning_rate`."""
    from tensorpack.callbacks import ScheduledHyperParamSetter
    return [ScheduledHyperParamSetter('learning_rate', schedule.warmup, interp='linear', step_based=True),
            ScheduledHyperParamSetter('learning_rate', schedule.epochs)]
