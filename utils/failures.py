"""How train.py fails: exit codes, errors of the input pipeline, SIGTERM, clean exits.

tensorpack's input thread logs an exception of the dataflow, closes the input queue and ends;
the trainer then reads the closed queue as the end of the data ("FIFOQueue ... is closed") and
returns as if training were done. The pieces here turn that, and every other way training
can stop early, into a non-zero exit whose last line says why:

    0    training ran to the end of its schedule (or had nothing left to do)
    1    training failed: an exception in the graph, a callback, the dataflow or a data worker
    2    bad command line (argparse)
    130  interrupted by Ctrl-C (SIGINT)
    143  stopped by SIGTERM; a checkpoint of the current step was saved when training was under way
"""
import logging
import os
import signal
import sys
import threading
import time
import traceback

import utils.tf_compat  # noqa: F401  (configures TensorFlow before tensorpack imports it)
from tensorpack.callbacks import Callback
from tensorpack.dataflow import DataFlowTerminated, ProxyDataFlow
from tensorpack.utils import logger

__all__ = ['EXIT_FAILED', 'EXIT_INTERRUPTED', 'EXIT_SIGTERM', 'InputPipelineError', 'StopRequested',
           'InputFailureRecorder', 'SigtermHandler', 'TrainingGuard', 'fix_tensorpack_log_format',
           'installed_sigterm_handler', 'one_line', 'run_and_exit', 'watch_log_file']

EXIT_FAILED = 1
EXIT_INTERRUPTED = 128 + signal.SIGINT   # 130, as a shell reports a process killed by SIGINT
EXIT_SIGTERM = 128 + signal.SIGTERM      # 143

# After SIGTERM, a step and a checkpoint must finish within this; schedulers typically wait
# 30 s before they send SIGKILL.
SIGTERM_GRACE_SECONDS = 25.
# A failed run whose exit handlers have not finished after this ends with os._exit.
EXIT_GRACE_SECONDS = 20.


class InputPipelineError(RuntimeError):
    """The training dataflow (or one of its workers) failed; the original error is the cause."""


class StopRequested(BaseException):
    """Training stops because of SIGTERM. A BaseException, like KeyboardInterrupt, so that
    tensorpack's trainer does not log it as a failure; it still runs the callbacks' after_train."""

    def __init__(self, message):
        super().__init__(message)
        self.message = message


