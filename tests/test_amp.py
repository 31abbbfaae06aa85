"""Mixed precision: TRAIN.AMP / TEST.AMP (the config keys, utils/tf_compat's gate and session
options, the loss-scaling optimizer in utils/optimizers and the loss watchdog in utils/loss_watchdog,
predict.py's export note).

On this CPU the rewrite is bfloat16 through oneDNN. Run with TF_ENABLE_ONEDNN_OPTS=1 the AMP
tests train and predict for real; with TF_ENABLE_ONEDNN_OPTS=0 (or on a CPU without bfloat16)
they expect the clear error instead. The GPU's float16 loss scaling is tested here in float32
on the CPU (its graph logic, not its numerics); the float16 rewrite itself needs a GPU.
"""
import json
import os

import numpy as np
import pytest

from utils.tf_compat import tf  # noqa: I001  (must come before tensorpack)

from tensorflow.core.protobuf import rewriter_config_pb2

from config import config as cfg
from utils import tensor_names as names
from utils import loss_watchdog, optimizers, tf_compat

from tests.modeling import rcnn_helpers as helpers

BF16 = tf.bfloat16.as_datatype_enum
AMP_REASON = tf_compat.amp_unsupported_reason()
OVERFIT_STEPS = 100  # one synthetic image; 60 steps found only one of its two objects in ~1 of 4 runs
# Detections above this score are compared between float32 and TEST.AMP.
COMPARED_SCORE = 0.5
# The overfit model: GroupNorm in the backbone and FPN, which trains steadily at the demo's learning
# rate; without normalization the tiny net sits at the edge of divergence, and its detections after
# that many steps depended on the initial weights.
OVERFIT_MODEL = ('BACKBONE.NORM=GN', 'FPN.NORM=GN')
# bfloat16 keeps 8 significant bits: each rounding is off by up to 2**-9 = 0.2% of the value, and
# oneDNN accumulates convolutions in float32, so errors enter once per layer and add up over the
# ~20 layers to ~1-2% of a feature. A head trained for only OVERFIT_STEPS steps turns that into more: its box
# regression is steep, and one box edge of a 50 px object moved by 4.8 px (IoU 0.86) in one run.
# The bounds are set for such a model: IoU >= 0.75 and |score difference| <= 0.1. On a trained
# model the effect is small: the demo model's shapes_val mAP moved by 0.0004 (docs/amp-study.md).
MIN_IOU = 0.75
MAX_SCORE_DIFF = 0.1


def bfloat16_ops(run_metadata):
    """{op type: count} of the nodes computing in bfloat16 in a step's partition graphs."""
    counts = {}
    for graph in run_metadata.partition_graphs:
        for node in graph.node:
            if any(value.type == BF16 for key, value in node.attr.items() if key in ('T', 'DstT', 'dtype')):
                counts[node.op] = counts.get(node.op, 0) + 1
    return counts


def run_with_metadata(sess, fetches, feed_dict):
    run_metadata = tf.RunMetadata()
    values = sess.run(fetches, feed_dict, options=tf.RunOptions(output_partition_graphs=True),
                      run_metadata=run_metadata)
    return values, run_metadata


def iou(box_a, box_b):
    x1, y1 = np.maximum(box_a[:2], box_b[:2])
    x2, y2 = np.minimum(box_a[2:], box_b[2:])
    inter = max(x2 - x1, 0) * max(y2 - y1, 0)
    area = (box_a[2] - box_a[0]) * (box_a[3] - box_a[1]) + (box_b[2] - box_b[0]) * (box_b[3] - box_b[1])
    return inter / (area - inter)


def expect_amp_error(key):
    with pytest.raises(ValueError, match=key.replace('.', r'\.') + r'=True cannot run: .*' +
                       ('TF_ENABLE_ONEDNN_OPTS' if not tf_compat.onednn_enabled() else 'bfloat16')):
        tf_compat.check_amp_supported(key)


