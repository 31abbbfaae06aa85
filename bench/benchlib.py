"""What the benchmarks share. Importing it puts the project root on sys.path (the scripts run as
`.venv/bin/python bench/NAME.py`, which puts only bench/ there), so a script starts with

    import benchlib  # noqa: F401  (the project root on sys.path)

and then imports the project's modules. The module itself loads no TensorFlow: bench_peers.py's
torchvision worker runs in another venv. The helpers that build models import it when called.

Models of the training and AMP benchmarks: `demo` is the recipe of `make demo` (tools/demo_recipe.txt,
256 px); `r50-fpn-800` is R50-FPN Mask R-CNN at config.py's defaults with 800 px images (long edge
up to 1333). Both train on datapoints of the synthetic shapes set, upscaled for 800 px.
"""
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

R50_FPN_800 = ['MODE_FPN=True', 'MODE_MASK=True', 'PREPROC.TRAIN_SHORT_EDGE_SIZE=[800,800]',
               'PREPROC.TEST_SHORT_EDGE_SIZE=800', 'TRAIN.ACCUMULATE_STEPS=1']


def model_overrides(name, basedir):
    """The overrides of model `name` ('demo' or 'r50-fpn-800'); DATA.BASEDIR is left to `configure`."""
    if name == 'r50-fpn-800':
        return list(R50_FPN_800)
    from tools.demo_recipe import demo_overrides
    return [o for o in demo_overrides(basedir) if not o.startswith('DATA.BASEDIR=')]


def load_average():
    """The 1, 5 and 15 minute load averages, formatted."""
    return ' '.join('{:.2f}'.format(x) for x in os.getloadavg())


def configure(overrides, basedir, is_training):
    """Reset and finalize the global config for `overrides` on a small shapes set written to `basedir`."""
    from config import config as cfg, finalize_configs, reset_config
    from dataset import register_shapes
    reset_config()
    register_shapes(basedir, num_train=4, num_val=1, image_size=256, seed=0)
    cfg.update_args(['DATA.TRAIN=shapes_train', 'DATA.VAL=shapes_val', 'DATA.NUM_WORKERS=0',
                     'DATA.BASEDIR=' + basedir, 'TEST.RESULT_SCORE_THRESH=0.0'])
    cfg.update_args(list(overrides))   # a second call may override the first (one call may not repeat a key)
    finalize_configs(is_training=is_training)


def first_datapoint():
    """A training datapoint with at least one box, as data.py makes it for the current config."""
    from data import get_train_dataflow
    from utils import tensor_names as names
    dataflow = get_train_dataflow()
    dataflow.reset_state()
    for datapoint in dataflow:
        if len(datapoint[names.GT_BOXES]):
            return datapoint
    raise ValueError('The shapes training split has no image with boxes.')


def inference_datapoint(overrides, basedir):
    """The first training image, resized as at test time (the predictor's input); leaves the config
    finalized for inference."""
    import numpy as np
    from common import CustomResize
    from config import config as cfg
    from utils import tensor_names as names
    configure(overrides, basedir, is_training=True)
    image = first_datapoint()[names.IMAGE]
    configure(overrides, basedir, is_training=False)
    resized = CustomResize(cfg.PREPROC.TEST_SHORT_EDGE_SIZE, cfg.derived.max_size).augment(image.astype(np.uint8))
    return {names.IMAGE: resized.astype(np.float32)}


class Runner:
    """One graph and session of the current config, training or inference, float32 or AMP, fed one
    datapoint; `time(n)` runs n steps and returns s/step."""

    def __init__(self, training, amp, datapoint):
        from utils.tf_compat import session_config, tf   # (before tensorpack)
        from tensorpack.tfutils.tower import TowerContext
        from config import config as cfg
        from modeling.generalized_rcnn import build_model
        from utils import tensor_names as names
        self.graph = tf.Graph()
        with self.graph.as_default():
            tf.set_random_seed(0)   # the same random weights in both precisions
            cfg.update_args(['TRAIN.AMP={}'.format(amp and training), 'TEST.AMP={}'.format(amp and not training)])
            model = build_model(cfg)
            inputs = {spec.name: tf.placeholder(spec.dtype, spec.shape, name=spec.name) for spec in model.inputs()}
            with TowerContext('', is_training=training):
                cost = model.build_graph(*[inputs[name] for name in model.input_names])
            if training:
                self.fetches = [cost, model.optimizer().minimize(cost)]
                self.feed = {inputs[name]: value for name, value in datapoint.items() if name in inputs}
            else:
                self.fetches = [self.graph.get_tensor_by_name(name + ':0')
                                for name in model.get_inference_tensor_names()[1]]
                self.feed = {inputs[names.IMAGE]: datapoint[names.IMAGE]}
            self.sess = tf.Session(config=session_config(amp=amp))
            self.sess.run(tf.global_variables_initializer())
        self.last = None
        self.first_run = self.time(1)   # graph optimization and warm-up

    def time(self, steps):
        start = time.perf_counter()
        for _ in range(steps):
            self.last = self.sess.run(self.fetches, self.feed)
        return (time.perf_counter() - start) / steps

    def describe_last(self, training):
        if training:
            return 'loss {:.4g}'.format(float(self.last[0]))
        return '{} detections'.format(len(self.last[0]))
