"""Horovod across two hosts: train.py under horovodrun's own ssh launcher, three ranks on two "hosts".

Host 1 (two slots: ranks 0 and 1) and host 2 (one slot: rank 2) are network namespaces joined by
a veth pair (tests/two_hosts.py); horovodrun runs on host 1 and starts rank 2 through an sshd on
host 2. The directory holding every --logdir exists on host 1 only: host 2 sees an empty read-only
tmpfs there. The tiny GN config and data are those of tests/test_horovod.py.

Two jobs: the main run trains 2 epochs of 4 steps and evaluates at the end; the second resumes
it with a longer schedule and, once every rank has started its first epoch, rank 2 is killed.
Marked `distributed`; skipped, with the reason, without root, namespaces, sshd or Horovod.
"""
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import types

import pytest

from config import combine_overrides
from tests import two_hosts
from tests.test_horovod import (
    HOROVODRUN, MODEL_CONFIG, NUM_VAL, TRAIN_CONFIG, fingerprints, needs_horovod, predict_evaluate, rank_lines, tail,
    write_coco_shapes)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TIMEOUT_SECONDS = 480   # per job: a hang fails the test instead of blocking CI
KILLED_JOB_SECONDS = 120   # a job that has lost a rank must end by itself within this
HOSTS = '{}:2,{}:1'.format(*two_hosts.HOST_NAMES)
RANKS = (0, 1, 2)
FIRST_HOST_RANKS = (0, 1)

_UNAVAILABLE = two_hosts.unavailable_reason()
pytestmark = [pytest.mark.distributed, needs_horovod,
              pytest.mark.skipif(_UNAVAILABLE is not None, reason=str(_UNAVAILABLE))]

# 3 ranks take 8 / 3 times the steps of the batch-8 schedule, rounded up: [1, 2, 3] -> decays at
# steps 3 and 6, the end at step 8, i.e. 2 epochs of 4 steps (an end inside an epoch would cut it short).
MAIN_RUN_CONFIG = ['DATA.NUM_WORKERS=1', 'TRAIN.STEPS_PER_EPOCH=4', 'TRAIN.LR_SCHEDULE=[1,2,3]', 'TRAIN.WARMUP=3',
                   'TRAIN.EVAL_PERIOD=2', 'TRAIN.CHECKPOINT_PERIOD=2']
# resumed: the end moves to step 40, i.e. 10 epochs; epoch 3 is rank 0's next one
RESUME_CONFIG = ['DATA.NUM_WORKERS=0', 'TRAIN.LR_SCHEDULE=[1,2,15]', 'TRAIN.EVAL_PERIOD=0']
SHARD_RE = re.compile(r'Found (?P<total>\d+) images for inference in coco_val2017; '
                      r'shard (?P<shard>\d+)/(?P<shards>\d+) has images \[(?P<begin>\d+), (?P<end>\d+)\)')
PREDICT_BAR_RE = re.compile(r'\[(\d+)\]<stderr>:Predict: 100%\|[^|]*\| (\d+)/\2 ')
LOCAL_RANK_RE = re.compile(r'Horovod rank (?P<rank>\d+) of (?P<size>\d+): local rank (?P<local_rank>\d+) of '
                           r'(?P<local_size>\d+)')


def horovodrun_command(logdir, config):
    return [sys.executable, HOROVODRUN, '-np', '3', '-H', HOSTS, '--gloo', '--start-timeout', '120',
            sys.executable, os.path.join(ROOT, 'train.py'), '--logdir', logdir, '--config', *config]


def start_job(hosts, cmd, cwd, log_path):
    """Start `cmd` on host 1 in its own process group; its output goes to `log_path`."""
    env = dict(os.environ, PYTHONUNBUFFERED='1', TF_CPP_MIN_LOG_LEVEL='2')
    with open(log_path, 'w') as log:
        return subprocess.Popen(hosts.on_host1(cmd, cwd), env=env, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)


def wait_job(proc, log_path, timeout):
    try:
        returncode = proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)   # horovodrun and host 1's ranks; host 2's go with its namespace
        proc.wait()
        returncode = 'timeout after {} s'.format(timeout)
    with open(log_path) as f:
        return returncode, f.read()


