"""utils/loss_watchdog.py: finding the losses and stopping at a non-finite one (loss scaling: tests/test_amp.py)."""
import pytest

from utils import loss_watchdog
from utils.tf_compat import tf


def test_find_loss_tensors_picks_scalar_losses_only():
    with tf.Graph().as_default() as graph:
        x = tf.placeholder(tf.float32, [None])
        tf.reduce_mean(x, name='rpn_losses/label_loss')
        tf.add(tf.reduce_sum(x), 1., name='total_cost')
        tf.identity(x, name='not_scalar_loss')
        tf.reduce_sum(x, name='something_else')
        names = [t.op.name for t in loss_watchdog.find_loss_tensors(graph)]
    assert names == ['rpn_losses/label_loss', 'total_cost']


def test_check_losses_finite_names_step_and_values():
    loss_watchdog.check_losses_finite(3, ['a', 'b'], [1.0, 2.0])
    with pytest.raises(FloatingPointError, match=r'step 17.*a=1.*total_cost=nan'):
        loss_watchdog.check_losses_finite(17, ['a', 'total_cost'], [1.0, float('nan')])
    with pytest.raises(FloatingPointError, match='inf'):
        loss_watchdog.check_losses_finite(1, ['a'], [float('inf')])