@pytest.fixture(scope='module')
def amp_trained(tmp_path_factory):
    """Overfit the tiny FPN Mask R-CNN on one synthetic image with TRAIN.AMP=True, in a session
    configured as train.py's; None where AMP can't run here."""
    if AMP_REASON is not None:
        return None
    helpers.configure('TRAIN.AMP=True', *OVERFIT_MODEL)
    datapoint = helpers.synthetic_datapoint()
    checkpoint = str(tmp_path_factory.mktemp('amp') / 'model')
    with tf.Graph().as_default():
        tf.set_random_seed(1)
        model = helpers.build_model()
        inputs, cost, train_op = helpers.build_training_graph(model)
        lr = [v for v in tf.global_variables() if v.op.name == 'learning_rate'][0]
        saver = tf.train.Saver()
        costs = []
        with tf.Session(config=tf_compat.session_config(amp=cfg.TRAIN.AMP)) as sess:
            sess.run(tf.global_variables_initializer())
            for step in range(OVERFIT_STEPS):
                sess.run(lr.assign(min(0.01 + 0.007 * step, 0.15)))   # a short warmup to the demo's rate
                if step == 0:
                    (value, _), first_step = run_with_metadata(sess, [cost, train_op], helpers.feed(inputs, datapoint))
                else:
                    value, _ = sess.run([cost, train_op], helpers.feed(inputs, datapoint))
                costs.append(value)
            saver.save(sess, checkpoint)
    return dict(costs=costs, bf16_ops=bfloat16_ops(first_step), checkpoint=checkpoint,
                image=datapoint[names.IMAGE])


def predict(checkpoint, image, test_amp):
    """(boxes, scores, labels) of the inference graph on `image`, in a session made by
    predict.py's `_session_creator` for TEST.AMP=`test_amp`; also the bfloat16 op counts."""
    import predict as predict_script

    helpers.configure('TEST.AMP={}'.format(test_amp), 'TEST.RESULT_SCORE_THRESH=0.05', *OVERFIT_MODEL,
                      is_training=False)
    with tf.Graph().as_default():
        model = helpers.build_model()
        inputs = helpers.build_inference_graph(model)
        graph = tf.get_default_graph()
        outputs = [graph.get_tensor_by_name(name + ':0') for name in names.OUTPUT_NAMES]
        sess = predict_script._session_creator().create_session()
        try:
            tf.train.Saver().restore(sess, checkpoint)
            values, run_metadata = run_with_metadata(sess, outputs, {inputs[names.IMAGE]: image})
        finally:
            sess.close()
    return values, bfloat16_ops(run_metadata)


# training --------------------------------------------------------------------------------
def test_amp_training_has_finite_decreasing_losses(amp_trained):
    if amp_trained is None:
        return expect_amp_error('TRAIN.AMP')
    costs = amp_trained['costs']
    assert np.all(np.isfinite(costs)), costs
    # It learns: ~0.55x measured; weight decay (~0.6 of the first cost) barely moves in so few steps.
    assert np.mean(costs[-5:]) < 0.65 * costs[0], costs


def test_amp_training_step_computes_in_bfloat16(amp_trained):
    """The step really ran through oneDNN's bfloat16 rewrite: forward convolutions and matmuls in
    bfloat16, and casts into it; convolution gradients kept float32 (tf_compat.AMP_CPU_FLOAT32_OPS).
    A float32 session of the same graph has no bfloat16 at all (next test)."""
    if amp_trained is None:
        return expect_amp_error('TRAIN.AMP')
    ops = amp_trained['bf16_ops']
    assert ops.get('Cast', 0) > 0, ops
    assert any('Conv2D' in op and 'Backprop' not in op for op in ops), ops
    assert any('MatMul' in op for op in ops), ops
    assert not any('Conv2DBackprop' in op for op in ops), ops


