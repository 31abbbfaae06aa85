"""Tests of modeling/variable_reuse.py: a layer called again in one scope shares its variables,
and every new graph gets its own, also one created where a freed graph lived."""
import gc

from utils.tf_compat import tf

from modeling.model_rpn import rpn_head
from modeling.variable_reuse import reuse_variables_when_called_again


@reuse_variables_when_called_again
def _scaled(x):
    return x * tf.get_variable('scale', [], initializer=tf.ones_initializer())


def test_second_call_in_a_scope_shares_the_first_ones_variables():
    with tf.Graph().as_default():
        with tf.variable_scope('a'):
            _scaled(tf.ones([2]))
            _scaled(tf.ones([2]))
        with tf.variable_scope('b'):
            _scaled(tf.ones([2]))
        assert sorted(v.op.name for v in tf.global_variables()) == ['a/scale', 'b/scale']


def _rpn_head_variables_in_a_new_graph():
    with tf.Graph().as_default() as graph:
        rpn_head('rpn', tf.zeros([1, 4, 4, 8]), 8, 3, 'NHWC')
        return id(graph), len(tf.global_variables())


def test_each_new_graph_gets_its_variables_also_at_a_freed_graphs_address():
    """CPython puts a new graph where a freed one lived (as the model tests' graphs do, one per
    test); keyed by address, the head took the new graph for the old one and found no variables."""
    addresses = set()
    for _ in range(20):
        address, num_variables = _rpn_head_variables_in_a_new_graph()
        assert num_variables == 6       # conv0, class, box: W and b each
        addresses.add(address)
        gc.collect()
    assert len(addresses) < 20          # some graph did reuse an address (else this tests nothing)
