"""Operating-system plumbing for the data worker processes: dying with the parent, and saying
how a worker died.

tensorpack relies on the optional `python-prctl` package for the first; without it, workers of
a killed trainer live on. Here the same Linux call is made through ctypes, and a watchdog thread
covers the platforms without it.
"""
import ctypes
import ctypes.util
import os
import signal
import sys
import threading
import time

__all__ = ['die_with_parent', 'describe_exitcode']

_PR_SET_PDEATHSIG = 1   # from <linux/prctl.h>


def _set_parent_death_signal(signum):
    """Ask Linux to send `signum` to this process when its parent dies; False if unavailable."""
    if not sys.platform.startswith('linux'):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library('c') or None, use_errno=True)
        return libc.prctl(_PR_SET_PDEATHSIG, int(signum), 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def _watch_parent(parent_pid, poll_seconds):
    while os.getppid() == parent_pid:
        time.sleep(poll_seconds)
    os._exit(1)


def die_with_parent(parent_pid, poll_seconds=1.0):
    """Make the calling (child) process end when process `parent_pid`, its parent, ends.

    On Linux the kernel sends SIGKILL at the parent's death, also when the parent itself was
    killed with SIGKILL. Note that Linux counts the death of the parent *thread* that started
    this process; the dataflows start their workers from the main thread. Everywhere, a daemon
    thread also checks every `poll_seconds` that the parent is still the same process.
    If the parent is already gone, this process exits at once.
    """
    _set_parent_death_signal(signal.SIGKILL)
    if os.getppid() != parent_pid:   # the parent died before the death signal was armed
        os._exit(1)
    threading.Thread(target=_watch_parent, args=(parent_pid, poll_seconds), name='parent-watchdog',
                     daemon=True).start()


def describe_exitcode(exitcode):
    """multiprocessing's `Process.exitcode` in words: 'killed by signal 9 (SIGKILL)', 'exited with code 1'."""
    if exitcode is None:
        return 'still running'
    if exitcode < 0:
        try:
            name = signal.Signals(-exitcode).name
        except ValueError:
            name = 'unknown signal'
        return 'killed by signal {} ({})'.format(-exitcode, name)
    return 'exited with code {}'.format(exitcode)
