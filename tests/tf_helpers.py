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


def train_tiny_model(callbacks, *, steps_per_epoch, max_epoch, starting_epoch=1, session_init=None, size=1,
                     dataflow=None):
    """Train a model of one float32 variable `w` of `size` elements with tensorpack's SimpleTrainer, as
    train.py trains (a QueueInput, `learning_rate` a graph variable that setters may change).

    dataflow: the training DataFlow (it yields [x]); one constant point, repeated, when None.
    Returns when training ends; exceptions of the trainer propagate.
    """
    from tensorpack import ModelDesc, QueueInput, SimpleTrainer, TrainConfig, launch_train_with_config
    from tensorpack.dataflow import DataFromList

    class OneVariable(ModelDesc):
        def inputs(self):
            return [tf.TensorSpec([], tf.float32, 'x')]

        def build_graph(self, x):
            weight = tf.get_variable('w', [size], initializer=tf.zeros_initializer())
            return tf.reduce_sum(tf.square(weight - x), name='cost')

        def optimizer(self):
            lr = tf.get_variable('learning_rate', initializer=1e-3, trainable=False)
            return tf.train.GradientDescentOptimizer(lr)

    queue_input = QueueInput(dataflow if dataflow is not None else DataFromList([[np.float32(1.)]], shuffle=False))
    config = TrainConfig(model=OneVariable(), data=queue_input, monitors=[], callbacks=list(callbacks),
                         steps_per_epoch=steps_per_epoch, max_epoch=max_epoch, starting_epoch=starting_epoch,
                         session_init=session_init)
    try:
        with tf.Graph().as_default():
            launch_train_with_config(config, SimpleTrainer())
    finally:
        queue_input.thread.join(timeout=30)
