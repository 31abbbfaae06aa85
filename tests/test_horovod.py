"""Horovod: train.py under `horovodrun -np 2 --gloo` on CPU processes, SyncBN, the schedule, errors.

The two-rank runs share one tiny config: a shapes dataset in COCO layout (16 training, 8
validation images of 128 px), ResNet [1,1,1,1] + GN, 64-channel FPN. The main run trains 32
steps (8 epochs of 4), evaluates once at the end and saves one checkpoint; its output is parsed
by several tests. Ranks print one line each for their variables' fingerprint and their first
training images (utils/fingerprints.py); horovodrun prefixes every line with `[rank]<stdout>:`.
"""
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import types

import pytest

from config import config as cfg
from config import finalize_configs, num_towers
from utils import checkpoints, logs
from utils import fingerprints as rank_fingerprints
from utils.tf_compat import detect_devices

from config import combine_overrides

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HOROVODRUN = os.path.join(os.path.dirname(sys.executable), 'horovodrun')
TIMEOUT_SECONDS = 240   # per subprocess; a hang fails the test instead of blocking CI

try:
    import horovod.tensorflow  # noqa: F401
    _NO_HOROVOD = None if os.path.isfile(HOROVODRUN) else 'no horovodrun next to {}'.format(sys.executable)
except ImportError as err:
    _NO_HOROVOD = 'Horovod is not installed ({}); `make horovod` builds it'.format(err)
needs_horovod = pytest.mark.skipif(_NO_HOROVOD is not None, reason=str(_NO_HOROVOD))

NUM_TRAIN, NUM_VAL, IMAGE_SIZE = 16, 8, 128
MODEL_CONFIG = [
    'DATA.TRAIN=coco_train2017', 'DATA.VAL=coco_val2017',
    'BACKBONE.RESNET_NUM_BLOCKS=[1,1,1,1]', 'BACKBONE.NORM=GN', 'FPN.NORM=GN', 'FPN.NUM_CHANNEL=64',
    'FPN.FRCNN_FC_HEAD_DIM=256', 'MRCNN.HEAD_DIM=64', 'PREPROC.TEST_SHORT_EDGE_SIZE=128', 'PREPROC.MAX_SIZE=192',
    'RPN.TEST_PER_LEVEL_NMS_TOPK=100',
]
TRAIN_CONFIG = [
    'TRAINER=horovod', 'BACKBONE.FREEZE_AT=0', 'FRCNN.BATCH_PER_IM=64', 'RPN.BATCH_PER_IM=64',
    'PREPROC.TRAIN_SHORT_EDGE_SIZE=[128,128]', 'RPN.TRAIN_PER_LEVEL_NMS_TOPK=200', 'TRAIN.ACCUMULATE_STEPS=1',
    'TRAIN.BASE_LR=0.005', 'TRAIN.WARMUP=10',
]
# 2 ranks take 8 / 2 = 4x the steps of the batch-8 schedule [4, 5, 8]: 16, 20, 32 steps,
# the ends of epochs 4, 5 and 8 of 4 steps.
MAIN_RUN_CONFIG = ['DATA.NUM_WORKERS=1', 'TRAIN.STEPS_PER_EPOCH=4', 'TRAIN.LR_SCHEDULE=[4,5,8]',
                   'TRAIN.EVAL_PERIOD=8', 'TRAIN.CHECKPOINT_PERIOD=8']
STALL_WARNINGS = ('waiting for remainder of ranks', 'Stalled ranks')


# helpers ---------------------------------------------------------------------------------
def write_coco_shapes(basedir):
    """Tiny shapes splits in COCO's layout: basedir/{train2017,val2017}/ + annotations/instances_*.json."""
    from dataset.shapes import write_shapes_split

    for split, coco_split, count in (('train', 'train2017', NUM_TRAIN), ('val', 'val2017', NUM_VAL)):
        write_shapes_split(basedir, split, count, IMAGE_SIZE, seed=0)
        os.rename(os.path.join(basedir, 'shapes_' + split), os.path.join(basedir, coco_split))
        os.rename(os.path.join(basedir, 'annotations', 'instances_shapes_{}.json'.format(split)),
                  os.path.join(basedir, 'annotations', 'instances_{}.json'.format(coco_split)))


