"""The non-finite-loss watchdog: training stops at the first step with a NaN or inf loss, naming
the step and every loss (tolerating the steps that float16 loss scaling skips on purpose)."""
import re

import numpy as np

from utils.tf_compat import tf  # must come before tensorpack

from tensorpack.utils import logger

from utils.optimizers import loss_scale_step_tensors

__all__ = ['find_loss_tensors', 'describe_losses', 'check_losses_finite', 'make_nonfinite_loss_callback']

_LOSS_NAME_RE = re.compile(r'(^|/)[\w-]*(loss|cost)$')
_STATE_OPS = ('Variable', 'VariableV2', 'VarHandleOp', 'ReadVariableOp', 'Assign', 'AssignVariableOp')


def find_loss_tensors(graph):
    """Scalar float tensors of `graph` whose op names end in 'loss' or 'cost', sorted by name."""
    found = {}
    for op in graph.get_operations():
        if not _LOSS_NAME_RE.search(op.name) or len(op.outputs) != 1 or op.type in _STATE_OPS:
            continue
        if op.name.startswith(('EMA/', 'tower-pred')):   # moving averages and inference towers
            continue
        out = op.outputs[0]
        if out.dtype.is_floating and out.shape.ndims == 0:
            found[op.name] = out
    return [found[name] for name in sorted(found)]


def describe_losses(names, values):
    return ', '.join('{}={:.5g}'.format(n, float(v)) for n, v in zip(names, values))


def check_losses_finite(step, names, values, loss_scale_skipped=False, loss_scale=None):
    """Raise FloatingPointError naming the step and every loss if any loss is NaN or inf.

    With dynamic loss scaling (float16), a step whose gradients were not finite is skipped on
    purpose and the scale halved: that is tolerated (returns False after a warning) while the
    scale the step used is above its floor of 1. At the floor, halving can't help any more, so
    it raises; since every such step halves the scale, only ~15 in a row pass from 2**15.
    Returns True if the losses were finite.
    """
    values = np.asarray(values, dtype=np.float64)
    if np.all(np.isfinite(values)):
        return True
    if loss_scale_skipped and loss_scale is not None and loss_scale > 1:
        logger.warn('Step {}: non-finite loss ({}); loss scaling skipped the update and lowers the scale from '
                    '{:g}.'.format(step, describe_losses(names, values), loss_scale))
        return False
    floor = ' even with the loss scale at its floor of 1 (TRAIN.AMP)' if loss_scale_skipped else ''
    raise FloatingPointError(
        'Training stopped: non-finite loss at step {}{}: {}. Lower TRAIN.BASE_LR, lengthen TRAIN.WARMUP, '
        'or check the data.'.format(step, floor, describe_losses(names, values)))


def make_nonfinite_loss_callback():
    """A tensorpack callback that stops training at the first step with a NaN or inf loss."""
    from tensorpack.callbacks import Callback

    class StopOnNonFiniteLoss(Callback):
        """Fetches every loss each step; raises FloatingPointError naming the step and losses."""

        _chief_only = False

        def _setup_graph(self):
            self._tensors = find_loss_tensors(self.graph)
            self._names = [t.op.name for t in self._tensors]
            if not self._tensors:
                raise ValueError('No loss tensor found in the training graph to watch.')
            self._loss_scale_steps = loss_scale_step_tensors(self.graph)   # empty without float16 AMP

        def _before_run(self, _):
            return tf.train.SessionRunArgs(fetches=[self._tensors, self._loss_scale_steps])

        def _after_run(self, _, run_values):
            losses, loss_scale_steps = run_values.results
            skipped, scale = False, None
            if loss_scale_steps:
                skipped = not all(applied for applied, _ in loss_scale_steps)
                scale = min(float(used) for _, used in loss_scale_steps)
            check_losses_finite(self.global_step, self._names, losses, skipped, scale)

    return StopOnNonFiniteLoss()
