"""utils/optimizers.py: gradient accumulation (loss scaling: tests/test_amp.py)."""
import numpy as np
import pytest

from utils import optimizers
from utils.tf_compat import tf


def test_accum_grad_optimizer_applies_the_sum_every_kth_step():
    # cost = sum(c * x): every step's gradient is c, so after step 3k, x = 1 - lr * 3k * c exactly.
    steps, lr, c = 3, 0.5, np.array([1., 2.], np.float32)
    with tf.Graph().as_default():
        x = tf.get_variable('x', initializer=np.ones(2, np.float32))
        opt = optimizers.AccumGradOptimizer(tf.train.GradientDescentOptimizer(lr), steps)
        train_op = opt.minimize(tf.reduce_sum(c * x))
        names = sorted(v.op.name for v in tf.global_variables())
        assert names == ['AccumGrad/counter', 'x', 'x/AccumGrad']   # tensorpack's names: checkpoints carry over
        with tf.Session() as sess:
            sess.run(tf.global_variables_initializer())
            seen = []
            for _ in range(7):
                sess.run(train_op)
                seen.append(sess.run(x))
    expected = [1 - lr * steps * c * (step // steps) for step in range(1, 8)]
    np.testing.assert_array_equal(np.array(seen), np.array(expected))
    with pytest.raises(ValueError, match='steps must be at least 1'):
        optimizers.AccumGradOptimizer(tf.train.GradientDescentOptimizer(lr), 0)
