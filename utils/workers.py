"""Spawned data worker processes: the map-data pool that starts them with 'spawn', raises
their failures in the parent, and makes them die with it.

tensorpack's pool forks its workers and relies on the optional `python-prctl` package to end
them with their parent; without it, workers of a killed trainer live on. Here the same Linux
call is made through ctypes, and a watchdog thread covers the platforms without it.
"""
import ctypes
import ctypes.util
import multiprocessing
import os
import signal
import sys
import threading
import time

import zmq

import utils.tf_compat  # noqa: F401  (configures TensorFlow before tensorpack imports it)
from tensorpack.dataflow import DataFlowTerminated, MultiProcessMapDataZMQ
from tensorpack.utils.serialize import dumps_once, loads_once

__all__ = ['die_with_parent', 'describe_exitcode', 'WORKER_FAILURE_KEY', 'SpawnMultiProcessMapData']

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


# A map function running in a worker returns {WORKER_FAILURE_KEY: traceback text} instead of raising.
WORKER_FAILURE_KEY = '__data_worker_failure__'


class SpawnMultiProcessMapData(MultiProcessMapDataZMQ):
    """tensorpack's MultiProcessMapData whose workers are started with 'spawn', never 'fork'.

    Spawned workers start from a fresh interpreter: `map_func` must be picklable and carry
    everything it needs. If it has `for_worker(index)`, worker `index` runs that copy instead
    (e.g. to get its own random stream).

    Failures surface here, in the process that iterates, as RuntimeError: a datapoint
    {WORKER_FAILURE_KEY: text} coming back from a worker (where tensorpack would leave the
    parent waiting forever for a worker that died of an exception), and a worker process that
    is gone (killed, out of memory), noticed within `poll_seconds` while waiting for data, where
    tensorpack would go on with fewer workers or, with none left, wait forever. `worker_failure()`
    lets others ask at any time.

    Workers die with this process, also when it is killed with SIGKILL (utils/workers.py), and
    ignore SIGTERM and SIGINT: a scheduler's SIGTERM to the whole process group must leave them
    to the trainer, which saves a checkpoint first. `close()` kills them.
    """

    poll_seconds = 1.0   # how often a waiting parent checks that its workers are alive

    def _create_worker(self, id, pipename, hwm):
        map_func = self.map_func
        if hasattr(map_func, 'for_worker'):
            map_func = map_func.for_worker(int(id))
        return _SpawnedMapWorker(id, map_func, pipename, hwm, parent_pid=os.getpid())

    def reset_state(self):
        # Set before the workers start: reset_state() already sends the first datapoints.
        self._closing = False
        self._socket_lock = threading.Lock()   # the socket is used by one thread at a time
        super().reset_state()

    def _send(self, dp):
        with self._socket_lock:
            self._wait_for(zmq.POLLOUT)
            super()._send(dp)

    def _recv(self):
        with self._socket_lock:
            self._wait_for(zmq.POLLIN)
            return super()._recv()

    def _wait_for(self, event):
        """Block until the socket is ready for `event`, checking the workers meanwhile."""
        while True:
            self._check_workers()
            if self.socket.poll(int(self.poll_seconds * 1000), event):
                return

    def _check_workers(self):
        if self._closing:
            raise DataFlowTerminated()
        failure = self.worker_failure()
        if failure is not None:
            raise failure

    def worker_failure(self):
        """A RuntimeError naming the first worker process that is gone, or None while all run.

        Cheap (one non-blocking wait per worker): a trainer may ask after every step, which
        catches a dead worker even while the input queue is full and nobody iterates.
        """
        if self._closing:
            return None
        for index, proc in enumerate(self._procs):
            if proc.exitcode is not None:
                return RuntimeError(
                    "Data worker {} of {} (pid {}) died: {}. Training stops rather than go on with fewer "
                    "workers. A kill by SIGKILL without anyone sending it is often the out-of-memory killer "
                    "(see `dmesg`): lower DATA.NUM_WORKERS.".format(
                        index, len(self._procs), proc.pid, describe_exitcode(proc.exitcode)))
        return None

    def __iter__(self):
        for datapoint in super().__iter__():
            if isinstance(datapoint, dict) and WORKER_FAILURE_KEY in datapoint:
                raise RuntimeError("A data worker failed:\n" + datapoint[WORKER_FAILURE_KEY])
            yield datapoint

    def close(self, timeout=5.):
        """Kill the workers and close the socket (also done when this object is collected, or at exit).

        Safe while another thread iterates: that thread gets DataFlowTerminated.
        """
        if not getattr(self, '_reset_done', False) or self._closing:
            return
        self._closing = True
        started = [proc for proc in self._procs if proc.pid is not None]   # reset_state may have failed
        for proc in started:
            if proc.exitcode is None:
                proc.kill()
        for proc in started:
            proc.join(timeout)
        # An iterating thread lets go of the socket within poll_seconds once _closing is set.
        if hasattr(self, 'socket') and self._socket_lock.acquire(timeout=timeout):
            try:
                self.socket.close(linger=0)
                self.context.term()
            finally:
                self._socket_lock.release()

    def __del__(self):
        try:
            self.close()
        except Exception:   # noqa: BLE001 - nothing to do about it at collection or exit
            pass


class _SpawnedMapWorker(MultiProcessMapDataZMQ._Worker):
    """tensorpack's map worker process, started with the 'spawn' method whatever the default is."""

    _start_method = 'spawn'

    def __init__(self, identity, map_func, pipename, hwm, parent_pid):
        super().__init__(identity, map_func, pipename, hwm)
        self.parent_pid = parent_pid

    @staticmethod
    def _Popen(process_obj):
        return multiprocessing.get_context('spawn').Process._Popen(process_obj)

    @staticmethod
    def _after_fork():
        pass

    def run(self):
        # tensorpack's loop, with our parent-death handling instead of its python-prctl one
        die_with_parent(self.parent_pid)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        context = zmq.Context()
        socket = context.socket(zmq.REP)
        socket.setsockopt(zmq.IDENTITY, self.identity)
        socket.set_hwm(self.hwm)
        socket.connect(self.pipename)
        while True:
            request = loads_once(socket.recv(copy=False))
            socket.send(dumps_once(self.map_func(request)), copy=False)
