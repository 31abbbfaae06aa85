"""tools/pick_python.sh and the Makefile's use of it, with stand-in interpreters.

Every stand-in is a shell script that prints the version it plays (the picker asks each
interpreter for "major.minor"); a failing one plays a pyenv shim of a version that is installed
but not selected. The PATH holds only the stand-ins and the system's tools, so the result does
not depend on the interpreters of the machine running the tests.
"""
import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PICKER = ROOT / 'tools' / 'pick_python.sh'


def _stand_in(path, version):
    """An interpreter that prints `version`, or fails (a pyenv shim) when version is None."""
    path.parent.mkdir(parents=True, exist_ok=True)
    shim = 'echo "pyenv: {}: command not found" >&2; exit 127'.format(path.name)
    body = 'echo {}'.format(version) if version else shim
    path.write_text('#!/bin/sh\n{}\n'.format(body))
    path.chmod(0o755)
    return path


@pytest.fixture
def machine(tmp_path):
    """A bin directory for stand-ins and an environment whose PATH has them and the system tools."""
    bin_dir = tmp_path / 'bin'
    bin_dir.mkdir()
    system = tmp_path / 'system'
    system.mkdir()
    for tool in ('bash', 'sh', 'ls', 'sort', 'cat', 'make', 'env', 'date'):
        found = shutil.which(tool)
        if found:
            (system / tool).symlink_to(found)
    env = {'PATH': '{}:{}'.format(bin_dir, system), 'HOME': str(tmp_path)}
    return bin_dir, env


def pick(env, *args, cwd=None):
    out = subprocess.run([str(PICKER), *args], env=env, cwd=cwd, capture_output=True, text=True)
    return out.returncode, out.stdout.strip()


def test_python311_on_the_path_is_the_proven_stack(machine):
    bin_dir, env = machine
    _stand_in(bin_dir / 'python3.11', '3.11')
    _stand_in(bin_dir / 'python3', '3.13')
    code, line = pick(env)
    assert code == 0
    assert line.split()[:4] == ['ok', 'python3.11', 'proven', 'requirements.txt']
    assert 'Stack: proven (Python 3.11' in line


def test_python310_when_there_is_no_311(machine):
    bin_dir, env = machine
    _stand_in(bin_dir / 'python3.10', '3.10')
    _stand_in(bin_dir / 'python3', '3.9')
    assert pick(env)[1].split()[:3] == ['ok', 'python3.10', 'proven']


@pytest.mark.parametrize('version', ['3.12', '3.13'])
def test_python3_of_today_is_the_newest_stack(machine, version):
    bin_dir, env = machine
    _stand_in(bin_dir / 'python3', version)
    code, line = pick(env)
    assert code == 0
    assert line.split()[:4] == ['ok', 'python3', 'newest', 'requirements-newest.txt']
    assert 'Stack: newest (Python {}'.format(version) in line


def test_a_failing_shim_is_no_interpreter(machine):
    bin_dir, env = machine
    _stand_in(bin_dir / 'python3.11', None)
    _stand_in(bin_dir / 'python3', '3.12')
    assert pick(env)[1].split()[:3] == ['ok', 'python3', 'newest']


@pytest.mark.parametrize('version', ['3.8', '3.14'])
def test_an_unsupported_python_gets_one_line_saying_what_to_install(machine, version):
    bin_dir, env = machine
    _stand_in(bin_dir / 'python3', version)
    code, line = pick(env)
    assert code == 1
    assert '\n' not in line
    assert line.startswith('error Python {} (python3) is not supported'.format(version))
    assert 'install CPython 3.10 to 3.13' in line


def test_no_python_at_all(machine):
    _, env = machine
    code, line = pick(env)
    assert code == 1 and line.startswith('error python3 does not run')


def test_python_chooses_over_what_is_found(machine):
    bin_dir, env = machine
    _stand_in(bin_dir / 'python3.11', '3.11')
    _stand_in(bin_dir / 'python3.12', '3.12')
    assert pick(env, '--python', 'python3.12')[1].split()[:3] == ['ok', 'python3.12', 'newest']
    code, line = pick(env, '--python', str(bin_dir / 'python3.11'))
    assert line.split()[:3] == ['ok', str(bin_dir / 'python3.11'), 'proven']


