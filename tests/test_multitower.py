"""The GPU user's code paths on a CPU: the replicated trainer with 2 towers and multi-tower
evaluation (predict.py and EvalCallback). NCHW against NHWC is compared by the GPU check's dry
run (tests/tools/test_gpu_check.py).

The 2 towers are CPU stand-ins for 2 GPUs: `FRCNN_CPU_TOWERS=2` (utils/tf_compat.py, the one
test-only switch) makes the config count 2 tower devices and the replicated trainer sum the
gradients with a plain add_n (tensorpack's 'gpu' mode); tensorpack builds its `/gpu:0` and `/gpu:1` towers
as on a GPU machine and soft placement runs them on the CPU.

The shared run trains 12 steps of 2 towers (one image each) on 8 shapes images of 128 px, and
evaluates its 4 validation images during training and with predict.py.
"""
import json
import os
import re
import subprocess
import sys
import types

import numpy as np
import pytest

from utils import checkpoints, fingerprints, logs
from utils.tf_compat import CPU_TOWERS_ENV, num_visible_gpus, replicated_allreduce_mode, tf

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TIMEOUT_SECONDS = 1200   # per script; generous for a loaded CI machine

NUM_TRAIN, NUM_VAL, IMAGE_SIZE = 8, 4, 128
MODEL_CONFIG = [
    'MODE_FPN=True', 'MODE_MASK=True', 'DATA.TRAIN=shapes_train', 'DATA.VAL=shapes_val', 'DATA.NUM_WORKERS=0',
    'BACKBONE.RESNET_NUM_BLOCKS=[1,1,1,1]', 'BACKBONE.NORM=GN', 'BACKBONE.FREEZE_AT=0', 'FPN.NORM=GN',
    'FPN.NUM_CHANNEL=32', 'FPN.FRCNN_FC_HEAD_DIM=64', 'MRCNN.HEAD_DIM=16', 'RPN.TRAIN_PER_LEVEL_NMS_TOPK=50',
    'RPN.TEST_PER_LEVEL_NMS_TOPK=50', 'PREPROC.TRAIN_SHORT_EDGE_SIZE=[128,128]',
    'PREPROC.TEST_SHORT_EDGE_SIZE=128', 'PREPROC.MAX_SIZE=128',
]
# No random sampling in the graph: at most 5 levels x 50 proposals + the gt boxes, far fewer than
# FRCNN.BATCH_PER_IM, so every proposal is sampled and two graphs see the same rois.
DETERMINISTIC = ['FRCNN.BATCH_PER_IM=1024']
# 2 towers take 8 / 2 = 4x the steps of the batch-8 schedule [1, 2, 3]: 4, 8 and 12 steps, the ends of
# epochs 2, 4 and 6 of 2 steps; the accumulation default is 8 // 2 = 4 steps.
BASE_LR, WARMUP_INIT_LR = 0.01, 0.001
TRAIN_CONFIG = ['TRAIN.STEPS_PER_EPOCH=2', 'TRAIN.LR_SCHEDULE=[1,2,3]', 'TRAIN.WARMUP=2',
                'TRAIN.BASE_LR={}'.format(BASE_LR), 'TRAIN.WARMUP_INIT_LR={}'.format(WARMUP_INIT_LR),
                'TRAIN.EVAL_PERIOD=6', 'TRAIN.CHECKPOINT_PERIOD=6', 'FRCNN.BATCH_PER_IM=64', 'RPN.BATCH_PER_IM=64']
LAST_STEP = 12

needs_cpu_only = pytest.mark.skipif(num_visible_gpus() > 0,
                                    reason='stands CPU towers in for GPUs; this machine has real ones')


def run_script(args, towers, log_path):
    """Run one of the project's scripts with `towers` CPU stand-in GPUs (0: the plain CPU path);
    returns (returncode, output)."""
    env = dict(os.environ, PYTHONUNBUFFERED='1', CUDA_VISIBLE_DEVICES='')
    env.pop(CPU_TOWERS_ENV, None)
    if towers:
        env[CPU_TOWERS_ENV] = str(towers)
    with open(log_path, 'w') as log:
        proc = subprocess.run([sys.executable] + args, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                              timeout=TIMEOUT_SECONDS)
    with open(log_path) as f:
        return proc.returncode, f.read()


