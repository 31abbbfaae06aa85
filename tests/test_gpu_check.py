"""tools/gpu_check.sh: its CPU dry run end to end, and the PASS / FAIL decisions of its items."""
import os
import subprocess
import types

import numpy as np
import pytest

from tools import gpu_check

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ITEM_NAMES = ['tf-gpus', 'horovod-nccl', 'replicated', 'horovod', 'nchw', 'amp', 'peak-memory']

CHECK_BUILD_CPU = """Horovod v0.28.1:

Available Frameworks:
    [X] TensorFlow
    [ ] PyTorch
    [ ] MXNet

Available Controllers:
    [ ] MPI
    [X] Gloo

Available Tensor Operations:
    [ ] NCCL
    [ ] DDL
    [ ] CCL
    [ ] MPI
    [X] Gloo
"""
CHECK_BUILD_GPU = CHECK_BUILD_CPU.replace('[ ] NCCL', '[X] NCCL')


@pytest.fixture(scope='module')
def dry_run(tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp('gpu_check') / 'work')
    proc = subprocess.run([os.path.join(ROOT, 'tools', 'gpu_check.sh'), '--dry-run', '--workdir', workdir],
                          cwd=str(tmp_path_factory.getbasetemp()), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, timeout=1500)
    with open(os.path.join(workdir, 'report.txt')) as f:
        report = [gpu_check.REPORT_LINE_RE.match(line).groupdict() for line in f.read().splitlines()]
    return types.SimpleNamespace(returncode=proc.returncode, output=proc.stdout, workdir=workdir,
                                 items={r['name']: r for r in report}, order=[r['name'] for r in report])


def test_dry_run_passes_or_skips_every_item_with_a_figure(dry_run):
    assert dry_run.returncode == 0, dry_run.output[-5000:]
    assert dry_run.order == ITEM_NAMES
    for name, item in dry_run.items.items():
        assert item['status'] in ('PASS', 'SKIP') and item['figure'], item
    assert 'gpu_check report' in dry_run.output and 'all items passed or were skipped' in dry_run.output


def test_dry_run_trains_both_ways_and_reports_throughput(dry_run):
    items = dry_run.items
    for name in ('replicated', 'horovod'):
        assert items[name]['status'] == 'PASS', items[name]
        assert 'img/s' in items[name]['figure'] and '4 steps' in items[name]['figure']
    assert '(2 CPU towers)' in items['replicated']['figure']
    assert '(2 ranks)' in items['horovod']['figure']
    log = open(os.path.join(dry_run.workdir, 'logs', 'replicated.log')).read()
    assert 'Training a model of 2 towers' in log
    # the GPU-only items say why they did not run
    assert items['tf-gpus']['status'] == 'SKIP' and 'GPU-only' in items['tf-gpus']['figure']
    assert items['peak-memory']['status'] == 'SKIP' and 'GPU-only' in items['peak-memory']['figure']
    assert 'controllers: Gloo' in items['horovod-nccl']['figure']


def test_dry_run_compares_the_layouts_or_says_why_not(dry_run):
    item = dry_run.items['nchw']
    if item['status'] == 'SKIP':
        assert 'no NCHW kernels' in item['figure']
    else:
        assert item['figure'].startswith('max |NCHW - NHWC| over 2 images')
        data_formats = [str(np.load(os.path.join(dry_run.workdir, name + '.npz'))['data_format'])
                        for name in ('nhwc_cpu', 'nchw_cpu')]
        assert data_formats == ['NHWC', 'NCHW']


def test_amp_item_follows_the_config(dry_run):
    from config import describe_config
    has_amp = 'TRAIN.AMP' in {key for key, _, _ in describe_config()}
    item = dry_run.items['amp']
    if has_amp:
        assert item['status'] == 'PASS' and 'img/s' in item['figure']
    else:
        assert item == {'status': 'SKIP', 'name': 'amp', 'figure': 'no TRAIN.AMP in this config'}


# the decisions, without running anything ------------------------------------------------------
def fake_context(dry_run, output, returncode=0):
    runner = types.SimpleNamespace(run=lambda name, cmd, env=None: (returncode, output, '/logs/' + name))
    return types.SimpleNamespace(dry_run=dry_run, runner=runner, horovod_ok=False, horovod_controllers=[])


