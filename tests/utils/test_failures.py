"""How training fails: exit codes, the last line of the log, data workers that die, SIGTERM.

The end-to-end tests run train.py on a tiny model over a 4-image COCO-format set made in
tmp_path, each in its own process group, killed when it overruns its timeout: no test can hang.
"""
import gc
import json
import os
import resource
import signal
import socket
import subprocess
import sys
import textwrap
import time

import cv2
import numpy as np
import psutil
import pytest
from tensorpack.dataflow import DataFlow, DataFlowTerminated

import data
from common import SpawnMultiProcessMapData
from config import combine_overrides
from tests.tf_helpers import train_tiny_model
from utils import checkpoints, failures, tensor_names, workers
from utils.logdir_lock import LOCK_NAME, LogdirLock
from utils.tf_compat import tf

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TIMEOUT_SECONDS = 300   # per train.py run; slow machines take ~1 min to build the graph

# The smallest model train.py builds; the failure paths do not depend on it.
TINY_C4 = [
    'MODE_FPN=False', 'MODE_MASK=False', 'DATA.TRAIN=coco_train2017', 'DATA.VAL=()', 'TRAIN.EVAL_PERIOD=0',
    'BACKBONE.RESNET_NUM_BLOCKS=[1,1,1,1]', 'BACKBONE.NORM=GN', 'BACKBONE.FREEZE_AT=0', 'FRCNN.BATCH_PER_IM=32',
    'RPN.TRAIN_PRE_NMS_TOPK=200', 'RPN.TRAIN_POST_NMS_TOPK=50', 'PREPROC.TRAIN_SHORT_EDGE_SIZE=[96,96]',
    'PREPROC.MAX_SIZE=96', 'TRAIN.ACCUMULATE_STEPS=1', 'TRAIN.WARMUP=5', 'TRAIN.CHECKPOINT_PERIOD=1000',
]
LONG_SCHEDULE = ['TRAIN.STEPS_PER_EPOCH=2', 'TRAIN.LR_SCHEDULE=[1000,1000,1000]']   # never ends by itself


def write_coco_split(basedir, annotate=True, unreadable=False, num_images=4, size=96):
    """coco_train2017 under `basedir`: one bright 40x40 square (class 1) per image, or no annotations."""
    image_dir = os.path.join(basedir, 'train2017')
    os.makedirs(image_dir)
    os.makedirs(os.path.join(basedir, 'annotations'))
    images, annotations = [], []
    for k in range(num_images):
        name = '{:06d}.jpg'.format(k + 1)
        x1, y1 = 10 + 5 * k, 20
        if unreadable:
            with open(os.path.join(image_dir, name), 'wb') as f:
                f.write(b'not an image')
        else:
            image = np.full((size, size, 3), 30, np.uint8)
            image[y1:y1 + 40, x1:x1 + 40] = 220
            cv2.imwrite(os.path.join(image_dir, name), image)
        images.append({'id': k + 1, 'file_name': name, 'height': size, 'width': size})
        if annotate:
            polygon = [x1, y1, x1 + 40, y1, x1 + 40, y1 + 40, x1, y1 + 40]
            annotations.append({'id': k + 1, 'image_id': k + 1, 'category_id': 1, 'iscrowd': 0, 'area': 1600.,
                                'bbox': [x1, y1, 40, 40], 'segmentation': [polygon]})
    with open(os.path.join(basedir, 'annotations', 'instances_train2017.json'), 'w') as f:
        json.dump({'images': images, 'annotations': annotations, 'categories': [{'id': 1, 'name': 'square'}]}, f)
    return str(basedir)


