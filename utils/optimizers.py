"""Optimizer wrappers of the model: gradient accumulation over steps, and dynamic loss scaling
for float16 training."""
from utils.tf_compat import tf  # must come before tensorpack

from tensorpack.tfutils.optimizer import ProxyOptimizer

__all__ = ['AccumGradOptimizer', 'LOSS_SCALE_COLLECTION', 'LOSS_SCALE_SCOPE', 'with_dynamic_loss_scaling',
           'loss_scale_step_tensors']


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
