"""Fingerprints of the model variables, logged per Horovod rank or per replicated tower so that
runs (and tests) can show the copies started apart and stayed in step; and the log line of the
first images each rank reads."""
import hashlib
import re

import numpy as np

from utils.tf_compat import tf  # must come before tensorpack

from tensorpack.dataflow import ProxyDataFlow
from tensorpack.utils import logger

__all__ = ['FINGERPRINT_LOG_RE', 'FIRST_IMAGES_LOG_RE', 'TOWER_FINGERPRINT_LOG_RE', 'variables_fingerprint',
           'model_variables', 'log_variables_fingerprint', 'LogFirstDatapoints', 'make_fingerprint_callback',
           'variables_by_tower', 'make_tower_fingerprint_callback']

# One stdout line per rank and moment; tests and people compare these across ranks.
FINGERPRINT_LOG_RE = re.compile(
    r'Rank (?P<rank>\d+) model variables (?P<when>[\w-]+): fingerprint (?P<fingerprint>[0-9a-f]+) '
    r'over (?P<count>\d+) variables')
FIRST_IMAGES_LOG_RE = re.compile(r'Rank (?P<rank>\d+) first training images: (?P<names>.*)$')


def variables_fingerprint(named_values):
    """A 16-hex-digit digest of [(name, numpy array), ...], independent of their order.

    Equal fingerprints mean the same names, dtypes, shapes and bits (short of a sha1 collision).
    """
    digest = hashlib.sha1()
    for name, value in sorted(named_values, key=lambda item: item[0]):
        value = np.ascontiguousarray(value)
        digest.update('{}|{}|{}|'.format(name, value.dtype.str, value.shape).encode('utf-8'))
        digest.update(value.tobytes())
    return digest.hexdigest()[:16]


def model_variables():
    """The trainable variables and the other model state a checkpoint carries (e.g. BatchNorm's
    moving statistics), without optimizer slots, counters or callbacks' summaries."""
    by_name = {v.name: v for v in tf.trainable_variables() + tf.model_variables()}
    return [by_name[name] for name in sorted(by_name)]


def log_variables_fingerprint(sess, variables, rank, when):
    """Fetch `variables` and log their fingerprint as one FINGERPRINT_LOG_RE line; returns it."""
    values = sess.run(variables)
    fingerprint = variables_fingerprint(zip([v.op.name for v in variables], values))
    logger.info('Rank {} model variables {}: fingerprint {} over {} variables'.format(
        rank, when, fingerprint, len(variables)))
    return fingerprint


class LogFirstDatapoints(ProxyDataFlow):
    """Passes `ds` through unchanged and logs `describe(datapoint)` of its first `count`
    datapoints, once per process, as one FIRST_IMAGES_LOG_RE line (shows what each rank reads)."""

    def __init__(self, ds, describe, count, rank):
        super().__init__(ds)
        self._describe = describe
        self._count = count
        self._rank = rank
        self._seen = []
        self._logged = False

    def _log(self):
        self._logged = True
        logger.info('Rank {} first training images: {}'.format(self._rank, ' '.join(self._seen)))

    def __iter__(self):
        for datapoint in self.ds:
            if not self._logged:
                self._seen.append(str(self._describe(datapoint)))
                if len(self._seen) >= self._count:
                    self._log()
            yield datapoint
        if not self._logged:
            self._log()


def make_fingerprint_callback(rank):
    """A callback run by every rank: logs the model variables' fingerprint at the end of the last
    epoch (before the trainer's epoch-end broadcast, so it shows the ranks stayed in step) and
    after training."""
    from tensorpack.callbacks import Callback

    class LogVariablesFingerprint(Callback):
        _chief_only = False

        def _setup_graph(self):
            self._variables = model_variables()

        def _after_epoch(self):
            if self.epoch_num == self.trainer.max_epoch:
                log_variables_fingerprint(self.trainer.sess, self._variables, rank, 'last-epoch-before-broadcast')

        def _after_train(self):
            log_variables_fingerprint(self.trainer.sess, self._variables, rank, 'after-training')

    return LogVariablesFingerprint()


# The replicated trainer: one process, one copy of the model per tower ------------------------
TOWER_FINGERPRINT_LOG_RE = re.compile(
    r'Tower (?P<tower>\d+) model variables (?P<when>[\w-]+): fingerprint (?P<fingerprint>[0-9a-f]+) '
    r'over (?P<count>\d+) variables')


def variables_by_tower(variables, towers):
    """{tower: [(name without the tower prefix, variable), ...]} for the replicated trainer, where
    tower 0 owns the unprefixed variables and tower k > 0 its copies under 'tower<k>/'."""
    prefixes = {'tower{}/'.format(k): k for k in range(1, towers)}
    grouped = {k: [] for k in range(towers)}
    for var in variables:
        name = var.op.name
        tower = prefixes.get(name.split('/', 1)[0] + '/', 0)
        grouped[tower].append((name[len('tower{}/'.format(tower)):] if tower else name, var))
    return grouped


def make_tower_fingerprint_callback(towers):
    """A callback for the replicated trainer: at the end of the last epoch (before the trainer's
    epoch-end copy of tower 0's variables to the others) logs each tower's fingerprint as one
    TOWER_FINGERPRINT_LOG_RE line; equal lines show the summed gradients kept the towers in step."""
    from tensorpack.callbacks import Callback

    class LogTowerFingerprints(Callback):
        def _setup_graph(self):
            self._grouped = variables_by_tower(model_variables(), towers)

        def _after_epoch(self):
            if self.epoch_num != self.trainer.max_epoch:
                return
            for tower, named in sorted(self._grouped.items()):
                values = self.trainer.sess.run([var for _, var in named])
                fingerprint = variables_fingerprint(zip([name for name, _ in named], values))
                logger.info('Tower {} model variables last-epoch-before-broadcast: fingerprint {} over {} variables'
                            .format(tower, fingerprint, len(named)))

    return LogTowerFingerprints()