def run_command(cmd, cwd, log_path):
    """Run `cmd` in its own process group; returns (returncode, output). Kills the group on timeout."""
    env = dict(os.environ, PYTHONUNBUFFERED='1', TF_CPP_MIN_LOG_LEVEL='2')
    with open(log_path, 'w') as log:
        proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            returncode = proc.wait(timeout=TIMEOUT_SECONDS)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)   # horovodrun, both ranks and their data workers
            proc.wait()
            returncode = 'timeout after {} s'.format(TIMEOUT_SECONDS)
    with open(log_path) as f:
        return returncode, f.read()


def horovodrun_train(workdir, logdir, config, extra_args=()):
    cmd = [sys.executable, HOROVODRUN, '-np', '2', '-H', 'localhost:2', '--gloo',
           sys.executable, os.path.join(ROOT, 'train.py'), '--logdir', logdir, *extra_args, '--config', *config]
    return run_command(cmd, workdir, os.path.join(os.path.dirname(workdir), os.path.basename(workdir) + '.log'))


def predict_evaluate(logdir, data_dir, workdir):
    """`predict.py --evaluate out.json` of `logdir`'s newest checkpoint in `workdir`: (returncode, output)."""
    cmd = [sys.executable, os.path.join(ROOT, 'predict.py'), '--load', logdir, '--evaluate', 'out.json',
           '--config', 'DATA.BASEDIR=' + data_dir] + MODEL_CONFIG
    return run_command(cmd, workdir, os.path.join(workdir, 'predict.log'))


def tail(output):
    """The end of a run's output for an assertion message, without TensorFlow's cost-model noise."""
    return '\n'.join(line for line in output.splitlines() if 'PredictCost' not in line)[-6000:]


def fingerprints(output):
    """{(rank, when): fingerprint} from the FINGERPRINT_LOG_RE lines."""
    return {(int(m['rank']), m['when']): m['fingerprint']
            for m in rank_fingerprints.FINGERPRINT_LOG_RE.finditer(output)}


def first_images(output):
    found = {}
    for line in output.splitlines():
        match = rank_fingerprints.FIRST_IMAGES_LOG_RE.search(line)
        if match:
            found[int(match['rank'])] = match['names'].split()
    return found


def rank_lines(output, rank):
    prefix = '[{}]<stdout>:'.format(rank)
    return [line for line in output.splitlines() if prefix in line]


def rank0(output):
    """Rank 0's lines of horovodrun's output, as one text for utils.logs' readers."""
    return '\n'.join(rank_lines(output, 0))


# the shared runs -------------------------------------------------------------------------
@pytest.fixture(scope='module')
def data_dir(tmp_path_factory):
    basedir = str(tmp_path_factory.mktemp('horovod_data'))
    write_coco_shapes(basedir)
    return basedir


@pytest.fixture(scope='module')
def main_run(tmp_path_factory, data_dir):
    """The 2-rank GN run: trains 8 epochs of 4 steps, evaluates and saves at the end."""
    workdir = str(tmp_path_factory.mktemp('horovod_main'))
    logdir = os.path.join(workdir, 'train_log')
    config = ['DATA.BASEDIR=' + data_dir] + MODEL_CONFIG + TRAIN_CONFIG + MAIN_RUN_CONFIG
    returncode, output = horovodrun_train(workdir, logdir, config)
    return types.SimpleNamespace(returncode=returncode, output=output, workdir=workdir, logdir=logdir,
                                 data_dir=data_dir)


@pytest.fixture
def finished_main_run(main_run):
    assert main_run.returncode == 0, tail(main_run.output)
    return main_run


# the main run ----------------------------------------------------------------------------
@needs_horovod
def test_ranks_start_apart_and_end_in_step(finished_main_run):
    prints = fingerprints(finished_main_run.output)
    init = [prints[(rank, 'after-init-before-broadcast')] for rank in (0, 1)]
    assert init[0] != init[1], 'per-rank seeds should give different initial variables'
    # The last epoch's fingerprints come before the epoch-end broadcast: the summed gradients alone
    # kept the ranks identical over its steps.
    for when in ('last-epoch-before-broadcast', 'after-training'):
        final = [prints[(rank, when)] for rank in (0, 1)]
        assert final[0] == final[1], when
        assert final[0] not in init, 'training should change the variables'


