"""tools/gpu_check.sh: its CPU dry run end to end, and the runner of tools/gpu_check.py (the items'
decisions: tests/tools/test_gpu_check_items.py)."""
import os
import subprocess
import sys
import types

import numpy as np
import pytest

from tools import gpu_check

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ITEM_NAMES = ['tf-gpus', 'horovod-nccl', 'replicated', 'horovod', 'nchw', 'amp', 'peak-memory']


@pytest.fixture(scope='module')
def dry_run(tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp('gpu_check') / 'work')
    # the interpreter of this test run, so that a second stack's venv checks itself
    proc = subprocess.run([os.path.join(ROOT, 'tools', 'gpu_check.sh'), '--dry-run', '--workdir', workdir],
                          cwd=str(tmp_path_factory.getbasetemp()), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, timeout=1500, env=dict(os.environ, PYTHON=sys.executable))
    if not os.path.exists(os.path.join(workdir, 'report.txt')):
        pytest.fail('the dry run wrote no report (exit code {}):\n{}'.format(proc.returncode, proc.stdout[-5000:]))
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
        from utils.tf_compat import amp_unsupported_reason
        reason = amp_unsupported_reason()   # this process has the dry run's environment
        if reason is None:
            assert item['status'] == 'PASS' and 'img/s' in item['figure']
        else:
            assert item['status'] == 'SKIP' and reason in item['figure']
    else:
        assert item == {'status': 'SKIP', 'name': 'amp', 'figure': 'no TRAIN.AMP in this config'}


# the runner, with fake items --------------------------------------------------------------------
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
