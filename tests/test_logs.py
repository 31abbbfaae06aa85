"""utils/logs.py: messages reach tensorpack's logger when it is loaded, else stdout, naming the caller."""
import logging
import os
import subprocess
import sys

from utils import logs

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class _Records(logging.Handler):
    def __init__(self):
        super().__init__()
        self.records = []

    def emit(self, record):
        self.records.append(record)


def test_with_tensorpack_loaded_messages_go_to_its_logger():
    from tensorpack.utils import logger   # noqa: F401  (loads tensorpack's logger)

    handler = _Records()
    tensorpack_logger = logging.getLogger('tensorpack')
    tensorpack_logger.addHandler(handler)
    try:
        logs.info('loaded 3 images')
        logs.warn('skipped 1 image')
    finally:
        tensorpack_logger.removeHandler(handler)
    assert [(r.levelname, r.getMessage()) for r in handler.records] == [
        ('INFO', 'loaded 3 images'), ('WARNING', 'skipped 1 image')]
    assert {r.filename for r in handler.records} == {'test_logs.py'}   # the caller, not utils/logs.py


def test_without_tensorpack_messages_go_to_stdout():
    code = "from utils import logs; logs.info('hello'); import sys; assert 'tensorpack' not in sys.modules"
    proc = subprocess.run([sys.executable, '-c', code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.rstrip().endswith('@<string>:1] hello')


def test_progress_wraps_the_iterable():
    assert list(logs.progress(range(3), disable=True)) == [0, 1, 2]
