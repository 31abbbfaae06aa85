"""Logging and progress bars for modules that must not load TensorFlow (dataset/, image reading),
and reading values back from tensorpack's log text (tests, tools/gpu_check_items.py).

tensorpack's logger is the Python logger named 'tensorpack', and importing any tensorpack module
imports TensorFlow. `info` / `warn` hand their message to that logger when tensorpack is
already loaded (a training or prediction process: same format, same log file), and otherwise
to a plain stdout logger of the same format (`python -m dataset.shapes`, tools that only read
data). The caller's file and line are reported either way.

A tensorpack log line reads `[1206 10:00:00 @monitor.py:474] total_cost: 1.23`; horovodrun puts
`[0]<stdout>:` before it. `monitor_values` and `logged_value` read such text.
"""
import ast
import logging
import re
import sys

import tqdm

__all__ = ['info', 'warn', 'progress', 'monitor_values', 'logged_value']

_FALLBACK_NAME = 'frcnn'


def _logger():
    if 'tensorpack.utils.logger' in sys.modules:
        return logging.getLogger('tensorpack')
    logger = logging.getLogger(_FALLBACK_NAME)
    if not any(getattr(h, 'frcnn_stdout', False) for h in logger.handlers):   # set up once
        handler = logging.StreamHandler(sys.stdout)
        handler.setFormatter(logging.Formatter('[%(asctime)s @%(filename)s:%(lineno)d] %(message)s',
                                               datefmt='%m%d %H:%M:%S'))
        handler.frcnn_stdout = True
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False
    return logger


def info(message):
    _logger().info(message, stacklevel=2)


def warn(message):
    _logger().warning(message, stacklevel=2)


def progress(iterable, **kwargs):
    """`iterable` wrapped in a tqdm bar styled like tensorpack's (`desc`, `total`, `disable`, ...)."""
    kwargs.setdefault('smoothing', 0.5)
    kwargs.setdefault('dynamic_ncols', True)
    kwargs.setdefault('ascii', True)
    return tqdm.tqdm(iterable, **kwargs)


def monitor_values(text, name):
    """The values of scalar `name` as tensorpack's ScalarPrinter logs them (`@monitor.py:N] name: value`),
    one float per matching line of `text`, in order; [] if there is none. `name` is literal text
    (it may hold `/`, `(`, `:`); a longer name ending in it does not match."""
    pattern = re.compile(r'@monitor\.py:\d+\] {}: (\S+)$'.format(re.escape(name)))
    return [float(m.group(1)) for line in text.splitlines() for m in [pattern.search(line)] if m]


def logged_value(text, label):
    """The Python literal after `label` on the first line of `text` that contains `label`
    (`logged_value(text, 'Warmup steps:')` -> 10). Raises ValueError if no line contains it."""
    for line in text.splitlines():
        if label in line:
            return ast.literal_eval(line.split(label, 1)[1].strip())
    raise ValueError('no line with {!r} in the log'.format(label))
