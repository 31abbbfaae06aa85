"""A decorator that lets a layer function be called again in the same variable scope, sharing
its variables (the FPN's one RPN head over all levels, C4's conv5 on box and mask rois)."""
import functools
import weakref

from utils.tf_compat import tf


def reuse_variables_when_called_again(func):
    """func creates its variables in the current variable scope on its first call there in a
    graph, and reuses them on later calls in the same scope and graph.

    tensorpack's auto_reuse_variable_scope does the same but remembers graphs by hash, i.e. by
    address: a new graph created where a freed one lived is taken for it, and the first call in it
    fails with "Variable .../W does not exist". Here each graph keeps its own set of scopes, and a
    freed graph takes its set along.
    """
    used_scopes = weakref.WeakKeyDictionary()    # graph -> names of the scopes func was called in

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        scope = tf.get_variable_scope()
        scopes = used_scopes.setdefault(tf.get_default_graph(), set())
        if scope.name not in scopes:
            scopes.add(scope.name)
            return func(*args, **kwargs)
        with tf.variable_scope(scope, reuse=True, auxiliary_name_scope=False):
            return func(*args, **kwargs)
    return wrapper
