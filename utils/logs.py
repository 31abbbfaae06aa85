"""Logging and progress bars for modules that must not load TensorFlow (dataset/, image reading).

tensorpack's logger is the Python logger named 'tensorpack', and importing any tensorpack module
imports TensorFlow. `info` / `warn` hand their message to that logger when tensorpack is
already loaded (a training or prediction process: same format, same log file), and otherwise
to a plain stdout logger of the same format (`python -m dataset.shapes`, tools that only read
data). The caller's file and line are reported either way.
"""
import logging
import sys

import tqdm

__all__ = ['info', 'warn', 'progress']

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
