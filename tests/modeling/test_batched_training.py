"""Several images per tower (TRAIN.BATCH_SIZE_PER_GPU=2): the batched training graph against the
one-image graph, with the loss rule of NOTES.md ("Several images per tower").

Sampling keeps everything: FRCNN.BATCH_PER_IM is larger than proposals + gt and FG_RATIO is 1, so
the sampled rois of an image are the same set in both graphs (only their order is random, which
no loss sees). The anchor targets come from the (seeded, numpy) dataflow, so they are fixed.
The two images have sizes that pad to the same 128 x 160, so the padding of the batch is exactly
the one-image graph's own padding to FPN.RESOLUTION_REQUIREMENT (C4, which pads nothing, gets two
images of one size) and the batch must reproduce both single-image runs; larger padding moves the
features near the border (the convolutions see it), which the last tests check only for what it
must not change.
"""
import dataclasses

import numpy as np
import pytest

from utils.tf_compat import tf  # noqa: I001  (must come before tensorpack)

from tensorpack.tfutils.tower import TowerContext

from config import config as cfg
from dataflow.batching import pad_batch
from modeling.generalized_rcnn import model_from_params
from modeling.params import ModelParams
from utils import tensor_names as names

from tests.modeling import rcnn_helpers as helpers

KEEP_ALL = ['FRCNN.BATCH_PER_IM=4096', 'FRCNN.FG_RATIO=1.0']
VARIANTS = {'fpn_mask': [], 'c4_mask': ['MODE_FPN=False']}
IMAGES = [dict(boxes=((20, 30, 70, 90), (80, 40, 120, 100)), shape_hw=(128, 160), seed=0),
          dict(boxes=((10, 12, 60, 50),), shape_hw=(120, 150), seed=1)]
NO_GT = dict(boxes=(), shape_hw=(120, 150), seed=2)
RPN_LOSSES = ('rpn_losses/label_loss', 'rpn_losses/box_loss')
FRCNN_LOSSES = ('fastrcnn_losses/label_loss', 'fastrcnn_losses/box_loss')
MASK_LOSS = 'maskrcnn_loss/maskrcnn_loss'
# Variables whose gradients are compared: the RPN, box and mask heads and a backbone conv.
GRADIENT_VARIABLES = ('rpn/conv0/W', 'maskrcnn/conv/W', 'group0/block0/conv1/W')


def _multiple():
    return cfg.FPN.RESOLUTION_REQUIREMENT if cfg.MODE_FPN else cfg.RPN.ANCHOR_STRIDE


def _model_variables():
    return {v.op.name: v for v in tf.global_variables()
            if not v.op.name.startswith('EMA/') and 'Momentum' not in v.op.name and v.op.name != 'learning_rate'}


def _sampled_counts():
    """(rois, foreground rois) of each sampling of the graph, in build order."""
    graph = tf.get_default_graph()
    labels = [op.outputs[0] for op in graph.get_operations()
              if op.name.split('/')[-1] == 'sampled_labels' and op.type == 'StopGradient']
    return [(tf.size(t), tf.reduce_sum(tf.cast(t > 0, tf.int32))) for t in labels]


def _proposal_tensors():
    graph = tf.get_default_graph()
    scope = names.FPN_PROPOSALS_SCOPE if cfg.MODE_FPN else names.RPN_PROPOSALS_SCOPE
    return [op.outputs[0] for op in graph.get_operations()
            if op.name.startswith(scope) and op.name.endswith('/boxes') and op.name.count('/') == 1]


def build_model(batch_size):
    """The model of the current config with `batch_size` images per tower."""
    params = ModelParams.from_config(cfg)
    return model_from_params(params.replace(train=dataclasses.replace(params.train, batch_size_per_tower=batch_size)))


def run_graph(batch_size, datapoint, values=None):
    """Build the training graph of `batch_size` images, load `values` ({name: array}) or initialize;
    returns (variable values, losses, sampled counts, proposals, {variable: gradient of the cost
    without weight decay}, {variable: gradient of each named loss})."""
    with tf.Graph().as_default():
        tf.set_random_seed(1)
        model = build_model(batch_size)
        inputs = helpers.placeholders(model)
        with TowerContext('', is_training=True):
            cost = model.build_graph(*[inputs[name] for name in model.input_names])
        losses = helpers.loss_tensors()
        variables = _model_variables()
        wanted = [variables[name] for name in GRADIENT_VARIABLES]
        data_cost = cost - losses['wd_cost']
        grads = dict(zip(GRADIENT_VARIABLES, tf.gradients(data_cost, wanted)))
        loss_grads = {}
        for loss_name in RPN_LOSSES + FRCNN_LOSSES + (MASK_LOSS,):
            loss_grads[loss_name] = dict(zip(GRADIENT_VARIABLES, [
                g if g is not None else tf.zeros_like(v) for g, v in zip(tf.gradients(losses[loss_name], wanted),
                                                                         wanted)]))
        counts = _sampled_counts()
        proposals = _proposal_tensors()
        with tf.Session() as sess:
            sess.run(tf.global_variables_initializer())
            if values is not None:
                for name, var in variables.items():
                    var.load(values[name], sess)
            feed = helpers.feed(inputs, datapoint)
            out = sess.run([{n: v for n, v in variables.items()}, losses, counts, proposals, grads, loss_grads],
                           feed_dict=feed)
    return out


