"""Training-side helpers used by train.py: schedules, checkpoints to resume, loss watchdog,
and the Horovod trainer with its per-rank checks.

Everything here takes its settings as arguments so it can be tested without a model.
"""
import glob
import hashlib
import os
import re
from collections import namedtuple

import numpy as np

from utils.tf_compat import tf  # must come before tensorpack

from tensorpack.dataflow import ProxyDataFlow
from tensorpack.tfutils.optimizer import ProxyOptimizer
from tensorpack.utils import logger

Schedule = namedtuple('Schedule', ['warmup', 'epochs', 'max_epoch'])
Schedule.__doc__ = """The learning-rate plan of one run, as tensorpack's setters take it.

warmup: [(step, lr), ...] interpolated linearly, step-based.
epochs: [(epoch, lr), ...] set after the completion of each epoch.
max_epoch: int, the epoch after which training stops.
"""


def compute_schedule(*, base_lr, warmup_steps, warmup_init_lr, lr_schedule, steps_per_epoch, towers):
    """Translate the config's "total batch of 8" schedule into this run's steps and epochs.

    `lr_schedule` is [decay1, decay2, ..., last] in steps of a total batch of 8 images. A run
    with `towers` towers (GPUs or Horovod ranks; 1 on the CPU) takes 8 / towers times as many
    steps; the decays land on epoch boundaries, as in tensorpack's example. Warmup is counted in
    this run's own steps and starts lower when more than 8 towers share a step.

    The learning rate after `s` completed steps is warmup(s) * 0.1^k, where warmup(s) rises
    linearly from the initial rate to `base_lr` over `warmup_steps` (then stays there) and k
    counts the decay boundaries at or before step s. The two lists encode exactly that for
    tensorpack's two setters (`learning_rate_setters`): a decay that falls inside the warmup
    scales the rest of the ramp and is a point of the warmup list; the epoch list holds one
    entry per boundary from the end of warmup on. Every listed value takes effect.
    """
    if towers < 1:
        raise ValueError('towers must be at least 1, got {}'.format(towers))
    if steps_per_epoch < 1:
        raise ValueError('TRAIN.STEPS_PER_EPOCH={} must be at least 1.'.format(steps_per_epoch))
    if warmup_steps < 0:
        raise ValueError('TRAIN.WARMUP={} must be >= 0.'.format(warmup_steps))
    factor = 8. / towers
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
            'TRAIN.LR_SCHEDULE ends at {} steps (x{:g} for {} tower(s)) which is less than one epoch of '
            'TRAIN.STEPS_PER_EPOCH={}; lower STEPS_PER_EPOCH or lengthen the schedule.'
            .format(lr_schedule[-1], factor, towers, steps_per_epoch))
    return Schedule(warmup, epochs, max_epoch)


def learning_rate_setters(schedule):
    """The two tensorpack callbacks that apply `schedule` to the graph's `learning_rate`."""
    from tensorpack.callbacks import ScheduledHyperParamSetter
    return [ScheduledHyperParamSetter('learning_rate', schedule.warmup, interp='linear', step_based=True),
            ScheduledHyperParamSetter('learning_rate', schedule.epochs)]


# gradient accumulation -------------------------------------------------------------------
class AccumGradOptimizer(ProxyOptimizer):
    """Sums the gradients of `steps` consecutive steps and lets `opt` apply the sum once, in the
    last of them (every step that is a multiple of `steps`, counting from the first).

    Its variables are those of tensorpack's AccumGradOptimizer (a slot `<var>/AccumGrad` per
    variable and `AccumGrad/counter`), so checkpoints carry over. tensorpack's version decides
    whether to apply from a read of the counter that is not ordered after the counter's
    increment: a step may apply one step early or twice, at random. Under Horovod that makes
    the ranks drift apart; here the decision reads the incremented counter.
    """

    def __init__(self, opt, steps):
        if steps < 1:
            raise ValueError('AccumGradOptimizer: steps must be at least 1, got {}'.format(steps))
        super().__init__(opt, name='AccumGrad')
        self._steps = int(steps)

    def apply_gradients(self, grads_and_vars, global_step=None, name=None):
        pairs = [(grad, var) for grad, var in grads_and_vars if grad is not None]
        variables = [var for _, var in pairs]
        with tf.control_dependencies(None):   # state lives outside any tower's control context
            sums = [self._zeros_slot(var, 'accum', self._name) for var in variables]
            with tf.variable_scope(self._name), tf.device('/cpu:0'):
                counter = tf.Variable(0, name='counter', trainable=False, dtype=tf.int32)
        with tf.name_scope('AccumGradOptimizer'):
            added = [total.assign_add(grad) for total, (grad, _) in zip(sums, pairs)]
            with tf.control_dependencies(added):
                count = tf.identity(tf.assign_add(counter, 1, name='update_counter'), name='count')

            def apply_and_reset():
                applied = self._opt.apply_gradients(list(zip(sums, variables)))
                with tf.control_dependencies([applied]):
                    return tf.group(*[total.assign(tf.zeros_like(total)) for total in sums])

            with tf.control_dependencies([count]):
                op = tf.cond(tf.equal(count % self._steps, 0), apply_and_reset, tf.no_op)
            step_ops = [] if global_step is None else [tf.assign_add(global_step, 1)]
            return tf.group(op, *step_ops, name=name or 'cond_update_grad')


