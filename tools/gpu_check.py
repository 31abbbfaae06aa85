#!/usr/bin/env python
"""Check a GPU machine before a long job: one PASS / FAIL / SKIP line with a figure per item.

    tools/gpu_check.sh               # on the GPU machine: about 10 minutes on one modern GPU
    tools/gpu_check.sh --dry-run     # on a CPU: every item at a tiny size, or SKIP (GPU-only)

Items: TensorFlow sees the GPUs; `horovodrun --check-build` lists NCCL; 20 steps of R50-FPN
Mask R-CNN with TRAINER=replicated on all GPUs (img/s); the same under Horovod (img/s); NCHW
GPU inference equals NHWC CPU inference on the same weights; the same 20 steps with TRAIN.AMP
if the config has that key; peak GPU memory. Nothing is downloaded: the images are made by
dataset/shapes.py. Every log and the trained checkpoint stay in the work directory.
The dry run stands 2 CPU towers in for 2 GPUs (utils/tf_compat.py, FRCNN_CPU_TOWERS) and runs
Horovod with 2 CPU processes over Gloo; it checks this script's plumbing, not the machine.
"""
import argparse
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from tools.gpu_check_items import FAIL, ITEMS, Result, layout_probe  # noqa: E402

REPORT_LINE_RE = re.compile(r'^(?P<status>PASS|FAIL|SKIP) +(?P<name>[\w-]+) +(?P<figure>.*)$')

# A real R50-FPN Mask R-CNN at the config's sizes (800 px short edge), trained from scratch.
FULL = dict(steps_per_epoch=10, epochs=2, num_train=64, num_val=4, image_size=512, config=[
    'MODE_MASK=True', 'MODE_FPN=True'])
# The same items at a size two CPU cores run in about a minute each.
DRY = dict(steps_per_epoch=2, epochs=2, num_train=8, num_val=2, image_size=128, config=[
    'MODE_MASK=True', 'MODE_FPN=True', 'BACKBONE.RESNET_NUM_BLOCKS=[1,1,1,1]', 'BACKBONE.NORM=GN',
    'FPN.NORM=GN', 'FPN.NUM_CHANNEL=32', 'FPN.FRCNN_FC_HEAD_DIM=64', 'MRCNN.HEAD_DIM=16',
    'RPN.TRAIN_PER_LEVEL_NMS_TOPK=50', 'RPN.TEST_PER_LEVEL_NMS_TOPK=50', 'FRCNN.BATCH_PER_IM=64',
    'RPN.BATCH_PER_IM=64', 'PREPROC.TRAIN_SHORT_EDGE_SIZE=[128,128]', 'PREPROC.TEST_SHORT_EDGE_SIZE=128',
    'PREPROC.MAX_SIZE=128', 'DATA.NUM_WORKERS=0'])


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--dry-run', action='store_true',
                        help='run every item on the CPU at a tiny size (GPU-only items say SKIP and why)')
    parser.add_argument('--workdir', help='where data, logs and checkpoints go (a new directory by default); '
                                          'must not exist yet')
    parser.add_argument('--config', nargs='+', default=[], metavar='KEY=VALUE',
                        help='extra config overrides for every run, e.g. DATA.NUM_WORKERS=4')
    parser.add_argument('--layout-probe', nargs=2, metavar=('CHECKPOINT', 'OUT.npz'), help=argparse.SUPPRESS)
    return parser.parse_args(argv)


# running things --------------------------------------------------------------------------------
class Runner:
    """Runs the project's scripts as subprocesses, each with its own log file in `workdir/logs`."""

    def __init__(self, workdir, dry_run):
        self.workdir = workdir
        self.dry_run = dry_run
        self.logs = os.path.join(workdir, 'logs')
        os.makedirs(self.logs)

    def run(self, name, cmd, env_changes=None, timeout=1800):
        env = dict(os.environ, PYTHONUNBUFFERED='1')
        if self.dry_run:
            env['CUDA_VISIBLE_DEVICES'] = ''   # the dry run never touches a GPU, even where there is one
        for key, value in (env_changes or {}).items():
            if value is None:
                env.pop(key, None)
            else:
                env[key] = value
        log_path = os.path.join(self.logs, name + '.log')
        with open(log_path, 'w') as log:
            log.write('$ {}\n'.format(' '.join(cmd)))
            log.flush()
            proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                                    start_new_session=True)
            try:
                returncode = proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)   # the run and what it started (ranks, data workers)
                proc.wait()
                returncode = 'timeout after {} s'.format(timeout)
        with open(log_path) as f:
            return returncode, f.read(), log_path