def test_float32_training_step_has_no_bfloat16():
    helpers.configure()
    datapoint = helpers.synthetic_datapoint()
    with tf.Graph().as_default():
        model = helpers.build_model()
        inputs, cost, train_op = helpers.build_training_graph(model)
        with tf.Session(config=tf_compat.session_config(amp=cfg.TRAIN.AMP)) as sess:
            sess.run(tf.global_variables_initializer())
            (value, _), run_metadata = run_with_metadata(sess, [cost, train_op], helpers.feed(inputs, datapoint))
    assert np.isfinite(value)
    assert bfloat16_ops(run_metadata) == {}


def test_amp_checkpoint_variables_are_float32(amp_trained):
    if amp_trained is None:
        return expect_amp_error('TRAIN.AMP')
    reader = tf.train.NewCheckpointReader(amp_trained['checkpoint'])
    dtypes = reader.get_variable_to_dtype_map()
    not_float32 = {name: dtype for name, dtype in dtypes.items() if dtype != tf.float32}
    assert len(dtypes) > 50
    assert set(not_float32) <= {'global_step'}, not_float32


def test_amp_training_with_two_images_per_tower():
    """TRAIN.AMP=True with TRAIN.BATCH_SIZE_PER_GPU=2 (the batched graph, two images of different
    padded sizes): a few steps with finite losses, computed through the bfloat16 rewrite."""
    if AMP_REASON is not None:
        return expect_amp_error('TRAIN.AMP')
    from dataflow.batching import pad_batch
    helpers.configure('TRAIN.AMP=True', 'TRAIN.BATCH_SIZE_PER_GPU=2')
    batch = pad_batch([helpers.synthetic_datapoint(),
                       helpers.synthetic_datapoint(boxes=((10, 12, 60, 50),), shape_hw=(96, 128), seed=3)],
                      cfg.FPN.RESOLUTION_REQUIREMENT)
    with tf.Graph().as_default():
        tf.set_random_seed(1)
        inputs, _, train_op = helpers.build_training_graph(helpers.build_model())
        losses = helpers.loss_tensors()
        with tf.Session(config=tf_compat.session_config(amp=cfg.TRAIN.AMP)) as sess:
            sess.run(tf.global_variables_initializer())
            (first, _), run_metadata = run_with_metadata(sess, [losses, train_op], helpers.feed(inputs, batch))
            history = [first] + [sess.run([losses, train_op], helpers.feed(inputs, batch))[0] for _ in range(2)]
    for values in history:
        assert all(np.isfinite(v) for v in values.values()), values
    ops = bfloat16_ops(run_metadata)
    assert ops.get('Cast', 0) > 0, ops
    assert any('Conv2D' in op and 'Backprop' not in op for op in ops), ops
    assert any('MatMul' in op for op in ops), ops


# inference -------------------------------------------------------------------------------
def test_test_amp_detections_close_to_float32(amp_trained):
    """The AMP-trained checkpoint loads into a float32 predictor and into a TEST.AMP one; their
    confident detections agree within MIN_IOU / MAX_SCORE_DIFF (derived at the top)."""
    if amp_trained is None:
        return expect_amp_error('TEST.AMP')
    (boxes, scores, labels), fp32_ops = predict(amp_trained['checkpoint'], amp_trained['image'], test_amp=False)
    (amp_boxes, amp_scores, amp_labels), amp_ops = predict(amp_trained['checkpoint'], amp_trained['image'],
                                                           test_amp=True)
    assert fp32_ops == {} and amp_ops.get('Cast', 0) > 0 and any('Conv2D' in op for op in amp_ops), amp_ops
    confident = np.flatnonzero(scores >= COMPARED_SCORE)
    assert len(confident) >= 2, scores   # the image has two objects; the overfit model finds them
    for k in confident:
        same_class = np.flatnonzero(amp_labels == labels[k])
        assert len(same_class), (labels[k], amp_labels)
        overlaps = [iou(boxes[k], amp_boxes[j]) for j in same_class]
        best = same_class[int(np.argmax(overlaps))]
        assert max(overlaps) >= MIN_IOU, (boxes[k], amp_boxes[best])
        assert abs(scores[k] - amp_scores[best]) <= MAX_SCORE_DIFF, (scores[k], amp_scores[best])