def rank_of_process(pid):
    """The HOROVOD_RANK of a train.py process (not of its data workers), or None."""
    try:
        with open('/proc/{}/cmdline'.format(pid), 'rb') as f:
            cmdline = f.read().split(b'\0')
        with open('/proc/{}/environ'.format(pid), 'rb') as f:
            environ = dict(item.split(b'=', 1) for item in f.read().split(b'\0') if b'=' in item)
    except OSError:
        return None
    if not any(arg.endswith(b'train.py') for arg in cmdline) or b'HOROVOD_RANK' not in environ:
        return None
    return int(environ[b'HOROVOD_RANK'])


def started_epochs(output, rank):
    return [int(line.split('Start Epoch ')[1].split()[0])
            for line in rank_lines(output, rank) if 'Start Epoch ' in line]


def printed_metrics(lines, pattern):
    return {m['name']: float(m['value']) for line in lines for m in [pattern.search(line)] if m}


# the hosts and the runs ----------------------------------------------------------------------
@pytest.fixture(scope='module')
def cluster(tmp_path_factory):
    """The two hosts; `host1_dir` exists on host 1 only."""
    host1_dir = str(tmp_path_factory.mktemp('host1_only'))
    hosts = two_hosts.TwoHosts(str(tmp_path_factory.mktemp('two_hosts')), host1_only=[host1_dir])
    hosts.start()
    try:
        yield types.SimpleNamespace(hosts=hosts, host1_dir=host1_dir,
                                    data_dir=str(tmp_path_factory.mktemp('two_host_data')),
                                    cwd=str(tmp_path_factory.mktemp('two_host_cwd')))
    finally:
        hosts.stop()


@pytest.fixture(scope='module')
def main_run(cluster):
    write_coco_shapes(cluster.data_dir)
    logdir = os.path.join(cluster.host1_dir, 'train_log')
    config = combine_overrides(['DATA.BASEDIR=' + cluster.data_dir] + MODEL_CONFIG + TRAIN_CONFIG, MAIN_RUN_CONFIG)
    log_path = os.path.join(cluster.host1_dir, 'main.log')
    proc = start_job(cluster.hosts, horovodrun_command(logdir, config), cluster.cwd, log_path)
    returncode, output = wait_job(proc, log_path, TIMEOUT_SECONDS)
    return types.SimpleNamespace(returncode=returncode, output=output, logdir=logdir, config=config,
                                 logdir_on_host2=cluster.hosts.exists_on_host2(logdir))


@pytest.fixture
def finished_main_run(main_run):
    assert main_run.returncode == 0, tail(main_run.output)
    return main_run


@pytest.fixture(scope='module')
def killed_resumed_run(cluster, main_run):
    """The main run resumed with a longer schedule; rank 2 is killed (SIGKILL) once all ranks have started."""
    assert main_run.returncode == 0, tail(main_run.output)
    logdir = os.path.join(cluster.host1_dir, 'resumed')
    shutil.copytree(main_run.logdir, logdir)
    log_path = os.path.join(cluster.host1_dir, 'resumed.log')
    proc = start_job(cluster.hosts, horovodrun_command(logdir, combine_overrides(main_run.config, RESUME_CONFIG)),
                     cluster.cwd, log_path)
    killed = None
    deadline = time.time() + TIMEOUT_SECONDS
    while killed is None and proc.poll() is None and time.time() < deadline:
        time.sleep(1)
        with open(log_path) as f:
            output = f.read()
        if all(started_epochs(output, rank) for rank in RANKS):
            ranks_on_host2 = {rank_of_process(pid): pid for pid in cluster.hosts.host2_pids()}
            os.kill(ranks_on_host2[2], signal.SIGKILL)
            killed = dict(pid=ranks_on_host2[2], ranks_on_host2=sorted(r for r in ranks_on_host2 if r is not None))
    returncode, output = wait_job(proc, log_path, KILLED_JOB_SECONDS if killed else 1)
    return types.SimpleNamespace(returncode=returncode, output=output, killed=killed)


# the main run ----------------------------------------------------------------------------
def test_ranks_are_on_two_hosts(finished_main_run):
    placement = {int(m['rank']): (int(m['local_rank']), int(m['local_size']))
                 for m in LOCAL_RANK_RE.finditer(finished_main_run.output)}
    assert placement == {0: (0, 2), 1: (1, 2), 2: (0, 1)}


