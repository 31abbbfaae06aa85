"""Tiny configs, synthetic datapoints and graph runners for the model-assembly tests."""
import numpy as np

from utils.tf_compat import tf  # noqa: I001  (must come before tensorpack)

from tensorpack.tfutils.tower import TowerContext

from config import config as cfg, finalize_configs, reset_config
from data import AnchorLabelParams, anchor_input_entries, get_multilevel_rpn_anchor_input
from dataset import DatasetRegistry
from utils import tensor_names as names
from utils.np_box_ops import anchor_grids

TINY_SPLIT = 'tiny_rcnn_test_split'
TINY_CLASSES = ['BG', 'circle', 'square', 'triangle']

# A shallow ResNet, few anchors / proposals / rois and narrow heads: a step takes about a second.
TINY_OVERRIDES = [
    'BACKBONE.RESNET_NUM_BLOCKS=[1, 1, 1, 1]',
    'BACKBONE.FREEZE_AT=0',
    'PREPROC.TRAIN_SHORT_EDGE_SIZE=[128, 128]', 'PREPROC.TEST_SHORT_EDGE_SIZE=128', 'PREPROC.MAX_SIZE=192',
    'RPN.HEAD_DIM=64', 'RPN.BATCH_PER_IM=64',
    'RPN.TRAIN_PRE_NMS_TOPK=300', 'RPN.TRAIN_POST_NMS_TOPK=64',
    'RPN.TEST_PRE_NMS_TOPK=300', 'RPN.TEST_POST_NMS_TOPK=64',
    'RPN.TRAIN_PER_LEVEL_NMS_TOPK=64', 'RPN.TEST_PER_LEVEL_NMS_TOPK=64',
    'FRCNN.BATCH_PER_IM=32',
    'FPN.NUM_CHANNEL=32', 'FPN.FRCNN_CONV_HEAD_DIM=32', 'FPN.FRCNN_FC_HEAD_DIM=64',
    'MRCNN.HEAD_DIM=32',
    'TRAIN.ACCUMULATE_STEPS=1',
    'TEST.RESULT_SCORE_THRESH=0.0',   # random weights score low; keep detections to test the mask branch
]


def configure(*overrides, is_training=True, tiny=True, num_category=None):
    """Set the global config for a test (conftest restores the defaults afterwards)."""
    class_names = TINY_CLASSES if num_category is None else ['BG'] + ['c{}'.format(i) for i in range(num_category)]
    DatasetRegistry.register_metadata(TINY_SPLIT, 'class_names', class_names)
    base = ['DATA.TRAIN=("{}",)'.format(TINY_SPLIT), 'DATA.VAL=("{}",)'.format(TINY_SPLIT),
            'BACKBONE.DATA_FORMAT=NHWC']
    cfg.update_args(base + (TINY_OVERRIDES if tiny else []))
    cfg.update_args(list(overrides))   # a second call: overrides may replace the tiny values
    finalize_configs(is_training=is_training)


def build_model():
    from modeling.generalized_rcnn import build_model as build_rcnn
    return build_rcnn(cfg)


def placeholders(model):
    """One placeholder per declared input, keyed by name."""
    return {spec.name: tf.placeholder(spec.dtype, spec.shape, name=spec.name) for spec in model.inputs()}


def _box_mask(box, height, width):
    mask = np.zeros((height, width), np.uint8)
    x1, y1, x2, y2 = np.round(box).astype(int)
    mask[y1:y2, x1:x2] = 1
    return mask