def test_check_build_without_nccl_fails_on_a_gpu_machine_only(monkeypatch):
    monkeypatch.setattr(gpu_check, 'horovodrun_path', lambda: '/usr/bin/horovodrun')
    assert gpu_check.check_horovod_build(fake_context(False, CHECK_BUILD_CPU)).status == 'FAIL'
    assert gpu_check.check_horovod_build(fake_context(True, CHECK_BUILD_CPU)).status == 'PASS'
    result = gpu_check.check_horovod_build(fake_context(False, CHECK_BUILD_GPU))
    assert result.status == 'PASS' and 'NCCL' in result.figure
    no_tf = CHECK_BUILD_GPU.replace('[X] TensorFlow', '[ ] TensorFlow')
    assert gpu_check.check_horovod_build(fake_context(False, no_tf)).status == 'FAIL'


def test_training_result_needs_success_throughput_and_finite_losses():
    log = ('[1201 17:30:06 @monitor.py:476] Throughput (samples/sec): 3.5\n'
           '[1201 17:30:06 @monitor.py:476] total_cost: 4.0227\n')
    assert gpu_check.training_result('x', 0, log, 'x.log', 20).status == 'PASS'
    assert '3.50 img/s' in gpu_check.training_result('x', 0, log, 'x.log', 20).figure
    assert gpu_check.training_result('x', 1, log, 'x.log', 20).status == 'FAIL'
    assert gpu_check.training_result('x', 0, log.replace('4.0227', 'nan'), 'x.log', 20).status == 'FAIL'
    assert gpu_check.training_result('x', 0, '', 'x.log', 20).status == 'FAIL'


def test_layout_comparison_fails_beyond_the_tolerance(tmp_path):
    rng = np.random.RandomState(0)
    arrays = dict(num_images=2, data_format='NHWC', scores=rng.rand(8, 4), boxes=rng.rand(8, 16) * 100,
                  masks=rng.rand(3, 28, 28))
    np.savez(tmp_path / 'a.npz', **arrays)
    np.savez(tmp_path / 'b.npz', **dict(arrays, scores=arrays['scores'] + 1e-5))
    assert gpu_check.compare_layout_outputs(str(tmp_path / 'a.npz'), str(tmp_path / 'b.npz')).status == 'PASS'
    masks = arrays['masks'].copy()
    masks[1, 3, 4] += 0.01
    np.savez(tmp_path / 'c.npz', **dict(arrays, masks=masks))
    result = gpu_check.compare_layout_outputs(str(tmp_path / 'a.npz'), str(tmp_path / 'c.npz'))
    assert result.status == 'FAIL' and 'masks 0.01' in result.figure


def test_a_failing_item_fails_the_check_and_the_rest_still_run(monkeypatch, tmp_path, capsys):
    def broken(ctx):
        raise RuntimeError('boom')
    monkeypatch.setattr(gpu_check, 'DRY', dict(gpu_check.DRY, num_train=2, num_val=1, image_size=32))
    monkeypatch.setattr(gpu_check, 'ITEMS', [broken, lambda ctx: gpu_check.Result('fine', 'PASS', '1 thing')])
    assert gpu_check.main(['--dry-run', '--workdir', str(tmp_path / 'work')]) == 1
    with open(tmp_path / 'work' / 'report.txt') as f:
        lines = f.read().splitlines()
    assert lines[0].startswith('FAIL') and 'RuntimeError: boom' in lines[0]
    assert lines[1].startswith('PASS fine')
    assert 'FAILED: broken' in capsys.readouterr().out
    with pytest.raises(FileExistsError):
        gpu_check.main(['--dry-run', '--workdir', str(tmp_path / 'work')])


def test_replicated_item_fails_when_the_towers_drift_apart():
    ok = gpu_check.Result('replicated', 'PASS', '3.00 img/s')
    line = 'Tower {} model variables last-epoch-before-broadcast: fingerprint {} over 98 variables\n'
    same = line.format(0, 'ab12') + line.format(1, 'ab12')
    assert gpu_check.check_towers_in_step(ok, same, 2).figure.endswith('2 towers in step')
    drifted = gpu_check.check_towers_in_step(ok, line.format(0, 'ab12') + line.format(1, 'cd34'), 2)
    assert drifted.status == 'FAIL' and 'drifted apart' in drifted.figure
    assert gpu_check.check_towers_in_step(ok, line.format(0, 'ab12'), 2).status == 'FAIL'
