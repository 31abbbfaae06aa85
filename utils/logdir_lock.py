"""One training run per log directory: an exclusive `flock` on LOGDIR/.lock for the whole run.

Two runs on one directory would write checkpoints, statistics and event files of the same names
over each other. The lock file holds "PID HOST" of its holder, so a refused run can say who
holds it. The kernel drops a `flock` when its holder dies, however it dies: a file left by a
run that is gone is simply taken over (and said so in the log).
"""
import errno
import fcntl
import os
import socket

__all__ = ['LOCK_NAME', 'LogdirLockedError', 'LogdirLock']

LOCK_NAME = '.lock'


class LogdirLockedError(RuntimeError):
    """Another process trains in this log directory."""


class LogdirLock:
    """An exclusive lock on log directory `logdir` (created if missing), held until `release()` or
    the end of the process.

    `acquire(log)` raises LogdirLockedError naming the holder's PID and host when another process
    holds it; `log(message)` gets a line when a lock of a run that is gone is taken over.
    """

    def __init__(self, logdir):
        self.logdir = logdir
        self.path = os.path.join(logdir, LOCK_NAME)
        self._file = None

    def acquire(self, log=None):
        os.makedirs(self.logdir, exist_ok=True)
        handle = open(self.path, 'a+')
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            handle.seek(0)
            holder = handle.read().strip() or 'unknown'
            handle.close()
            if err.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise LogdirLockedError('Cannot lock {} ({}); this filesystem may not support file locks. Use a '
                                        '--logdir on a local disk.'.format(self.path, err.strerror)) from err
            pid, _, host = holder.partition(' ')
            raise LogdirLockedError(
                '{} is in use by another training run (PID {} on host {}; lock file {}). Wait for it to end, stop '
                'it, or choose another --logdir.'.format(self.logdir, pid, host or 'unknown', self.path)) from None
        handle.seek(0)
        previous = handle.read().strip()
        if previous and log is not None:
            pid, _, host = previous.partition(' ')
            log('Taking over the lock of {}: its holder (PID {} on host {}) is gone.'.format(
                self.logdir, pid, host or 'unknown'))
        handle.seek(0)
        handle.truncate()
        handle.write('{} {}\n'.format(os.getpid(), socket.gethostname()))
        handle.flush()
        self._file = handle
        return self

    def release(self):
        """Empty the lock file (a clean end leaves nothing to take over) and drop the lock."""
        if self._file is None:
            return
        try:
            self._file.seek(0)
            self._file.truncate()
        except OSError:
            pass
        self._file.close()   # closing the descriptor drops the flock
        self._file = None