def synthetic_datapoint(boxes=((20, 30, 70, 90), (80, 40, 120, 100)), labels=None, is_crowd=None,
                        shape_hw=(128, 160), seed=0):
    """A datapoint dict as data.py yields it, for the current config (after `configure`).

    The image is noise with bright rectangles at `boxes`; masks are the boxes' rectangles.
    Crowd boxes influence the anchor targets only, as in data.py.
    """
    rng = np.random.RandomState(seed)
    height, width = shape_hw
    boxes = np.asarray(boxes, np.float32).reshape((-1, 4))
    labels = np.arange(len(boxes)) % cfg.DATA.NUM_CATEGORY + 1 if labels is None else np.asarray(labels)
    is_crowd = np.zeros(len(boxes), np.int8) if is_crowd is None else np.asarray(is_crowd, np.int8)
    image = rng.uniform(0, 80, size=(height, width, 3)).astype(np.float32)
    for box, label in zip(boxes, labels):
        image[_box_mask(box, height, width) > 0] = 60 * label + 60

    grids = anchor_grids(cfg.MODE_FPN, cfg.RPN.ANCHOR_STRIDE, cfg.FPN.ANCHOR_STRIDES, cfg.RPN.ANCHOR_SIZES,
                         cfg.RPN.ANCHOR_RATIOS, cfg.derived.max_size)
    params = AnchorLabelParams(cfg.RPN.BATCH_PER_IM, cfg.RPN.FG_RATIO, cfg.RPN.POSITIVE_ANCHOR_THRESH,
                               cfg.RPN.NEGATIVE_ANCHOR_THRESH, cfg.RPN.CROWD_OVERLAP_THRESH)
    anchor_inputs = get_multilevel_rpn_anchor_input(shape_hw, boxes, is_crowd, grids, params, rng)

    datapoint = {names.IMAGE: image}
    datapoint.update(anchor_input_entries(anchor_inputs, cfg.MODE_FPN))
    keep = is_crowd == 0
    datapoint[names.GT_BOXES] = boxes[keep]
    datapoint[names.GT_LABELS] = labels[keep].astype(np.int64)
    if cfg.MODE_MASK:
        padded_width = (width + 7) // 8 * 8
        masks = np.zeros((int(keep.sum()), height, padded_width), np.uint8)
        for i, box in enumerate(boxes[keep]):
            masks[i, :, :width] = _box_mask(box, height, width)
        datapoint[names.GT_MASKS_PACKED] = np.packbits(masks, axis=-1)
    return datapoint


def build_training_graph(model):
    """(placeholders dict, total cost, train op) in the current default graph."""
    inputs = placeholders(model)
    with TowerContext('', is_training=True):
        cost = model.build_graph(*[inputs[name] for name in model.input_names])
    # tensorpack builds the optimizer outside the tower; so do we.
    train_op = model.optimizer().minimize(cost)
    return inputs, cost, train_op


def build_inference_graph(model):
    """Placeholders dict of the inference graph (built in the current default graph)."""
    inputs = placeholders(model)
    with TowerContext('', is_training=False):
        model.build_graph(*[inputs[name] for name in model.input_names])
    return inputs


def feed(inputs, datapoint):
    return {inputs[name]: value for name, value in datapoint.items()}


def loss_tensors():
    """The named losses of the training graph, by op name."""
    graph = tf.get_default_graph()
    wanted = ('total_cost', 'wd_cost')
    found = {}
    for op in graph.get_operations():
        if op.name.startswith('EMA/') or op.type.startswith('Variable'):
            continue   # the moving averages of add_moving_summary
        if op.name.endswith(('label_loss', 'box_loss', 'maskrcnn_loss')) or op.name in wanted:
            if op.outputs and op.outputs[0].shape.ndims == 0:
                found[op.name] = op.outputs[0]
    return found


def run_training_steps(datapoints, num_steps=1, learning_rate=0.01):
    """Build the training graph of the current config, run `num_steps` steps cycling through
    `datapoints`; returns the list of per-step dicts {loss name: value} (values before the step)."""
    with tf.Graph().as_default():
        tf.set_random_seed(1)
        model = build_model()
        inputs, _, train_op = build_training_graph(model)
        losses = loss_tensors()
        lr = [v for v in tf.global_variables() if v.name == 'learning_rate:0'][0]
        history = []
        with tf.Session() as sess:
            sess.run(tf.global_variables_initializer())
            sess.run(lr.assign(learning_rate))
            for step in range(num_steps):
                values, _ = sess.run([losses, train_op], feed_dict=feed(inputs, datapoints[step % len(datapoints)]))
                history.append(values)
        return history


def run_inference(datapoint_image):
    """Build the inference graph with random weights, run it; returns {output name: array}."""
    with tf.Graph().as_default():
        model = build_model()
        inputs = build_inference_graph(model)
        output_names = model.get_inference_tensor_names()[1]
        graph = tf.get_default_graph()
        outputs = {name: graph.get_tensor_by_name(name + ':0') for name in output_names}
        with tf.Session() as sess:
            sess.run(tf.global_variables_initializer())
            return sess.run(outputs, feed_dict={inputs[names.IMAGE]: datapoint_image}), outputs


def save_random_model(path, *overrides, num_category=None):
    """Build the tiny inference graph of `overrides`, save its random variables to `path`
    (a checkpoint prefix, or an .npz as tensorpack's model zoo has them); returns the values."""
    reset_config()
    configure(*overrides, is_training=False, num_category=num_category)
    with tf.Graph().as_default():
        build_inference_graph(build_model())
        with tf.Session() as sess:
            sess.run(tf.global_variables_initializer())
            values = sess.run({v.op.name: v for v in tf.global_variables()})
            if path.endswith('.npz'):
                np.savez(path, **{name + ':0': value for name, value in values.items()})
            else:
                tf.train.Saver().save(sess, path, write_meta_graph=False)
    return values
