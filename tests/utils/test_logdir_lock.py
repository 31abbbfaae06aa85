"""utils/logdir_lock.py: one run per log directory; a refusal names the holder; a lock whose holder
is gone is taken over, and said so."""
import os
import signal
import socket
import subprocess
import sys

import pytest

from utils.logdir_lock import LOCK_NAME, LogdirLock, LogdirLockedError

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
HOLDER = '''
import sys, time
sys.path.insert(0, {root!r})
from utils.logdir_lock import LogdirLock
lock = LogdirLock({logdir!r}).acquire()   # held while the object lives
print('locked', flush=True)
time.sleep(600)
'''


@pytest.fixture
def holder(tmp_path):
    """Another process that holds the lock of tmp_path/'log' until killed: (process, logdir)."""
    logdir = str(tmp_path / 'log')
    proc = subprocess.Popen([sys.executable, '-c', HOLDER.format(root=ROOT, logdir=logdir)], stdout=subprocess.PIPE,
                            text=True, start_new_session=True)
    try:
        assert proc.stdout.readline().strip() == 'locked'
        yield proc, logdir
    finally:
        proc.kill()
        proc.wait()


def test_a_second_run_is_refused_naming_the_holder(holder):
    proc, logdir = holder
    with pytest.raises(LogdirLockedError) as caught:
        LogdirLock(logdir).acquire()
    assert 'in use by another training run (PID {} on host {};'.format(proc.pid, socket.gethostname()) \
        in str(caught.value)


def test_the_lock_of_a_killed_run_is_taken_over_with_a_log_line(holder):
    proc, logdir = holder
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    lines = []
    lock = LogdirLock(logdir).acquire(log=lines.append)
    assert lines == ['Taking over the lock of {}: its holder (PID {} on host {}) is gone.'.format(
        logdir, proc.pid, socket.gethostname())]
    with open(os.path.join(logdir, LOCK_NAME)) as f:
        assert f.read().split() == [str(os.getpid()), socket.gethostname()]
    lock.release()
    lines = []
    LogdirLock(logdir).acquire(log=lines.append).release()   # a clean release leaves nothing to take over
    assert lines == []