class TrainRun:
    """train.py in its own process group, its output in a file; kill_group() cleans up whatever is left.

    logdir: its --logdir (tmp_path/NAME_log when None); preexec_fn: run in the child before train.py.
    """

    def __init__(self, tmp_path, basedir, config, name='run', logdir=None, preexec_fn=None):
        self.logdir = logdir or str(tmp_path / (name + '_log'))
        self.output_path = str(tmp_path / (name + '.out'))
        env = dict(os.environ, PYTHONUNBUFFERED='1', TF_CPP_MIN_LOG_LEVEL='2')
        cmd = [sys.executable, os.path.join(ROOT, 'train.py'), '--logdir', self.logdir, '--config',
               'DATA.BASEDIR=' + basedir] + config
        with open(self.output_path, 'w') as out:
            self.proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
                                         start_new_session=True, preexec_fn=preexec_fn)

    def output(self):
        with open(self.output_path) as f:
            return f.read()

    def wait_for_line(self, text):
        deadline = time.monotonic() + TIMEOUT_SECONDS
        while text not in self.output():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.kill_group()
                raise AssertionError('train.py never logged {!r}:\n{}'.format(text, self.output()[-4000:]))
            time.sleep(0.5)

    def children(self):
        """(data workers, multiprocessing's resource tracker) as psutil processes."""
        kids = psutil.Process(self.proc.pid).children()
        command_lines = [' '.join(kid.cmdline()) for kid in kids]
        return ([kid for kid, cmd in zip(kids, command_lines) if 'spawn_main' in cmd],
                [kid for kid, cmd in zip(kids, command_lines) if 'resource_tracker' in cmd])

    def wait(self):
        """The exit code; on timeout the process group is killed and the test fails."""
        try:
            return self.proc.wait(timeout=TIMEOUT_SECONDS)
        except subprocess.TimeoutExpired:
            self.kill_group()
            raise AssertionError('train.py hung:\n' + self.output()[-4000:])

    def last_line(self):
        return [line for line in self.output().splitlines() if line.strip()][-1]

    def kill_group(self):
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait()


@pytest.fixture
def train_runs():
    runs = []
    yield runs
    for run in runs:
        run.kill_group()


