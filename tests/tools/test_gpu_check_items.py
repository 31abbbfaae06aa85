"""The PASS / FAIL decisions of the items of tools/gpu_check_items.py, without running anything."""
import types

import numpy as np

from tools import gpu_check_items

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


# the decisions, without running anything ------------------------------------------------------
def fake_context(dry_run, output, returncode=0):
    runner = types.SimpleNamespace(run=lambda name, cmd, env=None: (returncode, output, '/logs/' + name))
    return types.SimpleNamespace(dry_run=dry_run, runner=runner, horovod_ok=False, horovod_controllers=[])


def test_check_build_without_nccl_fails_on_a_gpu_machine_only(monkeypatch):
    monkeypatch.setattr(gpu_check_items, 'horovodrun_path', lambda: '/usr/bin/horovodrun')
    assert gpu_check_items.check_horovod_build(fake_context(False, CHECK_BUILD_CPU)).status == 'FAIL'
    assert gpu_check_items.check_horovod_build(fake_context(True, CHECK_BUILD_CPU)).status == 'PASS'
    result = gpu_check_items.check_horovod_build(fake_context(False, CHECK_BUILD_GPU))
    assert result.status == 'PASS' and 'NCCL' in result.figure
    no_tf = CHECK_BUILD_GPU.replace('[X] TensorFlow', '[ ] TensorFlow')
    assert gpu_check_items.check_horovod_build(fake_context(False, no_tf)).status == 'FAIL'


def test_training_result_needs_success_throughput_and_finite_losses():
    log = ('[1201 17:30:06 @monitor.py:476] Throughput (samples/sec): 3.5\n'
           '[1201 17:30:06 @monitor.py:476] total_cost: 4.0227\n')
    assert gpu_check_items.training_result('x', 0, log, 'x.log', 20).status == 'PASS'
    assert '3.50 img/s' in gpu_check_items.training_result('x', 0, log, 'x.log', 20).figure
    assert gpu_check_items.training_result('x', 1, log, 'x.log', 20).status == 'FAIL'
    assert gpu_check_items.training_result('x', 0, log.replace('4.0227', 'nan'), 'x.log', 20).status == 'FAIL'
    assert gpu_check_items.training_result('x', 0, '', 'x.log', 20).status == 'FAIL'


def test_layout_comparison_fails_beyond_the_tolerance(tmp_path):
    rng = np.random.RandomState(0)
    arrays = dict(num_images=2, data_format='NHWC', scores=rng.rand(8, 4), boxes=rng.rand(8, 16) * 100,
                  masks=rng.rand(3, 28, 28))
    np.savez(tmp_path / 'a.npz', **arrays)
    np.savez(tmp_path / 'b.npz', **dict(arrays, scores=arrays['scores'] + 1e-5))
    assert gpu_check_items.compare_layout_outputs(str(tmp_path / 'a.npz'), str(tmp_path / 'b.npz')).status == 'PASS'
    masks = arrays['masks'].copy()
    masks[1, 3, 4] += 0.01
    np.savez(tmp_path / 'c.npz', **dict(arrays, masks=masks))
    result = gpu_check_items.compare_layout_outputs(str(tmp_path / 'a.npz'), str(tmp_path / 'c.npz'))
    assert result.status == 'FAIL' and 'masks 0.01' in result.figure


def test_replicated_item_fails_when_the_towers_drift_apart():
    ok = gpu_check_items.Result('replicated', 'PASS', '3.00 img/s')
    line = 'Tower {} model variables last-epoch-before-broadcast: fingerprint {} over 98 variables\n'
    same = line.format(0, 'ab12') + line.format(1, 'ab12')
    assert gpu_check_items.check_towers_in_step(ok, same, 2).figure.endswith('2 towers in step')
    drifted = gpu_check_items.check_towers_in_step(ok, line.format(0, 'ab12') + line.format(1, 'cd34'), 2)
    assert drifted.status == 'FAIL' and 'drifted apart' in drifted.figure
    assert gpu_check_items.check_towers_in_step(ok, line.format(0, 'ab12'), 2).status == 'FAIL'


def test_amp_item_skips_in_a_dry_run_whose_cpu_cannot_run_it():
    ctx = fake_context(True, 'REASON=bfloat16 needs oneDNN\n')
    result = gpu_check_items.check_amp(ctx)
    assert result.status == 'SKIP' and result.figure.endswith('bfloat16 needs oneDNN')
    assert gpu_check_items.cpu_amp_unsupported_reason(fake_context(True, 'REASON=\n')) is None
    assert gpu_check_items.cpu_amp_unsupported_reason(fake_context(True, 'REASON=x\n', returncode=1)) is None