def test_training_ends_with_identical_variables_on_every_rank(finished_main_run):
    prints = fingerprints(finished_main_run.output)
    assert len({prints[(rank, 'after-init-before-broadcast')] for rank in RANKS}) == 3, 'ranks should start apart'
    for when in ('last-epoch-before-broadcast', 'after-training'):
        assert len({prints[(rank, when)] for rank in RANKS}) == 1, when
    assert 'Epoch 2 (global_step 8) finished' in finished_main_run.output


def test_only_first_host_ranks_predict_each_val_image_once(finished_main_run):
    output = finished_main_run.output
    shards = {rank: [SHARD_RE.search(line) for line in rank_lines(output, rank) if SHARD_RE.search(line)]
              for rank in RANKS}
    assert not shards[2], 'the second host\'s rank should not predict'
    covered = []
    for rank in FIRST_HOST_RANKS:
        assert len(shards[rank]) == 1, (rank, shards[rank])
        match = shards[rank][0]
        assert (int(match['total']), int(match['shard']), int(match['shards'])) == (NUM_VAL, rank, 2)
        covered += range(int(match['begin']), int(match['end']))
    assert sorted(covered) == list(range(NUM_VAL))
    # the progress bars of the predicting ranks, when done: {(rank, images)}
    finished_bars = {(int(rank), int(count)) for rank, count in PREDICT_BAR_RE.findall(output)}
    assert finished_bars == {(0, 4), (1, 4)}
    assert not [f for f in os.listdir(finished_main_run.logdir) if '-part' in f], 'part files should be gathered'


def test_logdir_exists_on_the_first_host_only(finished_main_run):
    assert os.path.isdir(finished_main_run.logdir)
    assert finished_main_run.logdir_on_host2 is False


def test_evaluation_equals_single_process_predict(finished_main_run, cluster, tmp_path):
    run = finished_main_run
    returncode, output = predict_evaluate(run.logdir, cluster.data_dir, str(tmp_path))
    assert returncode == 0, tail(output)
    assert 'Restoring checkpoint from {}'.format(os.path.join(run.logdir, 'model-8')) in output

    # rank 0's monitors print '{:.5g}', predict.py '{:.4f}': equal at 4 decimals
    during_training = printed_metrics(rank_lines(run.output, 0),
                                      re.compile(r'@monitor\.py:\d+\] coco_val2017-(?P<name>\S+): (?P<value>\S+)$'))
    offline = printed_metrics(output.splitlines(), re.compile(r'^  (?P<name>\S+): (?P<value>[-\d.]+)$'))
    assert offline and set(offline) == set(during_training)
    assert {name: round(value, 4) for name, value in during_training.items()} == offline

    with open(tmp_path / 'out.json-coco_val2017') as f:
        offline_detections = json.load(f)
    with open(os.path.join(run.logdir, 'coco_val2017-outputs8.json')) as f:
        training_detections = json.load(f)
    assert {d['image_id'] for d in training_detections} <= set(range(1, NUM_VAL + 1))
    assert len(offline_detections) == len(training_detections)


# the resumed run, killed ---------------------------------------------------------------------
def test_resumed_run_starts_every_rank_at_rank_zero_epoch(killed_resumed_run):
    output = killed_resumed_run.output
    assert killed_resumed_run.killed, tail(output)
    assert 'is at step 8: continuing with epoch 3' in ''.join(rank_lines(output, 0))
    for rank in RANKS:
        assert started_epochs(output, rank)[0] == 3, rank


def test_killing_a_rank_on_the_second_host_ends_the_job_and_names_it(killed_resumed_run):
    """The job ends by itself, non-zero, and horovodrun's last words name rank 2 as the first to fail.

    Rank 0's own lines do not say why: horovodrun sends SIGTERM to the other ranks, whose main
    thread is inside a TensorFlow step where Python's signal handler can't run, and SIGKILL 5 s later.
    """
    run = killed_resumed_run
    assert run.killed and run.killed['ranks_on_host2'] == [2], run.killed
    assert run.returncode not in (0, None) and not str(run.returncode).startswith('timeout'), \
        (run.returncode, tail(run.output))
    assert re.search(r'The first process to do so was:\s+Process name: 2\s', run.output), tail(run.output)
    assert 'Terminating remaining workers after failure of Process 2.' in run.output
    assert not [line for line in rank_lines(run.output, 0) if 'Training has finished' in line]
