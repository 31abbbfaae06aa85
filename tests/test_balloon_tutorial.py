"""BALLOON.md's commands run as written (in a scratch directory, with this interpreter)."""
import os
import re
import shlex
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tutorial_commands():
    """Every command of the ```bash blocks of BALLOON.md, continuation lines joined."""
    with open(os.path.join(ROOT, 'BALLOON.md')) as f:
        text = f.read()
    commands = []
    for block in re.findall(r'```bash\n(.*?)```', text, re.S):
        joined = block.replace('\\\n', ' ')
        commands += [line.strip() for line in joined.splitlines() if line.strip() and not line.startswith('#')]
    return commands


def to_argv(command):
    """`.venv/bin/python X ...` -> this interpreter running the project's X, from any directory."""
    argv = shlex.split(command)
    assert argv[0] == '.venv/bin/python', command
    argv[0] = sys.executable
    if argv[1].endswith('.py'):
        argv[1] = os.path.join(ROOT, argv[1])
    return argv


def test_the_tutorial_has_the_steps_it_describes():
    commands = tutorial_commands()
    scripts = [shlex.split(c)[1] for c in commands]
    assert scripts == ['-m', 'train.py', 'predict.py', 'predict.py', 'train.py']
    assert '--make-demo' in commands[0] and '--evaluate' in commands[2] and '--predict' in commands[3]
    assert '--load' in commands[4]


def test_balloon_tutorial_runs_as_written(tmp_path):
    env = dict(os.environ, PYTHONPATH=ROOT)
    outputs = []
    for command in tutorial_commands():
        proc = subprocess.run(to_argv(command), cwd=str(tmp_path), env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True, timeout=900)
        assert proc.returncode == 0, '{}\n{}'.format(command, proc.stdout[-5000:])
        outputs.append(proc.stdout)

    make_data, train, evaluate, predict, finetune = outputs
    assert (tmp_path / 'data/balloon-demo/balloon/train/via_region_data.json').is_file()
    assert (tmp_path / 'train_log/balloon/checkpoint').is_file()
    assert 'balloon_val-mAP(bbox)/IoU=0.5' in train           # the in-training evaluation ran
    assert re.search(r'mAP\(segm\)/IoU=0.5: \d', evaluate)
    assert (tmp_path / 'train_log/balloon/pictures/balloon_0000-pred.png').is_file()
    assert (tmp_path / 'train_log/balloon-finetune/checkpoint').is_file()
    assert 'Resuming' not in finetune
