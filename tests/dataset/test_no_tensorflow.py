"""The dataset package and its formats load without TensorFlow (tools and `python -m dataset.shapes`)."""
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CHECK = ("import sys, {modules}; loaded = sorted(m for m in ('tensorflow', 'tensorpack') if m in sys.modules); "
         "print(' '.join(loaded) or 'none')")


@pytest.mark.parametrize('modules', ['dataset', 'dataset, dataset.dataset, dataset.coco, dataset.coco_eval, '
                                     'dataset.shapes, dataset.balloon, dataflow.image_io, utils.logs'])
def test_import_loads_no_tensorflow(modules):
    proc = subprocess.run([sys.executable, '-c', CHECK.format(modules=modules)], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == 'none'


def test_shapes_cli_writes_a_split_without_tensorflow(tmp_path):
    code = ("import runpy, sys; sys.argv = ['shapes', {!r}, '--num-train', '2', '--num-val', '1', '--size', '32']; "
            "runpy.run_module('dataset.shapes', run_name='__main__'); "
            "assert 'tensorflow' not in sys.modules").format(str(tmp_path))
    proc = subprocess.run([sys.executable, '-c', code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert 'shapes_val: 1 images of 32px' in proc.stdout
    assert "Generating shapes_train: 2 images of 32px" in proc.stdout   # the dataset's own log line, on stdout