def tail(output):
    return '\n'.join(line for line in output.splitlines() if 'PredictCost' not in line)[-6000:]


def coco_scores(output):
    """'  mAP(bbox)/IoU=0.5: 0.1234' lines -> {name: value}."""
    return {m.group(1): float(m.group(2))
            for m in re.finditer(r'^\s+(mAP\([a-z]+\)/\S+): (-?[\d.]+)$', output, re.M)}


def detection_keys(results):
    """The detections of a COCO result list, as a sorted list that ignores their order."""
    return sorted((r['image_id'], r['category_id'], r['score'], tuple(r['bbox'])) for r in results)


@pytest.fixture(scope='module')
def shapes_dir(tmp_path_factory):
    from dataset.shapes import write_shapes_split

    basedir = str(tmp_path_factory.mktemp('multitower_shapes'))
    write_shapes_split(basedir, 'train', NUM_TRAIN, IMAGE_SIZE, seed=0)
    write_shapes_split(basedir, 'val', NUM_VAL, IMAGE_SIZE, seed=1)
    return basedir


@pytest.fixture(scope='module')
def replicated_run(shapes_dir, tmp_path_factory):
    """train.py with TRAINER=replicated (the default) on 2 CPU towers."""
    workdir = tmp_path_factory.mktemp('multitower_train')
    logdir = str(workdir / 'train_log')
    config = ['DATA.BASEDIR=' + shapes_dir] + MODEL_CONFIG + TRAIN_CONFIG
    returncode, output = run_script(['train.py', '--logdir', logdir, '--config'] + config, 2,
                                    str(workdir / 'train.log'))
    assert returncode == 0, tail(output)
    return types.SimpleNamespace(output=output, logdir=logdir, config=config)


# the seam ----------------------------------------------------------------------------------
def test_production_lets_tensorpack_choose_the_sum_and_the_seam_is_off_by_default(monkeypatch):
    monkeypatch.delenv(CPU_TOWERS_ENV, raising=False)
    from utils.tf_compat import cpu_towers, num_tower_devices
    # None: tensorpack's choice ('hierarchical' on 8 GPUs, else 'gpu'), never its buggy 'nccl'
    assert cpu_towers() == 0 and replicated_allreduce_mode() is None
    assert num_tower_devices() == num_visible_gpus()
    monkeypatch.setenv(CPU_TOWERS_ENV, 'two')
    with pytest.raises(ValueError, match=CPU_TOWERS_ENV):
        cpu_towers()
    monkeypatch.setenv(CPU_TOWERS_ENV, '2')
    assert cpu_towers() == 2 and replicated_allreduce_mode() == 'gpu'
    import utils.tf_compat
    monkeypatch.setattr(utils.tf_compat, 'num_visible_gpus', lambda: 1)   # never on a machine with GPUs
    with pytest.raises(ValueError, match='sees GPUs'):
        cpu_towers()