def _configure(variant):
    helpers.configure(*(VARIANTS[variant] + KEEP_ALL))


def _batch(datapoints):
    return pad_batch(datapoints, _multiple())


def _same_rows(a, b):
    """The rows of a and b as sets (proposal order may differ in ties), sorted lexicographically."""
    return np.lexsort(a.T[::-1]), np.lexsort(b.T[::-1])


def predicted(singles, key):
    """What the batch should give for loss `key` from the single-image runs (the NOTES.md rule)."""
    values = [s[1][key] for s in singles]
    if key in RPN_LOSSES:
        return np.mean(values)
    rois, fgs = zip(*[s[2][0] for s in singles])
    weights = np.asarray(fgs if key == MASK_LOSS else rois, np.float64)
    return np.dot(weights, values) / weights.sum()


def predicted_gradient(singles, var):
    total = 0.
    rois, fgs = (np.asarray(x, np.float64) for x in zip(*[s[2][0] for s in singles]))
    for i, single in enumerate(singles):
        loss_grads = single[5]
        total = total + 0.5 * sum(loss_grads[k][var] for k in RPN_LOSSES)
        total = total + rois[i] / rois.sum() * sum(loss_grads[k][var] for k in FRCNN_LOSSES)
        total = total + fgs[i] / max(fgs.sum(), 1) * loss_grads[MASK_LOSS][var]
    return total


def _check_batch_against_singles(datapoints):
    batch = run_graph(2, _batch(datapoints))
    values = batch[0]
    singles = [run_graph(1, dp, values) for dp in datapoints]
    for key in RPN_LOSSES + FRCNN_LOSSES + (MASK_LOSS,):
        np.testing.assert_allclose(batch[1][key], predicted(singles, key), rtol=2e-4, atol=1e-6, err_msg=key)
    # The sampled rois per image are those of the image alone.
    assert [tuple(c) for c in batch[2]] == [tuple(s[2][0]) for s in singles]
    for i, single in enumerate(singles):
        mine, theirs = batch[3][i], single[3][0]
        assert mine.shape == theirs.shape
        order_a, order_b = _same_rows(np.round(mine, 2), np.round(theirs, 2))
        np.testing.assert_allclose(mine[order_a], theirs[order_b], atol=2e-3)
    for var in GRADIENT_VARIABLES:
        want = predicted_gradient(singles, var)
        scale = np.abs(want).max() + 1e-8
        np.testing.assert_allclose(batch[4][var] / scale, want / scale, atol=2e-4, err_msg=var)
    return batch, singles


@pytest.mark.parametrize('variant', sorted(VARIANTS))
def test_batch_of_two_gives_the_rule_from_the_single_image_runs(variant):
    _configure(variant)
    images = IMAGES
    if not cfg.MODE_FPN:
        # C4 does not pad its input (FPN pads to RESOLUTION_REQUIREMENT): only equal sizes pad alike.
        images = [IMAGES[0], dict(IMAGES[1], shape_hw=IMAGES[0]['shape_hw'])]
    datapoints = [helpers.synthetic_datapoint(**kwargs) for kwargs in images]
    batch, singles = _check_batch_against_singles(datapoints)
    # Not trivially equal: the two images differ in their losses and roi counts.
    assert singles[0][2][0][0] != singles[1][2][0][0]
    assert batch[1]['total_cost'] > 0


def test_an_image_without_gt_in_a_batch():
    _configure('fpn_mask')
    datapoints = [helpers.synthetic_datapoint(**IMAGES[0]), helpers.synthetic_datapoint(**NO_GT)]
    batch, singles = _check_batch_against_singles(datapoints)
    assert singles[1][2][0][1] == 0          # no foreground roi in the empty image
    assert all(np.isfinite(v) for v in batch[1].values())


