"""Graph-mode helpers shared by the TensorFlow tests."""
import numpy as np

from utils.tf_compat import tf


def run_graph(fn, *arrays, training=False):
    """Build `fn(*placeholders)` in a fresh graph, feed `arrays`, return numpy results.

    Each array becomes a placeholder of its dtype with an unknown shape of the same
    rank, so the graph cannot lean on static shapes the real model won't have.
    Variables (if `fn` creates any) are initialized with their initializers.
    `training` opens a tensorpack TowerContext of that kind around `fn`.
    """
    from tensorpack.tfutils.tower import TowerContext

    with tf.Graph().as_default():
        placeholders = [
            tf.placeholder(tf.as_dtype(np.asarray(a).dtype), [None] * np.ndim(a))
            for a in arrays]
        with TowerContext('', is_training=training):
            outputs = fn(*placeholders)
        with tf.Session() as sess:
            sess.run(tf.global_variables_initializer())
            return sess.run(outputs, feed_dict=dict(zip(placeholders, arrays)))