def wait_until_gone(processes, timeout=30.):
    """The processes among `processes` still running after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    alive = list(processes)
    while alive and time.monotonic() < deadline:
        alive = [p for p in alive if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
        time.sleep(0.2)
    return alive


# a failed training run exits non-zero and says why, last ----------------------------------------
def test_unreadable_training_images_fail_with_the_cause_on_the_last_line(tmp_path, train_runs):
    basedir = write_coco_split(tmp_path / 'data', unreadable=True)
    run = TrainRun(tmp_path, basedir, TINY_C4 + LONG_SCHEDULE + ['DATA.NUM_WORKERS=0'])
    train_runs.append(run)
    assert run.wait() == failures.EXIT_FAILED, run.output()[-4000:]
    assert '200 training images in a row could not be used' in run.last_line()
    assert 'Logging error' not in run.output()


def test_a_split_of_negatives_only_trains_with_masks(tmp_path, train_runs):
    # A json without annotations has no segmentation at all: there is nothing to segment.
    basedir = write_coco_split(tmp_path / 'data', annotate=False)
    config = [c for c in TINY_C4 if not c.startswith('MODE_MASK')] + [
        'MODE_MASK=True', 'DATA.FILTER_EMPTY_ANNOTATIONS=False', 'DATA.NUM_WORKERS=0',
        'TRAIN.STEPS_PER_EPOCH=4', 'TRAIN.LR_SCHEDULE=[1,1,1]']   # 8 steps
    run = TrainRun(tmp_path, basedir, config)
    train_runs.append(run)
    assert run.wait() == 0, run.output()[-4000:]
    assert checkpoints.checkpoint_global_step(checkpoints.latest_complete_checkpoint(run.logdir)) == 8


def _mapper(mode_mask=True):
    params = data.AnchorLabelParams(batch_per_im=32, fg_ratio=0.5, positive_thresh=0.7, negative_thresh=0.3,
                                    crowd_overlap_thresh=0.7)
    return data.TrainingMapper(
        mode_fpn=False, mode_mask=mode_mask, short_edge_size=64, max_size=128, absolute_coord=True, num_category=1,
        anchor_stride=16, anchor_sizes=(16, 32), anchor_ratios=(1.,), fpn_anchor_strides=(4, 8, 16, 32, 64),
        anchor_params=params, seed=0)


def test_masks_of_an_image_without_objects_need_no_segmentation(tmp_path):
    path = str(tmp_path / 'negative.png')
    cv2.imwrite(path, np.full((32, 48, 3), 90, np.uint8))
    negative = {'file_name': path, 'boxes': np.zeros((0, 4), np.float32), 'class': np.zeros((0,), np.int32),
                'is_crowd': np.zeros((0,), np.int8)}
    datapoint = _mapper()(negative)
    assert datapoint[tensor_names.GT_MASKS_PACKED].shape == (0, 64, 96 // 8)   # resized to 64 x 96
    # An object without a mask is a real error, said as such.
    with_object = dict(negative, boxes=np.array([[4, 4, 20, 20]], np.float32), **{'class': np.array([1], np.int32),
                       'is_crowd': np.array([0], np.int8)})
    with pytest.raises(ValueError, match=r"has 1 object\(s\) and no 'segmentation'"):
        _mapper()(with_object)


def test_training_failed_log_line_keeps_its_step(log_messages):
    from tensorpack.utils import logger
    failures.fix_tensorpack_log_format()
    logger.error("Training failed at global_step=", 7)   # tensorpack's own call, in its main loop
    assert log_messages[-1] == 'Training failed at global_step=7'


def test_an_out_of_range_error_not_from_the_input_is_a_failure():
    """tensorpack's loop takes an OutOfRangeError from anywhere (here a callback after epoch 1) for the end
    of the data and returns; the guard says so, with the error, after the trainer is gone."""
    from tensorpack.callbacks import Callback
    from tensorpack.dataflow import DataFromList

    class FailsAfterEpoch1(Callback):
        def _trigger_epoch(self):
            raise tf.errors.OutOfRangeError(None, None, '/logs/events.out: File too large')

    recorder = failures.InputFailureRecorder(DataFromList([[np.float32(1.)]], shuffle=False))
    guard = failures.TrainingGuard(recorder)
    train_tiny_model([guard, FailsAfterEpoch1()], steps_per_epoch=2, max_epoch=5, dataflow=recorder)
    gc.collect()   # the trainer is gone, as in train.py
    with pytest.raises(RuntimeError) as caught:
        guard.raise_if_incomplete()
    assert str(caught.value) == ('Training stopped at global_step=2 before the end of its schedule (5 epochs): '
                                 '/logs/events.out: File too large')


class _FailingAfter(DataFlow):
    def __init__(self, count, error):
        self.count, self.error = count, error

    def __iter__(self):
        yield from range(self.count)
        raise self.error


def test_input_failure_recorder_keeps_the_cause():
    recorder = failures.InputFailureRecorder(_FailingAfter(2, RuntimeError('first line\nthe cause')))
    recorder.reset_state()
    with pytest.raises(RuntimeError):
        for _ in recorder:
            pass
    error = recorder.error()
    assert isinstance(error, failures.InputPipelineError) and str(error) == 'The training data stopped: the cause'
    stopped = failures.InputFailureRecorder(_FailingAfter(1, DataFlowTerminated()))
    with pytest.raises(DataFlowTerminated):
        for _ in stopped:
            pass
    assert stopped.error() is None   # a shutdown on purpose is no failure


# data workers --------------------------------------------------------------------------------
def slow_identity(value):
    time.sleep(0.02)
    return value


def test_describe_exitcode():
    assert workers.describe_exitcode(-9) == 'killed by signal 9 (SIGKILL)'
    assert workers.describe_exitcode(3) == 'exited with code 3'


def test_a_killed_data_worker_is_named(tmp_path):
    ds = SpawnMultiProcessMapData(_Endless(), 2, slow_identity, buffer_size=4)
    previous = signal.signal(signal.SIGALRM, lambda *_: (_ for _ in ()).throw(TimeoutError('dataflow hung')))
    signal.alarm(150)
    try:
        ds.reset_state()
        iterator = iter(ds)
        next(iterator)
        victim = ds._procs[1]
        os.kill(victim.pid, signal.SIGKILL)
        with pytest.raises(RuntimeError) as caught:
            for _ in iterator:   # the other worker would go on serving forever
                pass
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
        ds.close()
    assert 'Data worker 1 of 2 (pid {}) died: killed by signal 9 (SIGKILL)'.format(victim.pid) in str(caught.value)
    assert all(proc.exitcode is not None for proc in ds._procs)   # close() stopped the other one


class _Endless(DataFlow):
    def __iter__(self):
        value = 0
        while True:
            value += 1
            yield value


PARENT_SCRIPT = '''
import multiprocessing.resource_tracker as tracker, sys, time
sys.path.insert(0, {root!r})
from common import SpawnMultiProcessMapData
from tests.utils.test_failures import _Endless, slow_identity
if __name__ == '__main__':
    import multiprocessing
    multiprocessing.set_start_method('spawn', force=True)   # as train.py
    ds = SpawnMultiProcessMapData(_Endless(), 2, slow_identity, buffer_size=4)
    ds.reset_state()
    next(iter(ds))
    print('PIDS', *[p.pid for p in ds._procs], tracker._resource_tracker._pid, flush=True)
    time.sleep(600)
'''


def test_data_workers_and_resource_tracker_die_with_a_killed_parent(tmp_path):
    script = tmp_path / 'parent.py'
    script.write_text(textwrap.dedent(PARENT_SCRIPT.format(root=ROOT)))
    parent = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True, start_new_session=True)
    try:
        line = ''
        while not line.startswith('PIDS'):   # the parent sleeps after this line; or dies, giving ''
            line = parent.stdout.readline()
            assert line, 'the parent script died'
        children = [psutil.Process(int(pid)) for pid in line.split()[1:]]
        assert len(children) == 3
        parent.kill()
        parent.wait()
        assert wait_until_gone(children) == []
    finally:
        try:
            os.killpg(parent.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        parent.wait()


def _training_with_two_workers(tmp_path, train_runs, wait_for):
    """A never-ending run with DATA.NUM_WORKERS=2, once it logged `wait_for`: (run, workers, tracker)."""
    run = TrainRun(tmp_path, write_coco_split(tmp_path / 'data'), TINY_C4 + LONG_SCHEDULE + ['DATA.NUM_WORKERS=2'])
    train_runs.append(run)
    run.wait_for_line(wait_for)
    data_workers, resource_tracker = run.children()
    assert len(data_workers) == 2 and len(resource_tracker) == 1
    return run, data_workers, resource_tracker


def test_killing_both_workers_stops_training_at_once_with_a_clear_error(tmp_path, train_runs):
    run, data_workers, resource_tracker = _training_with_two_workers(tmp_path, train_runs, 'Start Epoch 1 ')
    for worker in data_workers:
        worker.kill()
    assert run.wait() == failures.EXIT_FAILED
    assert 'DeadlineExceeded' not in run.output()
    assert ' died: killed by signal 9 (SIGKILL)' in run.last_line(), run.output()[-4000:]
    assert any('pid {}'.format(w.pid) in run.last_line() for w in data_workers)
    assert wait_until_gone(resource_tracker) == []


def test_sigterm_saves_a_checkpoint_and_exits_non_zero(tmp_path, train_runs):
    run, data_workers, resource_tracker = _training_with_two_workers(
        tmp_path, train_runs, 'Epoch 1 (global_step 2) finished')
    os.killpg(run.proc.pid, signal.SIGTERM)   # as a scheduler does: the whole process group
    assert run.wait() == failures.EXIT_SIGTERM, run.output()[-4000:]
    last = run.last_line()
    assert 'Stopped by SIGTERM at global_step=' in last and 'rerun with the same --logdir to resume' in last
    step = int(last.split('global_step=')[1].split(':')[0])
    assert step >= 2
    # What a rerun on this --logdir resumes from (train.py's own discovery):
    newest = checkpoints.latest_complete_checkpoint(run.logdir)
    assert newest == os.path.join(run.logdir, 'model-{}'.format(step)) and newest in last
    assert checkpoints.checkpoint_global_step(newest) == step
    assert wait_until_gone(data_workers + resource_tracker) == []


# what a run leaves in its log directory ------------------------------------------------------
def _limit_file_size(limit_bytes):
    """A preexec_fn: files the child writes may not grow past `limit_bytes` (ulimit -f)."""
    def limit():
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit_bytes, limit_bytes))
    return limit


@pytest.mark.parametrize('fault', ['full disk', 'file-size limit'])
def test_a_checkpoint_that_cannot_be_written_stops_training_with_the_cause_last(tmp_path, train_runs, small_disk,
                                                                               fault):
    """A 3 MB disk (or file-size limit) holds no checkpoint of the tiny model: the first save fails
    (or the graph file before it), and nothing partial is left. The full-disk case needs to mount a
    tmpfs; the file-size limit (TensorFlow's OutOfRangeError) runs everywhere."""
    basedir = write_coco_split(tmp_path / 'data')
    config = combine_overrides(TINY_C4 + LONG_SCHEDULE, ['DATA.NUM_WORKERS=0', 'TRAIN.CHECKPOINT_PERIOD=1'])
    if fault == 'full disk':
        disk = small_disk('3m')
        if disk is None:
            pytest.skip('cannot mount a tmpfs here; the file-size-limit case covers the failed save')
        run = TrainRun(tmp_path, basedir, config, logdir=os.path.join(disk, 'log'))
        cause = 'No space left on device'
    else:
        run = TrainRun(tmp_path, basedir, config, preexec_fn=_limit_file_size(3 * 1024 * 1024))
        cause = 'File too large'
    train_runs.append(run)
    assert run.wait() == failures.EXIT_FAILED, run.output()[-4000:]
    last = run.last_line()
    assert 'Training failed: CheckpointSaveError: Could not write {}/'.format(run.logdir) in last, last
    assert cause in last and ' free on {} (a checkpoint of this model takes '.format(run.logdir) in last
    assert 'Logging error' not in run.output() and 'Arguments: ()' not in run.output()
    assert not [name for name in os.listdir(run.logdir) if 'tmp' in name or 'temp' in name]
    assert checkpoints.latest_complete_checkpoint(run.logdir) is None


def test_a_second_run_on_the_same_logdir_is_refused(tmp_path, train_runs):
    basedir = write_coco_split(tmp_path / 'data')
    logdir = str(tmp_path / 'shared_log')
    first = LogdirLock(logdir).acquire()   # this process stands in for the run that holds the directory
    try:
        run = TrainRun(tmp_path, basedir, TINY_C4 + LONG_SCHEDULE + ['DATA.NUM_WORKERS=0'], logdir=logdir)
        train_runs.append(run)
        assert run.wait() == failures.EXIT_FAILED, run.output()[-4000:]
        assert '{} is in use by another training run (PID {} on host {};'.format(
            logdir, os.getpid(), socket.gethostname()) in run.last_line()
        assert os.listdir(logdir) == [LOCK_NAME]   # no log.log, events or checkpoints of the second run
    finally:
        first.release()


def test_sigterm_during_an_evaluation_abandons_it_and_saves_the_last_step(tmp_path, train_runs):
    """40 images evaluated after each epoch of 2 steps; SIGTERM once the first evaluation started."""
    basedir = write_coco_split(tmp_path / 'data', num_images=40)
    config = combine_overrides(TINY_C4 + LONG_SCHEDULE, [
        'DATA.NUM_WORKERS=0', "DATA.VAL=('coco_train2017',)", 'TRAIN.EVAL_PERIOD=1'])
    run = TrainRun(tmp_path, basedir, config)
    train_runs.append(run)
    run.wait_for_line('Running evaluation on coco_train2017')
    os.killpg(run.proc.pid, signal.SIGTERM)
    assert run.wait() == failures.EXIT_SIGTERM, run.output()[-4000:]
    assert 'Evaluation of coco_train2017 at global_step=2 abandoned' in run.output()
    newest = os.path.join(run.logdir, 'model-2')
    assert run.last_line().endswith('Stopped by SIGTERM at global_step=2: saved checkpoint {}; rerun with the same '
                                    '--logdir to resume.'.format(newest))
    assert checkpoints.latest_complete_checkpoint(run.logdir) == newest
    assert not os.path.exists(os.path.join(run.logdir, 'coco_train2017-outputs2.json'))   # not evaluated to the end
