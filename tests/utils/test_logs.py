"""utils/logs.py: messages reach tensorpack's logger when it is loaded, else stdout, naming the caller;
scalars and logged values are read back from tensorpack's log text."""
import logging
import os
import subprocess
import sys

import pytest

from utils import logs

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


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


# Lines as train.py's tensorpack logger writes them; the second epoch's scalars come through
# horovodrun, which prefixes each line with the rank.
TRAIN_LOG = """\
[1206 10:00:00 @train.py:222] Warmup steps: 10
[1206 10:00:00 @train.py:223] LR Schedule (steps, value): [(0, 1e-05), (10, 0.005), (16, 0.0005)]
[1206 10:00:00 @train.py:224] Last step: 32
[1206 10:00:05 @base.py:285] Start Epoch 1 ...
[1206 10:00:09 @monitor.py:474] QueueInput/queue_size: 50
[1206 10:00:09 @monitor.py:474] Throughput (samples/sec): 2.5
[1206 10:00:09 @monitor.py:474] learning_rate: 0.01
[1206 10:00:09 @monitor.py:474] total_cost: 1.23
[1206 10:00:09 @monitor.py:474] wd_cost: 0.4
[1206 10:00:12 @eval.py:301] total_cost: 99 is not a monitor line
[1206 10:00:12 @monitor.py:474] coco_val2017-mAP(bbox)/IoU=0.5:0.95: 0.0123
[0]<stdout>:[1206 10:00:20 @monitor.py:474] learning_rate: 0.001
[0]<stdout>:[1206 10:00:20 @monitor.py:474] total_cost: nan
[1206 10:00:30 @train.py:224] Last step: 64
"""


def test_monitor_values_in_order_with_a_horovod_prefix():
    assert logs.monitor_values(TRAIN_LOG, 'learning_rate') == [0.01, 0.001]
    costs = logs.monitor_values(TRAIN_LOG, 'total_cost')   # not the @eval.py line
    assert costs[0] == 1.23 and len(costs) == 2 and costs[1] != costs[1]   # nan


def test_monitor_names_with_slashes_parentheses_and_colons_are_literal():
    assert logs.monitor_values(TRAIN_LOG, 'coco_val2017-mAP(bbox)/IoU=0.5:0.95') == [0.0123]
    assert logs.monitor_values(TRAIN_LOG, 'Throughput (samples/sec)') == [2.5]
    assert logs.monitor_values(TRAIN_LOG, 'QueueInput/queue_size') == [50.0]
    assert logs.monitor_values(TRAIN_LOG, 'coco_val2017-mAP(bbox)/IoU=0.5.0.95') == []   # '.' is not a wildcard


def test_monitor_values_match_the_whole_name():
    assert logs.monitor_values(TRAIN_LOG, 'cost') == []   # total_cost and wd_cost end in it
    assert logs.monitor_values(TRAIN_LOG, 'learning') == []
    assert logs.monitor_values('', 'total_cost') == []


def test_logged_value_is_the_literal_of_the_first_line():
    assert logs.logged_value(TRAIN_LOG, 'Warmup steps:') == 10
    assert logs.logged_value(TRAIN_LOG, 'LR Schedule (steps, value):') == [(0, 1e-05), (10, 0.005), (16, 0.0005)]
    assert logs.logged_value(TRAIN_LOG, 'Last step:') == 32   # not the later 64
    assert logs.logged_value(TRAIN_LOG, 'queue_size:') == 50


def test_logged_value_of_a_missing_label_names_it():
    with pytest.raises(ValueError, match=r"no line with 'Max epoch:' in the log"):
        logs.logged_value(TRAIN_LOG, 'Max epoch:')