class GPUMemorySampler:
    """Polls `nvidia-smi` once a second in a thread; `peak_mib()` is the largest memory.used seen
    per GPU (all processes on it, like nvidia-smi shows)."""

    QUERY = ['nvidia-smi', '--query-gpu=memory.used', '--format=csv,noheader,nounits']

    def __init__(self):
        self._peak = []
        self._stop = threading.Event()
        self._thread = None

    def __enter__(self):
        if shutil.which('nvidia-smi'):
            self._thread = threading.Thread(target=self._loop, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *_):
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def _loop(self):
        while not self._stop.is_set():
            try:
                text = subprocess.run(self.QUERY, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                                      timeout=10).stdout
                used = [int(v) for v in text.split()]
            except (OSError, ValueError, subprocess.TimeoutExpired):
                used = []
            if used:
                self._peak = [max(a, b) for a, b in zip(used, self._peak)] if self._peak else used
            self._stop.wait(1.0)

    def peak_mib(self):
        return list(self._peak) if self._thread is not None else None


# the report ------------------------------------------------------------------------------------
class Context:
    def __init__(self, workdir, dry_run, extra_config):
        self.workdir = workdir
        self.dry_run = dry_run
        self.extra_config = list(extra_config)
        self.sizes = DRY if dry_run else FULL
        self.runner = Runner(workdir, dry_run)
        self.data_dir = os.path.join(workdir, 'shapes')
        self.num_gpus = 0
        self.horovod_ok = False
        self.horovod_controllers = []
        self.checkpoint_dir = None
        self.memory = None


def make_data(ctx):
    from dataset.shapes import write_shapes_split
    sizes = ctx.sizes
    write_shapes_split(ctx.data_dir, 'train', sizes['num_train'], sizes['image_size'], seed=0)
    write_shapes_split(ctx.data_dir, 'val', sizes['num_val'], sizes['image_size'], seed=1)


def format_result(result):
    return '{:<4} {:<13} {}'.format(result.status, result.name, result.figure)


def main(argv=None):
    args = parse_args(argv)
    if args.layout_probe:
        layout_probe(args.layout_probe[0], args.layout_probe[1], args.config)
        return 0
    workdir = args.workdir or tempfile.mkdtemp(prefix='gpu_check-{}-'.format(time.strftime('%Y%m%d-%H%M%S')))
    if args.workdir:
        if os.path.exists(workdir):
            raise FileExistsError('--workdir {} exists already; give a new directory (nothing is overwritten).'
                                  .format(workdir))
        os.makedirs(workdir)
    ctx = Context(workdir, args.dry_run, args.config)
    print('gpu_check{}: work directory {}'.format(' (dry run on the CPU)' if args.dry_run else '', workdir),
          flush=True)
    make_data(ctx)
    results = []
    with GPUMemorySampler() as ctx.memory:
        for item in ITEMS:
            started = time.time()
            try:
                result = item(ctx)
            except Exception as err:   # noqa: BLE001 - one broken item must not hide the others' results
                result = Result(item.__name__.replace('check_', '').replace('_', '-'), FAIL,
                                '{}: {}'.format(type(err).__name__, err))
            results.append(result)
            print('{}  [{:.0f} s]'.format(format_result(result), time.time() - started), flush=True)
    report = '\n'.join(format_result(r) for r in results)
    with open(os.path.join(workdir, 'report.txt'), 'w') as f:
        f.write(report + '\n')
    failed = [r.name for r in results if r.status == FAIL]
    print('\ngpu_check report ({}):\n{}\n{}'.format(workdir, report, 'FAILED: ' + ', '.join(failed) if failed
                                                    else 'all items passed or were skipped'))
    return 1 if failed else 0


if __name__ == '__main__':
    sys.exit(main())
