"""Evaluation during training: a tensorpack callback that predicts the validation splits and puts
their metrics into the trainer's monitors.

Its settings come in an `EvalSettings` record; `EvalSettings.from_config(cfg)` is the one step
that reads them from a config (train.py calls it).
"""
import collections
import json
import os

from utils.tf_compat import tf  # before tensorpack, which imports TensorFlow
from tensorpack.callbacks import Callback
from tensorpack.utils import logger

from inference.run import InferenceSettings, PredictionAbandoned, multithread_predict_dataflow, predict_dataflow

__all__ = ['EvalSettings', 'epochs_to_evaluate', 'variables_read_by', 'EvalCallback']


class EvalSettings(collections.namedtuple('EvalSettings', [
        'inference',     # InferenceSettings: the test-time resize and mask pasting
        'eval_period',   # TRAIN.EVAL_PERIOD: evaluate every this many epochs, and after the last
        'num_gpus',      # TRAIN.NUM_GPUS (after finalization): 0 predicts on the CPU
        'horovod',       # TRAINER == 'horovod'
        'test_amp',      # TEST.AMP: mixed precision of the predictors
        'train_amp',     # TRAIN.AMP: that of the training session
        'apply_exif_orientation',   # DATA.EXIF_ORIENTATION == 'apply'
], defaults=(True,))):
    """Everything EvalCallback reads, as one frozen record."""

    __slots__ = ()

    @classmethod
    def from_config(cls, cfg):
        """The settings of a finalized config `cfg`."""
        return cls(inference=InferenceSettings.from_config(cfg), eval_period=cfg.TRAIN.EVAL_PERIOD,
                   num_gpus=cfg.derived.num_gpus, horovod=cfg.TRAINER == 'horovod', test_amp=cfg.TEST.AMP,
                   train_amp=cfg.TRAIN.AMP, apply_exif_orientation=cfg.DATA.EXIF_ORIENTATION == 'apply')


def epochs_to_evaluate(eval_period, max_epoch):
    """Set of epochs (1-based) at which to evaluate: every `eval_period` epochs and the last one."""
    if eval_period <= 0:
        raise ValueError("TRAIN.EVAL_PERIOD must be > 0 to evaluate during training, got {}".format(eval_period))
    return set(range(eval_period, max_epoch + 1, eval_period)) | {max_epoch}


def variables_read_by(tensors):
    """The global variables that computing `tensors` reads, in graph order."""
    seen, stack = set(), [t.op for t in tensors]
    while stack:
        op = stack.pop()
        if op in seen:
            continue
        seen.add(op)
        stack.extend(t.op for t in op.inputs)
        stack.extend(op.control_inputs)
    return [var for var in tf.global_variables() if var.op in seen]