# mixed precision: dynamic loss scaling ---------------------------------------------------
# Per apply_gradients call (one per tower): a bool "this step's gradients were finite and got
# applied" and the float32 loss scale the step used. The loss watchdog fetches both.
LOSS_SCALE_COLLECTION = 'amp_loss_scale_steps'
LOSS_SCALE_SCOPE = 'AMP'   # its variables: AMP/current_loss_scale, AMP/good_steps


def with_dynamic_loss_scaling(opt):
    """`opt` wrapped in TensorFlow's MixedPrecisionLossScaleOptimizer with a dynamic loss scale
    (starts at 2**15, halves on a step with non-finite gradients, which it skips, and doubles
    after 2000 finite steps; never below 1), for float16 training.

    Wrap the outermost optimizer (around AccumGradOptimizer): a skipped step then neither
    accumulates nor counts. The scale's two variables are float32/int64 scalars under 'AMP/';
    checkpoints without them (float32 runs) start them at their initial values.
    """
    mixed_precision = tf.mixed_precision

    class ReportingDynamicLossScale(mixed_precision.DynamicLossScale):
        def update(self, grads):
            with tf.control_dependencies([g for g in grads if g is not None]):
                scale_used = tf.identity(self(), name='loss_scale_used')
            # The update runs after `scale_used` is read, so that is the scale this step used.
            with tf.control_dependencies([scale_used]):
                update_op, should_apply = super().update(grads)
            tf.add_to_collection(LOSS_SCALE_COLLECTION, should_apply)
            tf.add_to_collection(LOSS_SCALE_COLLECTION, scale_used)
            return update_op, should_apply

    with tf.name_scope(LOSS_SCALE_SCOPE + '/'):
        loss_scale = ReportingDynamicLossScale()
        tf.summary.scalar('loss_scale-summary', loss_scale())
    return mixed_precision.MixedPrecisionLossScaleOptimizer(opt, loss_scale)


def loss_scale_step_tensors(graph):
    """[(applied bool tensor, loss scale used float32 tensor), ...] of `graph`, one per tower."""
    items = graph.get_collection(LOSS_SCALE_COLLECTION)
    return list(zip(items[0::2], items[1::2]))


# checkpoints -----------------------------------------------------------------------------
_STEP_RE = re.compile(r'-(\d+)$')


def _checkpoint_step(prefix):
    match = _STEP_RE.search(prefix)
    return int(match.group(1)) if match else -1


def checkpoint_is_complete(prefix):
    """True if every tensor of checkpoint `prefix` reads back (a truncated .data file fails)."""
    if not glob.glob(prefix + '.index') or not glob.glob(prefix + '.data-*'):
        return False
    try:
        reader = tf.train.NewCheckpointReader(prefix)
        for name in reader.get_variable_to_shape_map():
            reader.get_tensor(name)
    except Exception:   # noqa: BLE001 - any read failure means "not usable"
        return False
    return True


def list_checkpoints(logdir):
    """Checkpoint prefixes in `logdir`, newest step first."""
    prefixes = {p[:-len('.index')] for p in glob.glob(os.path.join(logdir, '*.index'))}
    return sorted(prefixes, key=_checkpoint_step, reverse=True)


def latest_complete_checkpoint(logdir, log=None):
    """The newest checkpoint in `logdir` that reads back completely, or None.

    Incomplete ones (an interrupted save, a truncated copy) are skipped, and said so via `log`.
    """
    for prefix in list_checkpoints(logdir):
        if checkpoint_is_complete(prefix):
            return prefix
        if log is not None:
            log('Skipping incomplete or unreadable checkpoint {}'.format(prefix))
    return None


def checkpoint_global_step(prefix):
    """The `global_step` stored in checkpoint `prefix` (0 if it has none)."""
    reader = tf.train.NewCheckpointReader(prefix)
    for name in ('global_step', 'global_step/value'):
        if reader.has_tensor(name):
            return int(reader.get_tensor(name))
    return 0