def test_float32_checkpoint_loads_into_amp_inference(tmp_path):
    if AMP_REASON is not None:
        return expect_amp_error('TEST.AMP')
    helpers.configure(*OVERFIT_MODEL, is_training=False)   # the model predict() builds
    image = helpers.synthetic_datapoint()[names.IMAGE]
    checkpoint = str(tmp_path / 'fp32')
    with tf.Graph().as_default():
        helpers.build_inference_graph(helpers.build_model())
        with tf.Session() as sess:
            sess.run(tf.global_variables_initializer())
            tf.train.Saver().save(sess, checkpoint)
    (boxes, scores, labels), ops = predict(checkpoint, image, test_amp=True)
    assert ops.get('Cast', 0) > 0
    assert boxes.shape == (len(scores), 4) and np.all(np.isfinite(boxes)) and np.all(np.isfinite(scores))


# where AMP can't run ------------------------------------------------------------------------
def test_amp_error_with_onednn_off(monkeypatch):
    monkeypatch.setattr(tf_compat, 'num_visible_gpus', lambda: 0)
    monkeypatch.setattr(tf_compat, 'onednn_enabled', lambda: False)
    monkeypatch.setenv('TF_ENABLE_ONEDNN_OPTS', '0')
    with pytest.raises(ValueError, match=r"TRAIN\.AMP=True cannot run: .*oneDNN.*TF_ENABLE_ONEDNN_OPTS='0'"):
        tf_compat.check_amp_supported('TRAIN.AMP')
    with pytest.raises(ValueError, match=r'TEST\.AMP=True cannot run'):
        tf_compat.session_config(amp=True)


def test_amp_error_without_bfloat16_instructions(monkeypatch):
    monkeypatch.setattr(tf_compat, 'num_visible_gpus', lambda: 0)
    monkeypatch.setattr(tf_compat, '_cpu_flags', lambda: {'avx2', 'avx512f', 'avx512_vnni'})
    monkeypatch.setattr(tf_compat, 'onednn_enabled', lambda: True)
    with pytest.raises(ValueError, match=r'TEST\.AMP=True cannot run: .*no bfloat16 instructions.*avx512_bf16'):
        tf_compat.check_amp_supported('TEST.AMP')


def test_amp_error_on_gpu_without_tensor_cores(monkeypatch):
    gpu = tf_compat._tf.config.PhysicalDevice('/physical_device:GPU:0', 'GPU')
    monkeypatch.setattr(tf_compat, 'num_visible_gpus', lambda: 1)
    monkeypatch.setattr(tf_compat._tf.config, 'list_physical_devices', lambda kind=None: [gpu])
    monkeypatch.setattr(tf_compat._tf.config.experimental, 'get_device_details',
                        lambda device: {'compute_capability': (6, 1)})
    with pytest.raises(ValueError, match=r'compute capability \(6, 1\).*tensor cores'):
        tf_compat.check_amp_supported('TRAIN.AMP')
    monkeypatch.setattr(tf_compat._tf.config.experimental, 'get_device_details',
                        lambda device: {'compute_capability': (7, 0)})
    config = tf_compat.session_config(amp=True)
    assert config.graph_options.rewrite_options.auto_mixed_precision == rewriter_config_pb2.RewriterConfig.ON
    assert tf_compat.amp_compute_dtype() == 'float16'