class EvalCallback(Callback):
    """Evaluates `eval_dataset` during training; metrics go to the trainer's monitors.

    Replicated/CPU training: two predictors per GPU (one on the CPU without GPUs), each on a shard.
    Horovod: every rank of the first machine predicts its shard and writes a part file; a
    collective keeps all ranks in step; rank 0 gathers the parts and evaluates.
    Scalars are named '{eval_dataset}-{metric}', e.g. 'coco_minival2014-mAP(bbox)/IoU=0.5:0.95'.
    """

    _chief_only = False   # horovod ranks other than 0 predict too
    _own_session = False  # set by _setup_graph: True when TEST.AMP differs from TRAIN.AMP

    def __init__(self, eval_dataset, in_names, out_names, output_dir, settings, should_stop=None):
        """`settings`: an EvalSettings (`EvalSettings.from_config(cfg)`). `should_stop`: None, or a
        callable asked before each image; True abandons the evaluation (train.py: after SIGTERM)."""
        self._should_stop = should_stop
        self._eval_dataset = eval_dataset
        self._in_names, self._out_names = list(in_names), list(out_names)
        self._output_dir = output_dir
        self._settings = dict(settings.inference._asdict())   # the keyword arguments of predict_dataflow
        self._eval_period = settings.eval_period
        self._num_gpus = settings.num_gpus
        self._use_horovod = settings.horovod
        self._test_amp = settings.test_amp
        self._train_amp = settings.train_amp
        self._apply_exif_orientation = settings.apply_exif_orientation

    def _setup_graph(self):
        from dataflow.build import get_eval_dataflow

        num_gpus = self._num_gpus
        if self._use_horovod:
            import horovod.tensorflow as hvd
            self._hvd = hvd
            # Gathering part files needs a shared filesystem, which only one machine is sure to have.
            self._predict_here = hvd.rank() == hvd.local_rank()
            if self._predict_here:
                # Horovod makes each process see only its own GPU as gpu:0; NUM_GPUS counts ranks, even on CPUs.
                from utils.tf_compat import num_visible_gpus
                self._predictor = self._build_predictor(0 if num_visible_gpus() > 0 else -1)
                self._dataflow = get_eval_dataflow(self._eval_dataset, shard=hvd.local_rank(),
                                                   num_shards=hvd.local_size(),
                                                   apply_exif_orientation=self._apply_exif_orientation)
            self._barrier = hvd.allreduce(tf.random_normal(shape=[1]))
        else:
            # Two predictors per GPU keep each GPU busy while the other thread post-processes.
            devices = [k % num_gpus for k in range(2 * num_gpus)] if num_gpus > 0 else [-1]
            self._predictors = [self._build_predictor(device) for device in devices]
            self._dataflows = [get_eval_dataflow(self._eval_dataset, shard=k, num_shards=len(devices),
                                                 apply_exif_orientation=self._apply_exif_orientation)
                               for k in range(len(devices))]

        # Grappler's mixed-precision rewrite is a setting of the whole session: when TEST.AMP differs
        # from TRAIN.AMP the predictors run in a session of their own, with weights copied in.
        self._own_session = self._test_amp != self._train_amp and (not self._use_horovod or self._predict_here)
        if self._own_session:
            predictors = [self._predictor] if self._use_horovod else self._predictors
            self._weights = variables_read_by([t for p in predictors for t in p.output_tensors])

    def _build_predictor(self, device):
        return self.trainer.get_predictor(self._in_names, self._out_names, device=device)

    def _open_own_session(self):
        from tensorpack.predict import OnlinePredictor
        from utils.tf_compat import num_visible_gpus, session_config

        config = session_config(amp=self._test_amp)
        if self._use_horovod and num_visible_gpus() > 0:
            config.gpu_options.visible_device_list = str(self._hvd.local_rank())
        self._sess = tf.Session(graph=self.graph, config=config)

        def rebind(pred):
            return OnlinePredictor(pred.input_tensors, pred.output_tensors, sess=self._sess)

        if self._use_horovod:
            self._predictor = rebind(self._predictor)
        else:
            self._predictors = [rebind(pred) for pred in self._predictors]
        logger.info('[EvalCallback] TEST.AMP={} differs from the training session\'s precision: {} predicts in a '
                    'session of its own; {} variables are copied in before each evaluation.'.format(
                        self._test_amp, self._eval_dataset, len(self._weights)))

    def _copy_weights(self):
        values = self.trainer.sess.run(self._weights)
        for var, value in zip(self._weights, values):
            var.load(value, self._sess)   # feeds the initializer: no new ops in the finalized graph

    def _after_train(self):
        if self._own_session:
            self._sess.close()

    def _before_train(self):
        if self._own_session:
            self._open_own_session()
        self._epochs_to_eval = epochs_to_evaluate(self._eval_period, self.trainer.max_epoch)
        logger.info("[EvalCallback] Will evaluate {} every {} epochs".format(self._eval_dataset, self._eval_period))

    def _gather_horovod_results(self):
        hvd = self._hvd
        part_files = [os.path.join(self._output_dir, 'outputs{}-part{}.json'.format(self.global_step, rank))
                      for rank in range(hvd.local_size())]
        if self._predict_here:
            local_results = predict_dataflow(self._dataflow, self._predictor, should_stop=self._should_stop,
                                             **self._settings)
            with open(part_files[hvd.local_rank()], 'w') as f:
                json.dump(local_results, f)
        self._barrier.eval()   # every part file is written once all ranks pass this
        if hvd.rank() > 0:
            return None
        all_results = []
        for path in part_files:
            with open(path) as f:
                all_results.extend(json.load(f))
            os.unlink(path)
        return all_results

    def _eval(self):
        if self._own_session:
            self._copy_weights()
        if self._use_horovod:
            all_results = self._gather_horovod_results()
            if all_results is None:
                return
        else:
            all_results = multithread_predict_dataflow(self._dataflows, self._predictors, should_stop=self._should_stop,
                                                       **self._settings)

        from dataset import DatasetRegistry, file_label

        label = file_label(self._eval_dataset)   # the name itself unless it holds a path
        output_file = os.path.join(self._output_dir, '{}-outputs{}.json'.format(label, self.global_step))
        scores = DatasetRegistry.get(self._eval_dataset).eval_inference_results(all_results, output_file)
        for name, value in scores.items():
            self.trainer.monitors.put_scalar('{}-{}'.format(label, name), value)

    def _trigger_epoch(self):
        if self.epoch_num in self._epochs_to_eval:
            logger.info("Running evaluation on {} ...".format(self._eval_dataset))
            try:
                self._eval()
            except PredictionAbandoned as abandoned:
                logger.warn('Evaluation of {} at global_step={} abandoned ({}): training is stopping.'.format(
                    self._eval_dataset, self.global_step, abandoned))