@needs_horovod
def test_only_rank_zero_writes_files(finished_main_run):
    run = finished_main_run
    assert os.listdir(run.workdir) == ['train_log']   # rank 1 wrote no log directory of its own
    files = os.listdir(run.logdir)
    assert checkpoints.list_checkpoints(run.logdir) == [os.path.join(run.logdir, 'model-32')]
    assert len([f for f in files if f.startswith('events.out.tfevents')]) == 1
    assert 'log.log' in files
    assert not [f for f in files if '-part' in f], 'evaluation part files should have been gathered and removed'
    saved = [line for line in run.output.splitlines() if 'Model saved to' in line]
    assert saved and all('[0]<stdout>:' in line for line in saved)


@needs_horovod
def test_ranks_read_different_images(finished_main_run):
    names = first_images(finished_main_run.output)
    assert sorted(names) == [0, 1]
    assert all(len(names[rank]) == 4 and all(n.endswith('.jpg') for n in names[rank]) for rank in (0, 1))
    assert names[0] != names[1]


@needs_horovod
def test_evaluation_runs_on_both_ranks_without_stalls(finished_main_run):
    run = finished_main_run
    for rank in (0, 1):
        assert any('Running evaluation on coco_val2017' in line for line in rank_lines(run.output, rank)), rank
    with open(os.path.join(run.logdir, 'coco_val2017-outputs32.json')) as f:
        results = json.load(f)
    # rank 0 predicted images 1..4, rank 1 images 5..8 (one contiguous shard each)
    image_ids = {r['image_id'] for r in results}
    assert image_ids & {1, 2, 3, 4} and image_ids & {5, 6, 7, 8}
    assert logs.monitor_values(rank0(run.output), 'coco_val2017-mAP(bbox)/IoU=0.5:0.95')
    assert not [w for w in STALL_WARNINGS if w in run.output]


@needs_horovod
def test_schedule_is_scaled_for_two_ranks(finished_main_run):
    output = finished_main_run.output
    assert 'Towers: 2, gradient accumulation: 1 step(s)' in output
    log = rank0(output)
    # warmup: 1e-5 * min(8 / 2, 1) = 1e-5 at step 0, BASE_LR after WARMUP=10 steps
    assert logs.logged_value(log, 'Warmup steps:') == 10
    steps = logs.logged_value(log, 'LR Schedule (steps, value):')
    assert [s for s, _ in steps] == [0, 10, 16, 20]
    assert [lr for _, lr in steps] == pytest.approx([1e-5, 0.005, 0.0005, 0.00005])
    assert logs.logged_value(log, 'Last step:') == 32 and logs.logged_value(log, 'Max epoch:') == 8
    assert 'Epoch 8 (global_step 32) finished' in output
    assert logs.monitor_values(log, 'learning_rate')[-1] == pytest.approx(0.00005)


@needs_horovod
def test_final_checkpoint_evaluates_with_predict(finished_main_run, tmp_path):
    run = finished_main_run
    returncode, output = predict_evaluate(run.logdir, run.data_dir, str(tmp_path))
    assert returncode == 0, tail(output)
    assert 'Restoring checkpoint from {}'.format(os.path.join(run.logdir, 'model-32')) in output
    with open(tmp_path / 'out.json-coco_val2017') as f:
        offline = json.load(f)
    with open(os.path.join(run.logdir, 'coco_val2017-outputs32.json')) as f:
        during_training = json.load(f)

    # Same weights, same images: (nearly) the same detections; a different model would share almost none.
    def keys(results):
        return {(r['image_id'], r['category_id'], round(r['score'], 3)) for r in results}
    assert offline
    assert len(keys(offline) & keys(during_training)) >= 0.9 * len(keys(during_training))


