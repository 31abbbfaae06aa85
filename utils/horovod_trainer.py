"""The Horovod trainer (tensorpack's, with an `initialize` that works on TF 2 and logs each rank's
starting fingerprint) and broadcasting an int from rank 0 before it runs."""
from utils.tf_compat import tf  # must come before tensorpack

from tensorpack.utils import logger

from utils.fingerprints import log_variables_fingerprint, model_variables

__all__ = ['broadcast_from_rank0', 'make_horovod_trainer']


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