def resolve_model_path(path):
    """What `--load` may name -> a loadable path.

    Accepts an `.npz`, a checkpoint prefix (`model-5000`), the `checkpoint` file, a `.index`/
    `.data-*` file of a checkpoint, or a log directory (its newest complete checkpoint).
    """
    if path.endswith('.npz'):
        if not os.path.isfile(path):
            raise FileNotFoundError('--load: no such file: {}'.format(path))
        return path
    if os.path.isdir(path):
        prefix = latest_complete_checkpoint(path)
        if prefix is None:
            raise FileNotFoundError('--load: directory {} holds no complete checkpoint.'.format(path))
        return prefix
    if os.path.basename(path) == 'checkpoint' and os.path.isfile(path):
        state = tf.train.get_checkpoint_state(os.path.dirname(path) or '.')
        if state is None or not state.model_checkpoint_path:
            raise FileNotFoundError('--load: {} names no checkpoint.'.format(path))
        prefix = state.model_checkpoint_path
        if not os.path.isabs(prefix):
            prefix = os.path.join(os.path.dirname(path), prefix)
        return prefix
    prefix = re.sub(r'\.(index|data-\d+-of-\d+|meta)$', '', path)
    if glob.glob(prefix + '.index'):
        return prefix
    raise FileNotFoundError('--load: {} is neither an .npz, a checkpoint, nor a log directory.'.format(path))


# loss watchdog ---------------------------------------------------------------------------
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


# Horovod: per-rank checks and the trainer -----------------------------------------------
# One stdout line per rank and moment; tests and people compare these across ranks.
FINGERPRINT_LOG_RE = re.compile(
    r'Rank (?P<rank>\d+) model variables (?P<when>[\w-]+): fingerprint (?P<fingerprint>[0-9a-f]+) '
    r'over (?P<count>\d+) variables')
FIRST_IMAGES_LOG_RE = re.compile(r'Rank (?P<rank>\d+) first training images: (?P<names>.*)$')


def variables_fingerprint(named_values):
    """A 16-hex-digit digest of [(name, numpy array), ...], independent of their order.

    Equal fingerprints mean the same names, dtypes, shapes and bits (short of a sha1 collision).
    """
    digest = hashlib.sha1()
    for name, value in sorted(named_values, key=lambda item: item[0]):
        value = np.ascontiguousarray(value)
        digest.update('{}|{}|{}|'.format(name, value.dtype.str, value.shape).encode('utf-8'))
        digest.update(value.tobytes())
    return digest.hexdigest()[:16]


def model_variables():
    """The trainable variables and the other model state a checkpoint carries (e.g. BatchNorm's
    moving statistics), without optimizer slots, counters or callbacks' summaries."""
    by_name = {v.name: v for v in tf.trainable_variables() + tf.model_variables()}
    return [by_name[name] for name in sorted(by_name)]


def log_variables_fingerprint(sess, variables, rank, when):
    """Fetch `variables` and log their fingerprint as one FINGERPRINT_LOG_RE line; returns it."""
    values = sess.run(variables)
    fingerprint = variables_fingerprint(zip([v.op.name for v in variables], values))
    logger.info('Rank {} model variables {}: fingerprint {} over {} variables'.format(
        rank, when, fingerprint, len(variables)))
    return fingerprint


class LogFirstDatapoints(ProxyDataFlow):
    """Passes `ds` through unchanged and logs `describe(datapoint)` of its first `count`
    datapoints, once per process, as one FIRST_IMAGES_LOG_RE line (shows what each rank reads)."""

    def __init__(self, ds, describe, count, rank):
        super().__init__(ds)
        self._describe = describe
        self._count = count
        self._rank = rank
        self._seen = []
        self._logged = False

    def _log(self):
        self._logged = True
        logger.info('Rank {} first training images: {}'.format(self._rank, ' '.join(self._seen)))

    def __iter__(self):
        for datapoint in self.ds:
            if not self._logged:
                self._seen.append(str(self._describe(datapoint)))
                if len(self._seen) >= self._count:
                    self._log()
            yield datapoint
        if not self._logged:
            self._log()


def make_fingerprint_callback(rank):
    """A callback run by every rank: logs the model variables' fingerprint at the end of the last
    epoch (before the trainer's epoch-end broadcast, so it shows the ranks stayed in step) and
    after training."""
    from tensorpack.callbacks import Callback

    class LogVariablesFingerprint(Callback):
        _chief_only = False

        def _setup_graph(self):
            self._variables = model_variables()

        def _after_epoch(self):
            if self.epoch_num == self.trainer.max_epoch:
                log_variables_fingerprint(self.trainer.sess, self._variables, rank, 'last-epoch-before-broadcast')

        def _after_train(self):
            log_variables_fingerprint(self.trainer.sess, self._variables, rank, 'after-training')

    return LogVariablesFingerprint()