# training ------------------------------------------------------------------------------------
@needs_cpu_only
def test_two_towers_sum_the_single_tower_gradients_of_their_images(shapes_dir, monkeypatch):
    """Value level: tower k trains on image k; the gradient both towers apply is the sum of the
    towers' own gradients, and tower k's own gradient is the one a single tower computes for
    image k on the same weights."""
    from tensorpack.input_source import TensorInput
    from tensorpack.tfutils.tower import TowerContext, get_current_tower_context
    from tensorpack.train import SyncMultiGPUTrainerReplicated

    import train
    from config import config as cfg, finalize_configs
    from data import get_train_dataflow
    from dataset import register_shapes
    from utils.tf_compat import session_config

    monkeypatch.setenv(CPU_TOWERS_ENV, '2')
    cfg.update_args(['DATA.BASEDIR=' + shapes_dir] + MODEL_CONFIG + DETERMINISTIC)
    register_shapes(shapes_dir)
    finalize_configs(is_training=True)
    assert cfg.derived.num_gpus == 2 and cfg.derived.accumulate_steps == 4
    dataflow = get_train_dataflow()
    dataflow.reset_state()
    images = [dp for dp, _ in zip(dataflow, range(2))]

    model = train.build_model()
    input_names = [spec.name for spec in model.get_input_signature()]
    trainer = train.make_trainer(is_horovod=False)
    assert isinstance(trainer, SyncMultiGPUTrainerReplicated)

    def tower_inputs():
        datapoint = images[get_current_tower_context().index]
        return [tf.constant(datapoint[name]) for name in input_names]

    builder = trainer._builder
    build_all_reduce = builder.build
    local = []

    def recording_build(grad_list, get_opt_fn):
        local.extend(grad_list)      # per tower: [(that tower's own gradient, its variable)]
        return build_all_reduce(grad_list, get_opt_fn)
    monkeypatch.setattr(builder, 'build', recording_build)

    with tf.Graph().as_default() as graph:
        trainer.setup_graph(model.get_input_signature(), TensorInput(tower_inputs), model.build_graph,
                            model.get_optimizer)
        summed = builder.grads      # per tower: [(all-reduced gradient, that tower's variable)]
        sync = graph.get_operation_by_name('sync_variables/sync_variables_from_main_tower')
        with tf.Session(config=session_config()) as sess:
            sess.run([tf.global_variables_initializer(), tf.local_variables_initializer()])
            sess.run(sync)
            weights = {v.op.name: value for v, value in zip(tf.global_variables(), sess.run(tf.global_variables()))}
            tower_grads, local_grads = sess.run([[[g for g, _ in grads] for grads in summed],
                                                 [[g for g, _ in grads] for grads in local]])
    applied = [dict(zip([v.op.name for _, v in grads], values)) for grads, values in zip(summed, tower_grads)]
    own = [dict(zip([v.op.name for _, v in grads], values)) for grads, values in zip(local, local_grads)]
    assert sorted(applied[1]) == sorted('tower1/' + name for name in applied[0])
    for name, value in applied[0].items():   # the all-reduce: exactly the sum of the towers' own gradients
        np.testing.assert_allclose(value, own[0][name] + own[1]['tower1/' + name], rtol=1e-5, atol=1e-7,
                                   err_msg=name)

    # One tower on the same weights, one image at a time, its inputs constants as in the towers.
    single = []
    for datapoint in images:
        with tf.Graph().as_default():
            with TowerContext('', is_training=True):
                cost = model.build_graph(*[tf.constant(datapoint[name]) for name in input_names])
            variables = [v for v in tf.trainable_variables() if v.op.name in applied[0]]
            assert len(variables) == len(applied[0])
            gradients = tf.gradients(cost, variables)
            with tf.Session(config=session_config()) as sess:
                for var in tf.global_variables():
                    var.load(weights[var.op.name], sess)
                single.append(sess.run(gradients))

    names = [v.op.name for v in variables]

    def relative_l1(tower_grads, prefix, reference):
        """sum |tower - reference| / sum |reference| over every variable's gradient."""
        diff = sum(np.abs(tower_grads[prefix + name] - ref).sum() for name, ref in zip(names, reference))
        return diff / sum(np.abs(ref).sum() for ref in reference)

    # Tower k's own gradient is the single-tower gradient of image k, not of the other image. The
    # graphs differ (two towers, other random sampling orders), and with random weights the RPN's
    # scores are nearly tied, so a few other proposals may survive top-k and NMS: the difference
    # to the own image varies with the initial weights (measured 3e-7 to 2e-2 of the L1 norm);
    # the other image's gradient is far away.
    for k, prefix in enumerate(('', 'tower1/')):
        same, other = relative_l1(own[k], prefix, single[k]), relative_l1(own[k], prefix, single[1 - k])
        print('tower {}: relative L1 difference to its image {:.2g}, to the other image {:.2g}'.format(
            k, same, other))
        assert same < 0.1 and other > 5 * same, (k, same, other)
    for name in names:
        np.testing.assert_array_equal(applied[1]['tower1/' + name], applied[0][name], err_msg=name)
    # The two images must pull differently, or a tower fed the other's image would pass too.
    differs = [np.abs(a - b).max() > 0.1 * np.abs(a + b).max() for a, b in zip(*single)]
    assert np.mean(differs) > 0.5