@pytest.mark.parametrize('setting', ['0', '1'])
def test_onednn_detection_follows_the_environment(setting):
    """TensorFlow decides once per process; onednn_enabled() reports that decision."""
    import subprocess
    import sys
    code = 'from utils.tf_compat import onednn_enabled, onednn_status; print(onednn_enabled(), onednn_status())'
    proc = subprocess.run([sys.executable, '-c', code], cwd=os.path.dirname(os.path.dirname(__file__)),
                          env=dict(os.environ, TF_ENABLE_ONEDNN_OPTS=setting), stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, timeout=300)
    last = proc.stdout.strip().splitlines()[-1]
    assert last == '{} oneDNN: {} (TF_ENABLE_ONEDNN_OPTS={})'.format(setting == '1', 'on' if setting == '1' else 'off',
                                                                     setting)


def test_onednn_status_names_the_cpu_flags_when_the_environment_is_silent(monkeypatch):
    monkeypatch.delenv('TF_ENABLE_ONEDNN_OPTS', raising=False)
    monkeypatch.setattr(tf_compat, '_cpu_flags', lambda: {'avx2', 'avx512_vnni'})
    assert "TensorFlow's default on a CPU with avx512_vnni" in tf_compat.onednn_status()
    monkeypatch.setattr(tf_compat, '_cpu_flags', lambda: {'avx2'})
    assert "TensorFlow's default on a CPU without avx512_vnni/" in tf_compat.onednn_status()


def test_amp_error_from_the_scripts_where_amp_cannot_run(monkeypatch, tmp_path):
    """predict.py stops before loading anything; train.py before building its dataflow."""
    import predict as predict_script
    import train as train_script

    monkeypatch.setattr(tf_compat, 'amp_unsupported_reason', lambda: 'no reason at all')
    args = ['--config', 'DATA.TRAIN=shapes_train', 'DATA.VAL=shapes_val', 'DATA.BASEDIR=' + str(tmp_path)]
    with pytest.raises(ValueError, match=r'TEST\.AMP=True cannot run: no reason at all'):
        predict_script.main(['--load', str(tmp_path / 'missing'), '--benchmark'] + args + ['TEST.AMP=True'])
    with pytest.raises(ValueError, match=r'TRAIN\.AMP=True cannot run: no reason at all'):
        train_script.main(['--logdir', str(tmp_path / 'log')] + args + ['TRAIN.AMP=True'])
    assert not os.path.exists(str(tmp_path / 'log'))


# defaults keep today's graph ----------------------------------------------------------------
def test_defaults_change_neither_session_nor_optimizer():
    assert cfg.TRAIN.AMP is False and cfg.TEST.AMP is False
    options = tf_compat.session_config().graph_options.rewrite_options
    assert options.auto_mixed_precision == options.auto_mixed_precision_onednn_bfloat16 == \
        rewriter_config_pb2.RewriterConfig.DEFAULT
    helpers.configure()
    with tf.Graph().as_default():
        opt = helpers.build_model().optimizer()
        assert type(opt) is tf.train.MomentumOptimizer
        assert not optimizers.loss_scale_step_tensors(tf.get_default_graph())


def test_config_rejects_non_bool_amp():
    with pytest.raises(ValueError, match=r'TRAIN\.AMP=1: expected bool'):
        cfg.update_args(['TRAIN.AMP=1'])


# float16 loss scaling (the GPU path), run in float32 on the CPU ------------------------------
@pytest.mark.parametrize('accumulate', [1, 2])
def test_model_optimizer_wraps_loss_scaling_outermost_for_float16(monkeypatch, accumulate):
    import modeling.rcnn as rcnn

    monkeypatch.setattr(rcnn, 'amp_compute_dtype', lambda: 'float16')
    helpers.configure('TRAIN.AMP=True', 'TRAIN.ACCUMULATE_STEPS={}'.format(accumulate))
    with tf.Graph().as_default():
        opt = helpers.build_model().optimizer()
        assert isinstance(opt, tf.mixed_precision.MixedPrecisionLossScaleOptimizer)
        inner = opt._optimizer
        assert isinstance(inner, optimizers.AccumGradOptimizer if accumulate > 1 else tf.train.MomentumOptimizer)
        names_ = sorted(v.op.name for v in tf.global_variables())
        assert names_ == ['AMP/current_loss_scale', 'AMP/good_steps', 'learning_rate']