# The replicated trainer: one process, one copy of the model per tower ------------------------
TOWER_FINGERPRINT_LOG_RE = re.compile(
    r'Tower (?P<tower>\d+) model variables (?P<when>[\w-]+): fingerprint (?P<fingerprint>[0-9a-f]+) '
    r'over (?P<count>\d+) variables')


def variables_by_tower(variables, towers):
    """{tower: [(name without the tower prefix, variable), ...]} for the replicated trainer, where
    tower 0 owns the unprefixed variables and tower k > 0 its copies under 'tower<k>/'."""
    prefixes = {'tower{}/'.format(k): k for k in range(1, towers)}
    grouped = {k: [] for k in range(towers)}
    for var in variables:
        name = var.op.name
        tower = prefixes.get(name.split('/', 1)[0] + '/', 0)
        grouped[tower].append((name[len('tower{}/'.format(tower)):] if tower else name, var))
    return grouped


def make_tower_fingerprint_callback(towers):
    """A callback for the replicated trainer: at the end of the last epoch (before the trainer's
    epoch-end copy of tower 0's variables to the others) logs each tower's fingerprint as one
    TOWER_FINGERPRINT_LOG_RE line; equal lines show the summed gradients kept the towers in step."""
    from tensorpack.callbacks import Callback

    class LogTowerFingerprints(Callback):
        def _setup_graph(self):
            self._grouped = variables_by_tower(model_variables(), towers)

        def _after_epoch(self):
            if self.epoch_num != self.trainer.max_epoch:
                return
            for tower, named in sorted(self._grouped.items()):
                values = self.trainer.sess.run([var for _, var in named])
                fingerprint = variables_fingerprint(zip([name for name, _ in named], values))
                logger.info('Tower {} model variables last-epoch-before-broadcast: fingerprint {} over {} variables'
                            .format(tower, fingerprint, len(named)))

    return LogTowerFingerprints()


def broadcast_from_rank0(value, name):
    """Rank 0's int `value`, returned on every Horovod rank (`name` must be the same on all).

    Runs before the trainer, in a graph of its own, with a session configured as the trainer's
    will be (tensorpack's defaults, this rank's GPU only): a session seeing all GPUs first would
    break the one-GPU-per-process setup.
    """
    import horovod.tensorflow as hvd
    from utils.tf_compat import session_config

    config = session_config()
    config.gpu_options.visible_device_list = str(hvd.local_rank())
    with tf.Graph().as_default():
        with tf.device('/cpu:0'):
            result = hvd.broadcast(tf.constant(int(value), dtype=tf.int64), root_rank=0, name=name)
        with tf.Session(config=config) as sess:
            return int(sess.run(result))


def make_horovod_trainer(average):
    """tensorpack's HorovodTrainer (summed gradients unless `average`), with an `initialize`
    that works on TF 2.

    tensorpack 0.11's own `initialize` calls `tf.global_variables`, which TF 2's top-level
    module lacks; this one does the same through tf.compat.v1: pin the process to GPU
    `local_rank` (CPU-only TensorFlow ignores it), create the session, run the session init on
    rank 0, broadcast rank 0's variables. Before the broadcast every rank logs the fingerprint
    of its model variables, so a run shows the ranks did start apart.
    """
    import multiprocessing as mp

    from tensorpack.tfutils.sesscreate import NewSessionCreator
    from tensorpack.train import HorovodTrainer

    class CheckedHorovodTrainer(HorovodTrainer):
        def initialize(self, session_creator, session_init):
            # Created last so that they cover the variables callbacks have made.
            self._num_global_variables = len(tf.global_variables())
            self._broadcast_op = self.hvd.broadcast_global_variables(0)
            variables = model_variables()
            if not isinstance(session_creator, NewSessionCreator):
                raise ValueError('HorovodTrainer needs a NewSessionCreator, got {}'.format(type(session_creator)))
            # One GPU per process (only possible before anything touched CUDA); ignored without GPUs.
            session_creator.config.gpu_options.visible_device_list = str(self._local_rank)
            session_creator.config.inter_op_parallelism_threads = max(mp.cpu_count() // self.hvd.local_size(), 1)
            # tensorpack's base initialize, skipping HorovodTrainer's: the session, then rank 0's init
            super(HorovodTrainer, self).initialize(session_creator, session_init)
            log_variables_fingerprint(self.sess, variables, self._rank, 'after-init-before-broadcast')
            logger.info('Rank {}: broadcasting rank 0\'s {} global variables ...'.format(
                self._rank, self._num_global_variables))
            self.sess.run(self._broadcast_op)

    return CheckedHorovodTrainer(average=average)