def test_images_of_different_padded_sizes_in_one_batch():
    """A 96 x 128 image in a batch padded to 128 x 160: its proposals stay inside its own size
    and come from its own cells; every loss is finite and the gradients too."""
    _configure('fpn_mask')
    small = dict(boxes=((10, 12, 60, 50),), shape_hw=(96, 128), seed=3)
    datapoints = [helpers.synthetic_datapoint(**IMAGES[0]), helpers.synthetic_datapoint(**small)]
    batch_dp = _batch(datapoints)
    assert batch_dp[names.IMAGE].shape[1:3] == (128, 160)
    batch = run_graph(2, batch_dp)
    single = run_graph(1, datapoints[1], batch[0])
    proposals = batch[3][1]
    assert len(proposals) > 0
    assert np.all(proposals[:, [0, 2]] <= 128) and np.all(proposals[:, [1, 3]] <= 96)
    # Same candidates as alone: as many proposals (top-k of its own cells, NMS) within a few.
    assert abs(len(proposals) - len(single[3][0])) <= max(2, len(proposals) // 10)
    assert batch[2][1] == single[2][0] or abs(batch[2][1][0] - single[2][0][0]) <= 5
    assert all(np.isfinite(v) for v in batch[1].values())
    assert all(np.all(np.isfinite(g)) for g in batch[4].values())


def test_one_image_model_declares_no_batch_inputs():
    helpers.configure()
    input_names = [spec.name for spec in build_model(1).inputs()]
    assert names.IMAGE_VALID_HW not in input_names and names.GT_COUNTS not in input_names
    batched = {spec.name: spec for spec in build_model(2).inputs()}
    assert set(batched) == set(input_names) | {names.IMAGE_VALID_HW, names.GT_COUNTS}
    assert batched[names.GT_BOXES].shape.as_list() == [2, None, 4]
    assert batched[names.IMAGE].shape.rank is None     # the inference graph feeds [H, W, 3]


def test_batched_model_builds_the_one_image_inference_graph():
    helpers.configure('TRAIN.BATCH_SIZE_PER_GPU=2', is_training=False)
    image = helpers.synthetic_datapoint(shape_hw=(128, 160))[names.IMAGE]
    outputs, _ = helpers.run_inference(image)
    assert outputs[names.OUTPUT_BOXES].shape[1] == 4
    # The placeholder keeps its open rank: tensorpack's QueueInput feeds training batches through the
    # same `image` placeholder that EvalCallback's predictor reuses.
    with tf.Graph().as_default():
        inputs = helpers.build_inference_graph(helpers.build_model())
        assert inputs[names.IMAGE].shape.rank is None


def _configure_two_per_tower(*overrides):
    helpers.configure('TRAIN.BATCH_SIZE_PER_GPU=2', *overrides)


def _training_graph():
    """The training graph of the current config in the default graph: (inputs, named losses, train_op),
    the optimizer being the model's own (tensorpack builds it the same way)."""
    tf.set_random_seed(1)
    inputs, _, train_op = helpers.build_training_graph(helpers.build_model())
    return inputs, helpers.loss_tensors(), train_op


# Two images that pad to one 128 x 160 batch: the second one's batch padding goes beyond its own.
SIZES = [dict(IMAGES[0]), dict(boxes=((10, 12, 60, 50),), shape_hw=(96, 128), seed=3)]


def test_batch_statistics_of_syncbn_are_over_the_whole_padded_batch():
    """BACKBONE.NORM=SyncBN on one tower (TRAINER=replicated: tensorpack's NCCL path falls back to the
    tower's own statistics; Horovod ranks average these): conv0's BatchNorm moves its moving mean and
    variance (momentum 0.9, from 0 and 1) by the mean and variance over all N x Hp x Wp positions of
    its input, the padding of the smaller image included."""
    _configure_two_per_tower('BACKBONE.NORM=SyncBN')
    batch = _batch([helpers.synthetic_datapoint(**kwargs) for kwargs in SIZES])
    with tf.Graph().as_default():
        inputs, losses, train_op = _training_graph()
        graph = tf.get_default_graph()
        conv0 = graph.get_tensor_by_name('conv0/Conv2D:0')    # the BatchNorm's input
        moving = {name: v for v in tf.global_variables() for name in ('mean', 'variance')
                  if v.op.name == 'conv0/bn/{}/EMA'.format(name)}
        with tf.Session() as sess:
            sess.run(tf.global_variables_initializer())
            values, features, _ = sess.run([losses, conv0, train_op], helpers.feed(inputs, batch))
            moved = sess.run(moving)
    assert all(np.isfinite(v) for v in values.values()), values
    assert features.shape[:3] == (2, 64, 80)              # 128 x 160 at stride 2
    features = features.astype(np.float64)
    np.testing.assert_allclose(moved['mean'], 0.1 * features.mean(axis=(0, 1, 2)), atol=2e-5)
    np.testing.assert_allclose(moved['variance'], 0.9 + 0.1 * features.var(axis=(0, 1, 2)), rtol=1e-4)
    # Not the valid pixels only: the 96 x 128 image has 48 x 64 cells of its own.
    valid = np.concatenate([features[0].reshape(-1, 64), features[1, :48, :64].reshape(-1, 64)]).mean(axis=0)
    assert np.abs(moved['mean'] - 0.1 * valid).max() > 1e-3


def test_group_norm_keeps_the_images_of_a_batch_apart():
    """BACKBONE.NORM=GN, FPN.NORM=GN: the losses of a batch of two are finite, and an image's normalized
    features do not depend on the other image of its batch (statistics are per image). Training steps
    of this model with two images per tower: tests/test_end_to_end.py."""
    _configure_two_per_tower('BACKBONE.NORM=GN', 'FPN.NORM=GN')
    first = helpers.synthetic_datapoint(**SIZES[0])
    batches = [_batch([first, helpers.synthetic_datapoint(**dict(SIZES[1], seed=seed))]) for seed in (3, 4)]
    with tf.Graph().as_default():
        model = helpers.build_model()
        inputs = helpers.placeholders(model)
        with TowerContext('', is_training=True):
            model.build_graph(*[inputs[name] for name in model.input_names])
        losses = helpers.loss_tensors()
        normalized = tf.get_default_graph().get_tensor_by_name('group0/block0/conv1/gn/output:0')
        with tf.Session() as sess:
            sess.run(tf.global_variables_initializer())
            runs = [sess.run([normalized, losses], helpers.feed(inputs, batch)) for batch in batches]
    for _, values in runs:
        assert all(np.isfinite(v) for v in values.values()), values
    (features, _), (other_features, _) = runs
    np.testing.assert_allclose(features[0], other_features[0], atol=1e-5)
    assert np.abs(features[1] - other_features[1]).max() > 0.1     # the second images differ


def test_accumulation_applies_the_sum_of_four_batches_of_two():
    """1 tower x 2 images x 4 accumulation steps = 8 images per update, TRAIN.ACCUMULATE_STEPS unset.
    With the model's optimizer (momentum 0.9, learning rate / 8), steps 1-3 leave the variables as
    they are and step 4 moves them by -lr / 8 x (g1 + g2 + g3 + g4), the gradients of the four
    batches at those unchanged variables (momentum's first update is the gradient itself). Sampling
    keeps every roi, so a batch's gradient is the same in each run. FreezeBN (the default): the
    moving statistics stay as they are."""
    _configure_two_per_tower(*KEEP_ALL, 'TRAIN.ACCUMULATE_STEPS=None')
    assert (cfg.derived.images_per_step, cfg.derived.accumulate_steps) == (2, 4)
    batches = [_batch([helpers.synthetic_datapoint(**dict(IMAGES[0], seed=2 * k)),
                       helpers.synthetic_datapoint(**dict(IMAGES[1], seed=2 * k + 1))]) for k in range(4)]
    # Large, so that the smallest move (a backbone conv, ~1e-5 of weights ~0.4 at lr 0.8) stands well
    # above float32's resolution of the weights.
    learning_rate = 80.
    with tf.Graph().as_default():
        inputs, losses, train_op = _training_graph()
        variables = _model_variables()
        wanted = [variables[name] for name in GRADIENT_VARIABLES]
        gradients = tf.gradients(losses['total_cost'], wanted)
        watched = wanted + [variables['conv0/bn/mean/EMA'], variables['conv0/bn/variance/EMA']]
        with tf.Session() as sess:
            sess.run(tf.global_variables_initializer())
            [lr] = [v for v in tf.global_variables() if v.op.name == 'learning_rate']
            lr.load(learning_rate, sess)
            before = sess.run(watched)
            summed = [np.zeros(v.shape, np.float64) for v in before[:len(wanted)]]
            for step, batch in enumerate(batches, 1):
                feed = helpers.feed(inputs, batch)
                for total, grad in zip(summed, sess.run(gradients, feed)):
                    total += grad
                sess.run(train_op, feed)
                after = sess.run(watched)
                if step < 4:
                    assert all(np.array_equal(a, b) for a, b in zip(after, before)), step
    for name, start, end, total in zip(GRADIENT_VARIABLES, before, after, summed):
        moved = end.astype(np.float64) - start
        want = -learning_rate / 8 * total
        scale = np.abs(want).max()
        assert scale > 0, name
        np.testing.assert_allclose(moved / scale, want / scale, atol=1e-4, err_msg=name)
    for start, end in zip(before[len(wanted):], after[len(wanted):]):
        np.testing.assert_array_equal(start, end)
