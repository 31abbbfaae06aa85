"""utils/fingerprints.py: the variables' fingerprint and the first-images log line."""
import re

import numpy as np

from utils import fingerprints


def test_variables_fingerprint_sees_every_bit_and_name():
    values = [('a/W', np.arange(6, dtype=np.float32).reshape(2, 3)), ('b/b', np.zeros(3, np.float32))]
    base = fingerprints.variables_fingerprint(values)
    assert re.fullmatch(r'[0-9a-f]{16}', base)
    assert fingerprints.variables_fingerprint(values[::-1]) == base
    flipped = values[0][1].copy()
    flipped.view(np.int32)[0, 0] ^= 1   # one bit of one value
    assert fingerprints.variables_fingerprint([('a/W', flipped), values[1]]) != base
    assert fingerprints.variables_fingerprint([('a/V', values[0][1]), values[1]]) != base
    assert fingerprints.variables_fingerprint([('a/W', values[0][1].reshape(3, 2)), values[1]]) != base


def test_log_first_datapoints_logs_once(monkeypatch):
    from tensorpack.dataflow import DataFromList

    lines = []
    monkeypatch.setattr(fingerprints.logger, 'info', lines.append)
    ds = fingerprints.LogFirstDatapoints(DataFromList([{'f': k} for k in range(6)], shuffle=False),
                                         lambda dp: dp['f'], count=3, rank=1)
    ds.reset_state()
    assert [dp['f'] for dp in ds] == list(range(6))
    assert [dp['f'] for dp in ds] == list(range(6))
    assert lines == ['Rank 1 first training images: 0 1 2']
    assert fingerprints.FIRST_IMAGES_LOG_RE.search(lines[0])['names'] == '0 1 2'