@needs_horovod
def test_resume_continues_on_every_rank(finished_main_run, tmp_path):
    """Only rank 0 reads the log directory; all ranks must still continue from its epoch."""
    workdir = str(tmp_path / 'resume')
    logdir = os.path.join(workdir, 'train_log')
    shutil.copytree(finished_main_run.logdir, logdir)
    # the schedule now ends at 9 x 4 = 36 steps: epoch 9 is left after the 32 done
    config = combine_overrides(
        ['DATA.BASEDIR=' + finished_main_run.data_dir] + MODEL_CONFIG + TRAIN_CONFIG + MAIN_RUN_CONFIG,
        ['DATA.NUM_WORKERS=0', 'TRAIN.LR_SCHEDULE=[4,5,9]', 'TRAIN.EVAL_PERIOD=0', 'TRAIN.CHECKPOINT_PERIOD=1'])
    returncode, output = horovodrun_train(workdir, logdir, config)
    assert returncode == 0, tail(output)

    assert 'is at step 32: continuing with epoch 9' in output
    for rank in (0, 1):
        started = [line.split('Start Epoch ')[1] for line in rank_lines(output, rank) if 'Start Epoch ' in line]
        assert started == ['9 ...'], (rank, started)
    prints = fingerprints(output)
    # rank 0 restored exactly the variables the first run ended with; rank 1 got them by broadcast
    assert prints[(0, 'after-init-before-broadcast')] == fingerprints(finished_main_run.output)[(0, 'after-training')]
    assert prints[(1, 'after-init-before-broadcast')] != prints[(0, 'after-init-before-broadcast')]
    assert prints[(0, 'after-training')] == prints[(1, 'after-training')]
    assert checkpoints.list_checkpoints(logdir)[0] == os.path.join(logdir, 'model-36')


# SyncBN ----------------------------------------------------------------------------------
@needs_horovod
def test_syncbn_trains_with_shared_statistics(tmp_path, finished_main_run):
    """SyncBN all-reduces batch statistics: with different images per rank, the BatchNorm moving
    averages still agree bit for bit. Also: only rank 0 restores `--load`."""
    workdir = str(tmp_path / 'syncbn')
    os.makedirs(workdir)
    # 2 epochs of 4 steps: the schedule [2, 2, 2] x 4 = 8 steps; gradients accumulated over 8 // 2 = 4
    config = combine_overrides(['DATA.BASEDIR=' + finished_main_run.data_dir] + MODEL_CONFIG + TRAIN_CONFIG,
                               ['BACKBONE.NORM=SyncBN', 'DATA.NUM_WORKERS=0', 'TRAIN.STEPS_PER_EPOCH=4',
                                'TRAIN.LR_SCHEDULE=[2,2,2]', 'TRAIN.ACCUMULATE_STEPS=None', 'TRAIN.EVAL_PERIOD=0',
                                'TRAIN.CHECKPOINT_PERIOD=100'])
    returncode, output = horovodrun_train(workdir, os.path.join(workdir, 'train_log'), config,
                                          extra_args=['--load', finished_main_run.logdir])
    assert returncode == 0, tail(output)
    assert 'Towers: 2, gradient accumulation: 4 step(s)' in output

    losses = logs.monitor_values(rank0(output), 'total_cost')
    assert len(losses) == 2 and all(math.isfinite(v) for v in losses), (losses, tail(output))
    prints = fingerprints(output)
    assert prints[(0, 'last-epoch-before-broadcast')] == prints[(1, 'last-epoch-before-broadcast')]
    counts = {int(m['count']) for m in rank_fingerprints.FINGERPRINT_LOG_RE.finditer(output)}
    gn_counts = {int(m['count']) for m in rank_fingerprints.FINGERPRINT_LOG_RE.finditer(finished_main_run.output)}
    assert min(counts) > max(gn_counts), 'BatchNorm moving statistics should be among the fingerprinted variables'

    restores = [line for line in output.splitlines() if 'Restoring checkpoint from' in line]
    assert restores and all('[0]<stdout>:' in line for line in restores)