def test_a_name_whose_shim_fails_means_pyenvs_version(machine, tmp_path):
    bin_dir, env = machine
    _stand_in(bin_dir / 'python3.12', None)
    root = tmp_path / 'pyenv-root'
    _stand_in(root / 'versions' / '3.12.1' / 'bin' / 'python3.12', '3.12')
    _stand_in(root / 'versions' / '3.12.7' / 'bin' / 'python3.12', '3.12')
    (bin_dir / 'pyenv').write_text('#!/bin/sh\n[ "$1" = root ] && echo {}\n'.format(root))
    (bin_dir / 'pyenv').chmod(0o755)
    code, line = pick(env, '--python', 'python3.12')
    assert code == 0
    assert line.split()[1] == str(root / 'versions' / '3.12.7' / 'bin' / 'python3.12')


def test_newest_prefers_313_and_looks_in_pyenv(machine, tmp_path):
    bin_dir, env = machine
    _stand_in(bin_dir / 'python3.11', '3.11')
    _stand_in(bin_dir / 'python3.12', '3.12')
    assert pick(env, '--newest')[1].split()[:3] == ['ok', 'python3.12', 'newest']
    root = tmp_path / 'pyenv-root'
    _stand_in(root / 'versions' / '3.13.0' / 'bin' / 'python3.13', '3.13')
    (bin_dir / 'pyenv').write_text('#!/bin/sh\necho {}\n'.format(root))
    (bin_dir / 'pyenv').chmod(0o755)
    _stand_in(bin_dir / 'python3.13', None)
    assert pick(env, '--newest')[1].split()[1] == str(root / 'versions' / '3.13.0' / 'bin' / 'python3.13')


def test_newest_without_one(machine):
    bin_dir, env = machine
    _stand_in(bin_dir / 'python3', '3.11')
    code, line = pick(env, '--newest')
    assert code == 1 and 'no Python 3.12 or 3.13' in line


def test_an_existing_venv_keeps_its_stack(machine, tmp_path):
    bin_dir, env = machine
    _stand_in(bin_dir / 'python3.11', '3.11')
    venv = tmp_path / 'venv'
    _stand_in(venv / 'bin' / 'python', '3.13')
    assert pick(env, '--venv', str(venv))[1].split()[:3] == ['ok', str(venv / 'bin' / 'python'), 'newest']
    code, line = pick(env, '--venv', str(venv), '--python', 'python3.11')
    assert code == 1
    assert line.startswith('error {} was made with Python 3.13, but PYTHON=python3.11 is Python 3.11'.format(venv))


def test_the_makefile_prints_the_stack_and_stops_on_an_unsupported_python(machine, tmp_path):
    bin_dir, env = machine
    if not shutil.which('make'):
        pytest.skip('make is not installed')
    _stand_in(bin_dir / 'python3', '3.13')
    run = dict(env, MAKEFLAGS='')
    venv = 'VENV={}'.format(tmp_path / 'no-venv')
    out = subprocess.run(['make', '-n', 'lint', venv], cwd=ROOT, env=run, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines()[0].startswith('Stack: newest (Python 3.13 at python3')
    _stand_in(bin_dir / 'python3.8', '3.8')
    out = subprocess.run(['make', '-n', 'lint', venv, 'PYTHON=python3.8'], cwd=ROOT, env=run,
                         capture_output=True, text=True)
    assert out.returncode != 0
    assert 'Python 3.8 (python3.8) is not supported' in out.stderr
    assert os.path.exists(tmp_path / 'no-venv') is False


def test_pyenv_root_without_the_pyenv_command(machine, tmp_path):
    bin_dir, env = machine
    _stand_in(bin_dir / 'python3.13', None)
    root = tmp_path / 'elsewhere'
    _stand_in(root / 'versions' / '3.13.0' / 'bin' / 'python3.13', '3.13')
    code, line = pick(dict(env, PYENV_ROOT=str(root)), '--newest')
    assert code == 0 and line.split()[1] == str(root / 'versions' / '3.13.0' / 'bin' / 'python3.13')