def _loss_scaled_graph(accumulate):
    """w [2] float32, loss = sum(w * x) with x fed; Momentum (lr 1, no momentum) under optional
    accumulation and dynamic loss scaling, as GeneralizedRCNN.optimizer builds it for float16."""
    x = tf.placeholder(tf.float32, [2])
    w = tf.get_variable('w', initializer=[1., 2.])
    loss = tf.reduce_sum(w * x, name='total_cost')
    opt = tf.train.MomentumOptimizer(1., 0.)
    if accumulate > 1:
        opt = optimizers.AccumGradOptimizer(opt, accumulate)
    opt = optimizers.with_dynamic_loss_scaling(opt)
    train_op = opt.apply_gradients(opt.compute_gradients(loss, [w]))
    return x, w, train_op


def test_loss_scaling_skips_non_finite_steps_and_halves_the_scale():
    with tf.Graph().as_default():
        x, w, train_op = _loss_scaled_graph(accumulate=1)
        (applied, scale_used), = optimizers.loss_scale_step_tensors(tf.get_default_graph())
        with tf.Session() as sess:
            sess.run(tf.global_variables_initializer())
            ok = sess.run([applied, scale_used, train_op], {x: [0.5, 0.25]})
            np.testing.assert_allclose(sess.run(w), [0.5, 1.75])   # w - grad: unscaled exactly
            bad = sess.run([applied, scale_used, train_op], {x: [np.inf, 1.]})
            np.testing.assert_allclose(sess.run(w), [0.5, 1.75])   # skipped
            after = sess.run(scale_used, {x: [0., 0.]})
    assert ok[:2] == [True, 2. ** 15] and bad[:2] == [False, 2. ** 15] and after == 2. ** 14


def test_loss_scaling_drops_skipped_steps_from_accumulation():
    with tf.Graph().as_default():
        x, w, train_op = _loss_scaled_graph(accumulate=2)
        with tf.Session() as sess:
            sess.run(tf.global_variables_initializer())
            sess.run(train_op, {x: [1., 1.]})
            sess.run(train_op, {x: [np.nan, 1.]})      # skipped: neither summed nor counted
            np.testing.assert_allclose(sess.run(w), [1., 2.])
            sess.run(train_op, {x: [1., 3.]})          # second accumulated step: applies the sum
            np.testing.assert_allclose(sess.run(w), [-1., -2.])


class _FakeTrainer:
    global_step = 7


def test_watchdog_tolerates_steps_loss_scaling_skips_until_the_floor(log_messages):
    with tf.Graph().as_default():
        x, w, train_op = _loss_scaled_graph(accumulate=1)
        scale = [v for v in tf.global_variables() if v.op.name == 'AMP/current_loss_scale'][0]
        watchdog = loss_watchdog.make_nonfinite_loss_callback()
        watchdog.setup_graph(_FakeTrainer())
        fetches = watchdog._before_run(None).fetches

        def step(sess, feed):
            results = sess.run([fetches, train_op], {x: feed})[0]
            watchdog._after_run(None, tf.train.SessionRunValues(results=results, options=None, run_metadata=None))

        with tf.Session() as sess:
            sess.run(tf.global_variables_initializer())
            step(sess, [1., 1.])
            step(sess, [np.inf, 1.])    # non-finite loss and gradients: skipped on purpose
            assert any('loss scaling skipped' in m for m in log_messages), log_messages
            scale.load(1., sess)
            with pytest.raises(FloatingPointError, match=r'step 7 even with the loss scale at its floor of 1'):
                step(sess, [np.inf, 1.])