@needs_cpu_only
def test_replicated_towers_stay_identical(replicated_run):
    prints = {int(m['tower']): m['fingerprint']
              for m in fingerprints.TOWER_FINGERPRINT_LOG_RE.finditer(replicated_run.output)}
    assert sorted(prints) == [0, 1], tail(replicated_run.output)
    # Logged before the epoch-end copy of tower 0's variables: the summed gradients alone kept them equal.
    assert prints[0] == prints[1]


@needs_cpu_only
def test_two_towers_scale_the_schedule_and_accumulate_four_steps(replicated_run):
    output = replicated_run.output
    assert 'Towers: 2, gradient accumulation: 4 step(s)' in output
    assert 'Training a model of 2 towers' in output
    # warmup starts at WARMUP_INIT_LR * min(8 / 2, 1) and reaches BASE_LR after WARMUP=2 steps (epoch 1)
    assert logs.logged_value(output, 'Warmup steps:') == 2
    steps = logs.logged_value(output, 'LR Schedule (steps, value):')
    assert [s for s, _ in steps] == [0, 2, 4, 8]
    assert [lr for _, lr in steps] == pytest.approx([WARMUP_INIT_LR, BASE_LR, BASE_LR * 0.1, BASE_LR * 0.01])
    assert logs.logged_value(output, 'Last step:') == LAST_STEP and logs.logged_value(output, 'Max epoch:') == 6
    assert 'Epoch 6 (global_step {}) finished'.format(LAST_STEP) in output
    assert logs.monitor_values(output, 'learning_rate')[-1] == pytest.approx(BASE_LR * 0.01)

    # Accumulation: 12 steps counted; the sums were applied and reset at steps 4, 8 and 12.
    reader = tf.train.NewCheckpointReader(checkpoints.latest_complete_checkpoint(replicated_run.logdir))
    saved = reader.get_variable_to_shape_map()
    # tower 0's counter; the replicated trainer applies gradients under the name scope 'apply_gradients'
    assert reader.get_tensor('apply_gradients/AccumGrad/counter') == LAST_STEP
    slots = [name for name in saved if name.endswith('/AccumGrad')]
    assert slots and all(not np.any(reader.get_tensor(name)) for name in slots)


# evaluation ----------------------------------------------------------------------------------
def evaluate(run, towers, tmp_dir):
    """predict.py --evaluate on the run's checkpoint with `towers` CPU towers (0: the plain CPU
    path): (COCO scores, detection_keys of its result json, log)."""
    out = os.path.join(tmp_dir, 'towers{}.json'.format(towers))
    returncode, log = run_script(['predict.py', '--load', run.logdir, '--evaluate', out, '--config'] + run.config,
                                 towers, os.path.join(tmp_dir, 'predict{}.log'.format(towers)))
    assert returncode == 0, tail(log)
    with open(out + '-shapes_val') as f:
        return coco_scores(log), detection_keys(json.load(f)), log


@pytest.fixture(scope='module')
def one_tower_evaluation(replicated_run, tmp_path_factory):
    return evaluate(replicated_run, 0, str(tmp_path_factory.mktemp('one_tower_eval')))


@needs_cpu_only
def test_eval_callback_predicts_every_image_with_two_towers(replicated_run, one_tower_evaluation):
    output = replicated_run.output
    for tower in (0, 1):
        assert "Building graph for predict tower 'tower-pred-{0}' on device /gpu:{0}".format(tower) in output
    assert logs.monitor_values(output, 'shapes_val-mAP(bbox)/IoU=0.5:0.95')
    with open(os.path.join(replicated_run.logdir, 'shapes_val-outputs{}.json'.format(LAST_STEP))) as f:
        during_training = json.load(f)
    assert {r['image_id'] for r in during_training} == set(range(1, NUM_VAL + 1))
    # The same weights through predict.py on one tower: the same detections.
    assert detection_keys(during_training) == one_tower_evaluation[1]


@needs_cpu_only
def test_predict_evaluate_with_two_towers_equals_one(replicated_run, one_tower_evaluation, tmp_path):
    scores, detections, log = evaluate(replicated_run, 2, str(tmp_path))
    assert 'shard 1/2 has images [2, 4)' in log   # each tower predicted one half
    assert one_tower_evaluation[0] and scores == one_tower_evaluation[0]
    assert one_tower_evaluation[1] and detections == one_tower_evaluation[1]