def one_line(err):
    """The last non-empty line of an exception's message (multi-line messages end with the cause)."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return lines[-1] if lines else type(err).__name__


# the input pipeline ------------------------------------------------------------------------
class InputFailureRecorder(ProxyDataFlow):
    """Passes `ds` through and keeps the exception that ended its iteration, in `failure`.

    tensorpack's input thread only logs such an exception; the trainer's main thread asks
    `error()` (see TrainingGuard), which also asks `ds.worker_failure()` if `ds` has it: a
    worker can die while the input thread waits for room in a full queue.
    """

    def __init__(self, ds):
        super().__init__(ds)
        self.failure = None

    def __iter__(self):
        try:
            yield from self.ds
        except DataFlowTerminated:   # shut down on purpose
            raise
        except Exception as err:
            self.failure = err
            raise

    def error(self):
        """An InputPipelineError for the recorded failure, or None."""
        failure = self.failure
        if failure is None and hasattr(self.ds, 'worker_failure'):
            failure = self.ds.worker_failure()
        if failure is None:
            return None
        error = InputPipelineError('The training data stopped: {}'.format(one_line(failure)))
        error.__cause__ = failure
        return error


# SIGTERM --------------------------------------------------------------------------------
class SigtermHandler:
    """What train.py does on SIGTERM.

    Before or after the training loop, the handler raises StopRequested where the main thread
    is. During the loop it only sets `received`: TrainingGuard saves a checkpoint after the
    current step and stops. If the process has not ended `grace_seconds` later (a step or the
    input hung), it exits at once with EXIT_SIGTERM, without a checkpoint.
    """

    def __init__(self, grace_seconds=SIGTERM_GRACE_SECONDS):
        self.grace_seconds = grace_seconds
        self.received = False
        self.in_training_loop = False

    def install(self):
        """Install as the SIGTERM handler (main thread only); returns self."""
        signal.signal(signal.SIGTERM, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.received:
            return
        self.received = True
        if not self.in_training_loop:
            raise StopRequested('Stopped by SIGTERM outside the training loop; no checkpoint was written.')
        timer = threading.Timer(self.grace_seconds, self._give_up)
        timer.daemon = True
        timer.start()

    def _give_up(self):
        _final_line('Stopped by SIGTERM: training did not stop within {:g} s; exiting without a new checkpoint.'
                    .format(self.grace_seconds), logging.ERROR)
        _flush_logs()
        os._exit(EXIT_SIGTERM)


_installed_sigterm_handler = None


def installed_sigterm_handler():
    """The SigtermHandler that run_and_exit installed, or None (e.g. when main() runs in a test)."""
    return _installed_sigterm_handler


# the trainer's side -----------------------------------------------------------------------
class _StopReasonHandler(logging.Handler):
    """Catches tensorpack's "Training was stopped by exception ..." line: the trainer takes an
    OutOfRangeError (or StopTraining) from anywhere for the end of training and logs only this."""

    PREFIX = 'Training was stopped by exception '

    def __init__(self):
        super().__init__(logging.INFO)
        self.reason = None

    def emit(self, record):
        message = record.getMessage()
        if message.startswith(self.PREFIX):
            lines = [line.strip() for line in message[len(self.PREFIX):].splitlines()]
            useful = [line for line in lines if line and line != 'Graph execution error:'
                      and not line.startswith(('Detected at node', 'File "'))]
            self.reason = useful[0].rstrip('.') if useful else None


class TrainingGuard(Callback):
    """Stops training at the first step after the input pipeline failed or SIGTERM arrived.

    Args:
        recorder: the InputFailureRecorder that wraps the training dataflow.
        sigterm: a SigtermHandler, or None.
    `saver` (a ModelSaver, set by train.py; used on the chief only) saves the checkpoint on
    SIGTERM. After training, `raise_if_incomplete()` tells a run that ended early from one
    that completed its schedule; it reads only what the guard kept, never the trainer, which
    may be gone by then.
    """

    _chief_only = False

    def __init__(self, recorder, sigterm=None):
        self._recorder = recorder
        self._sigterm = sigterm
        self._stop_reason = _StopReasonHandler()
        self.saver = None
        self.completed = False
        self.last_step = None
        self.max_epoch = None

    def _before_train(self):
        self.max_epoch = self.trainer.max_epoch
        self.last_step = self.global_step
        logging.getLogger('tensorpack').addHandler(self._stop_reason)
        if self._sigterm is not None:
            self._sigterm.in_training_loop = True
        if self.trainer.starting_epoch > self.trainer.max_epoch:   # no epoch to run
            self.completed = True

    def _trigger_step(self):
        self.last_step = self.global_step
        self.stop_if_requested()
        error = self._recorder.error()
        if error is not None:
            raise error

    def _before_epoch(self):
        self.stop_if_requested()   # SIGTERM during the previous epoch's callbacks (an evaluation)

    def _after_epoch(self):
        if self.epoch_num >= self.trainer.max_epoch:
            self.completed = True

    def _after_train(self):
        self.last_step = self.global_step
        logging.getLogger('tensorpack').removeHandler(self._stop_reason)
        if self._sigterm is not None:
            self._sigterm.in_training_loop = False

    def stop_requested(self):
        """True once SIGTERM arrived: long callbacks (an evaluation) ask this and give up early."""
        return self._sigterm is not None and self._sigterm.received

    def stop_if_requested(self):
        """After SIGTERM: save a checkpoint of the last completed step (on the chief) and raise
        StopRequested."""
        if self.stop_requested():
            self._stop_for_sigterm()

    def _stop_for_sigterm(self):
        step = self.global_step
        saved = None
        if self.saver is not None and self.trainer.is_chief:
            self.saver.trigger()
            prefix = '{}-{}'.format(self.saver.path, step)
            saved = prefix if os.path.isfile(prefix + '.index') else None
        where = ('saved checkpoint {}; rerun with the same --logdir to resume.'.format(saved) if saved
                 else 'no checkpoint was saved by this process.')
        raise StopRequested('Stopped by SIGTERM at global_step={}: {}'.format(step, where))

    def raise_if_incomplete(self):
        """After the trainer returned: raise if training stopped before the end of its schedule
        (a failure of the input after the last step does not count)."""
        if self.completed:
            return
        error = self._recorder.error()
        if error is not None:
            raise error
        reason = self._stop_reason.reason
        raise RuntimeError('Training stopped at global_step={} before the end of its schedule ({} epochs){}'.format(
            self.last_step, self.max_epoch,
            ': ' + reason if reason else '; the log above says why.'))


# logging and the exit -----------------------------------------------------------------------
class _FormatArgsFilter(logging.Filter):
    """Gives a `%s` to records logged with arguments but no placeholder, which logging cannot
    format: tensorpack's `logger.error("Training failed at global_step=", step)` would
    otherwise print a logging TypeError instead of the step."""

    def filter(self, record):
        if record.args and isinstance(record.msg, str) and '%' not in record.msg:
            count = len(record.args) if isinstance(record.args, tuple) else 1
            record.msg = record.msg + ' '.join(['%s'] * count)
        return True


def fix_tensorpack_log_format():
    tensorpack_logger = logging.getLogger('tensorpack')
    if not any(isinstance(f, _FormatArgsFilter) for f in tensorpack_logger.filters):
        tensorpack_logger.addFilter(_FormatArgsFilter())


def _flush_logs():
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    logging.shutdown()


def _wait_for_input_threads(timeout=10.0):
    """Let tensorpack's input threads end first: each logs 'Exited.' as it ends, which may come
    after training stopped and would then push the final message off the last line."""
    from tensorpack.input_source.input_source import EnqueueThread
    deadline = time.monotonic() + timeout
    for thread in threading.enumerate():
        if isinstance(thread, EnqueueThread) and thread is not threading.current_thread():
            thread.join(max(deadline - time.monotonic(), 0.))


def watch_log_file():
    """Make a log file that can no longer be written (a full disk) say so once on stderr and drop out,
    instead of printing a "--- Logging error ---" traceback for every later message."""
    tensorpack_logger = logging.getLogger('tensorpack')
    for handler in tensorpack_logger.handlers:
        if isinstance(handler, logging.FileHandler) and not getattr(handler, '_watched', False):
            handler._watched = True
            handler.handleError = _log_file_failed(tensorpack_logger, handler)


def _log_file_failed(owner, handler):
    def handle_error(record):
        owner.removeHandler(handler)
        cause = one_line(sys.exc_info()[1]) if sys.exc_info()[1] is not None else 'write failed'
        _write_stderr('Cannot write the log file {} ({}); the log continues on the terminal only.'.format(
            handler.baseFilename, cause))
    return handle_error


def _write_stderr(text):
    try:
        sys.stderr.write(text + '\n')
        sys.stderr.flush()
    except (OSError, ValueError):
        pass


def _final_line(text, level):
    """The run's last line: into the log files through the logger, and straight to stderr (not through
    the logger's terminal handler), so that it ends the output even when the log file can't be written."""
    tensorpack_logger = logging.getLogger('tensorpack')
    record = tensorpack_logger.makeRecord(tensorpack_logger.name, level, __file__, 0, text, (), None)
    for handler in tensorpack_logger.handlers:
        if isinstance(handler, logging.FileHandler):
            handler.handle(record)
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    _write_stderr('[{}] {}{}'.format(time.strftime('%m%d %H:%M:%S'), 'ERR ' if level >= logging.ERROR else 'WRN ',
                                     text))


def run_and_exit(main):
    """Run `main()` as train.py's whole process and exit with one of the codes above.

    The last line of a failed run says what went wrong; it goes to stderr directly. The
    interpreter's exit handlers then run as usual (main() has already stopped the data workers);
    should one of them hang, the process ends anyway `EXIT_GRACE_SECONDS` later.
    """
    global _installed_sigterm_handler
    fix_tensorpack_log_format()
    _installed_sigterm_handler = SigtermHandler().install()
    try:
        main()
    except SystemExit:
        raise
    except StopRequested as stop:
        _wait_for_input_threads()
        _final_line(stop.message, logging.WARNING)
        code = EXIT_SIGTERM
    except KeyboardInterrupt:
        _wait_for_input_threads()
        _final_line('Interrupted (Ctrl-C).', logging.ERROR)
        code = EXIT_INTERRUPTED
    except BaseException as err:   # noqa: BLE001 - every failure must give a non-zero exit
        _wait_for_input_threads()
        logger.error('Training failed:\n' + ''.join(traceback.format_exception(type(err), err, err.__traceback__)))
        _final_line('Training failed: {}: {}'.format(type(err).__name__, one_line(err)), logging.ERROR)
        code = EXIT_FAILED
    else:
        return
    timer = threading.Timer(EXIT_GRACE_SECONDS, os._exit, (code,))
    timer.daemon = True
    timer.start()
    sys.exit(code)