def test_check_losses_finite_with_loss_scaling():
    assert loss_watchdog.check_losses_finite(1, ['total_cost'], [1.], loss_scale_skipped=True, loss_scale=8.)
    assert not loss_watchdog.check_losses_finite(2, ['total_cost'], [np.inf], loss_scale_skipped=True, loss_scale=2.)
    with pytest.raises(FloatingPointError, match='floor of 1'):
        loss_watchdog.check_losses_finite(3, ['total_cost'], [np.nan], loss_scale_skipped=True, loss_scale=1.)
    with pytest.raises(FloatingPointError, match=r'step 4: total_cost=nan'):
        loss_watchdog.check_losses_finite(4, ['total_cost'], [np.nan], loss_scale_skipped=False, loss_scale=8.)


# exports and EvalCallback -------------------------------------------------------------------
@pytest.mark.parametrize('test_amp', [False, True])
def test_export_precision_note(monkeypatch, tmp_path, test_amp):
    import predict as predict_script

    monkeypatch.setattr(predict_script, 'amp_compute_dtype', lambda: 'bfloat16')
    cfg.update_args(['TEST.AMP={}'.format(test_amp)])
    pb = str(tmp_path / 'frozen.pb')
    paths = predict_script.precision_note_paths(pb, str(tmp_path / 'serving'))
    assert paths == [pb + '.precision.json', str(tmp_path / 'serving' / 'assets.extra' / 'precision.json')]
    predict_script.write_precision_note(paths[0])
    with open(paths[0]) as f:
        note = json.load(f)
    assert note['TEST.AMP'] is test_amp and note['graph_dtype'] == 'float32'
    assert note['compute_dtype'] == ('bfloat16' if test_amp else 'float32')
    assert ('auto_mixed_precision_onednn_bfloat16=ON' in note['note']) is test_amp
    with pytest.raises(ValueError, match='exists already'):
        predict_script.do_export(None, pb, None)


def test_variables_read_by_follows_the_outputs_only():
    from eval import variables_read_by

    with tf.Graph().as_default():
        a = tf.get_variable('a', initializer=1.)
        b = tf.get_variable('b', initializer=2.)
        tf.get_variable('c', initializer=3.)
        out = tf.identity(a * 2. + b)
        assert [v.op.name for v in variables_read_by([out])] == ['a', 'b']


def test_eval_callback_session_of_its_own_gets_the_training_weights():
    """TEST.AMP != TRAIN.AMP: EvalCallback's predictors run in their own session (with TEST.AMP's
    rewrite where it can run) on the variables copied from the training session."""
    from tensorpack.predict import OnlinePredictor

    from eval import EvalCallback, EvalSettings, InferenceSettings, variables_read_by

    class Trainer:
        pass

    with tf.Graph().as_default() as graph:
        x = tf.placeholder(tf.float32, [], name='x')
        w = tf.get_variable('w', initializer=1.)
        out = tf.identity(x * w, name='out')
        settings = EvalSettings(inference=InferenceSettings(8, 8, False), eval_period=1, num_gpus=0, horovod=False,
                                test_amp=AMP_REASON is None, train_amp=False)
        callback = EvalCallback('split', ['x'], ['out'], output_dir='.', settings=settings)
        callback.graph, callback.trainer = graph, Trainer()
        callback._predictors = [OnlinePredictor([x], [out])]
        callback._weights = variables_read_by([out])
        with tf.Session() as training_sess:
            training_sess.run(tf.global_variables_initializer())
            training_sess.run(w.assign(5.))
            callback.trainer.sess = training_sess
            callback._open_own_session()
            with pytest.raises(tf.errors.FailedPreconditionError):
                callback._predictors[0](3.)    # nothing copied yet: its own, uninitialized session
            callback._copy_weights()
            assert callback._predictors[0](3.)[0] == 15.
            callback._sess.close()