@needs_horovod
def test_two_images_per_rank_keep_the_ranks_identical(tmp_path, data_dir):
    """TRAIN.BATCH_SIZE_PER_GPU=2 on 2 ranks with SyncBN and the default accumulation: 2 ranks x 2 images
    x 2 steps = 8 images per update (the schedule [1, 1, 1] x 8 / 4 = 2 steps, one epoch, one update).
    The summed gradients and the all-reduced BatchNorm statistics of each 2-image batch leave both
    ranks with the same variables, BatchNorm moving averages included, though they read different images."""
    workdir = str(tmp_path / 'batched')
    os.makedirs(workdir)
    config = combine_overrides(['DATA.BASEDIR=' + data_dir] + MODEL_CONFIG + TRAIN_CONFIG,
                               ['TRAIN.BATCH_SIZE_PER_GPU=2', 'BACKBONE.NORM=SyncBN', 'TRAIN.ACCUMULATE_STEPS=None',
                                'DATA.NUM_WORKERS=0', 'TRAIN.STEPS_PER_EPOCH=2', 'TRAIN.LR_SCHEDULE=[1,1,1]',
                                'TRAIN.EVAL_PERIOD=0', 'TRAIN.CHECKPOINT_PERIOD=100'])
    returncode, output = horovodrun_train(workdir, os.path.join(workdir, 'train_log'), config)
    assert returncode == 0, tail(output)
    assert 'Towers: 2, gradient accumulation: 2 step(s), images per tower: 2' in output
    losses = logs.monitor_values(rank0(output), 'total_cost')
    assert len(losses) == 1 and all(math.isfinite(v) for v in losses), losses
    assert first_images(output)[0] != first_images(output)[1]
    prints = fingerprints(output)
    assert prints[(0, 'after-init-before-broadcast')] != prints[(1, 'after-init-before-broadcast')]
    assert prints[(0, 'last-epoch-before-broadcast')] == prints[(1, 'last-epoch-before-broadcast')]


# config errors (no horovodrun needed) ------------------------------------------------------
def _fake_horovod(monkeypatch, size, initialized=True):
    hvd = types.ModuleType('horovod.tensorflow')
    hvd.init = lambda: None
    hvd.size = lambda: size
    hvd.is_initialized = lambda: initialized
    package = types.ModuleType('horovod')
    package.tensorflow = hvd
    monkeypatch.setitem(sys.modules, 'horovod', package)
    monkeypatch.setitem(sys.modules, 'horovod.tensorflow', hvd)


@pytest.fixture
def coco_shapes_registered(data_dir):
    from dataset import register_coco

    register_coco(data_dir)
    cfg.update_args(['DATA.BASEDIR=' + data_dir] + MODEL_CONFIG)


def test_horovod_trainer_without_horovod_says_how_to_install(monkeypatch, coco_shapes_registered):
    monkeypatch.setitem(sys.modules, 'horovod', None)
    monkeypatch.setitem(sys.modules, 'horovod.tensorflow', None)
    with pytest.raises(ImportError, match=r'TRAINER=horovod needs Horovod.*make horovod'):
        detect_devices('horovod')


def test_horovod_trainer_before_horovod_is_initialized_says_what_to_call(monkeypatch, coco_shapes_registered):
    _fake_horovod(monkeypatch, size=2, initialized=False)
    cfg.update_args(['TRAINER=horovod'])
    with pytest.raises(ValueError, match=r'Horovod is not initialized.*detect_devices'):
        finalize_configs(is_training=True)


def test_num_gpus_disagreeing_with_ranks_names_both(monkeypatch, coco_shapes_registered):
    _fake_horovod(monkeypatch, size=2)
    cfg.update_args(['TRAINER=horovod', 'TRAIN.NUM_GPUS=1'])
    with pytest.raises(ValueError, match=r'TRAIN\.NUM_GPUS=1 but Horovod runs 2 ranks'):
        finalize_configs(is_training=True, devices=detect_devices(cfg.TRAINER))


def test_ranks_count_as_towers(monkeypatch, coco_shapes_registered):
    _fake_horovod(monkeypatch, size=2)
    cfg.update_args(['TRAINER=horovod'])
    finalize_configs(is_training=True, devices=detect_devices(cfg.TRAINER))
    assert cfg.derived.num_gpus == 2 and num_towers() == 2
    assert cfg.derived.accumulate_steps == 4   # 8 images per step: 2 ranks x 4 accumulated steps


def test_train_dataflow_differs_by_rank_and_repeats(coco_shapes_registered):
    from data import get_train_dataflow

    cfg.update_args(['DATA.NUM_WORKERS=0'])
    finalize_configs(is_training=True)

    def order(rank):
        source = get_train_dataflow(rank=rank).ds   # the roidbs, before the per-image map
        source.reset_state()
        return [os.path.basename(roidb['file_name']) for roidb in source]

    rank0 = order(0)
    assert len(rank0) > 4
    assert order(0) == rank0
    assert order(1) != rank0 and sorted(order(1)) == sorted(rank0)
