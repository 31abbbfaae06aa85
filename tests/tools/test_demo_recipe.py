"""tools/demo_recipe.py: the Makefile and Python read the same demo recipe."""
import os
import shutil
import subprocess

import pytest

from config import config as cfg
from tools.demo_recipe import demo_overrides

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.mark.skipif(shutil.which('make') is None, reason='needs make')
def test_make_demo_trains_with_the_overrides_python_reads():
    printed = subprocess.run(['make', '-s', '-n', '-C', ROOT, 'demo', 'DATA_DIR=/some/data', 'DEMO_DIR=/some/log'],
                             check=True, capture_output=True, text=True).stdout
    train_lines = [line for line in printed.splitlines() if ' train.py ' in line]
    assert len(train_lines) == 1, printed
    given = train_lines[0].split(' --config ', 1)[1].split()
    assert given == demo_overrides('/some/data')
    assert 'DATA.BASEDIR=/some/data/shapes' in given


def test_every_override_is_a_config_key_with_a_value_of_its_type():
    cfg.update_args(demo_overrides('data'))
    assert cfg.MODE_FPN and cfg.BACKBONE.NORM == 'GN' and cfg.DATA.BASEDIR == 'data/shapes'


def test_a_line_without_a_value_names_the_file(tmp_path):
    recipe = tmp_path / 'recipe.txt'
    recipe.write_text('MODE_FPN=True\nMODE_MASK\n')
    with pytest.raises(ValueError, match='recipe.txt.*MODE_MASK'):
        demo_overrides('data', str(recipe))
