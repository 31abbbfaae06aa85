"""TrainingMapper of dataflow/mapper.py, built from a hand-made MapperParams record."""
import pickle

import numpy as np
import pytest

from dataflow.anchor_targets import AnchorLabelParams
from dataflow.mapper import MapperParams, TrainingMapper, derive_seed
from tests.dataflow.one_box import one_box_roidb
from utils import tensor_names as names

PARAMS = MapperParams(
    mode_fpn=True, mode_mask=True, short_edge_size=(24, 40), max_size=64, absolute_coord=True, num_category=2,
    anchor_stride=16, anchor_sizes=(4, 8, 16, 32, 64), anchor_ratios=(0.5, 1., 2.),
    fpn_anchor_strides=(4, 8, 16, 32, 64),
    anchor_params=AnchorLabelParams(batch_per_im=16, fg_ratio=0.5, positive_thresh=0.7, negative_thresh=0.3,
                                    crowd_overlap_thresh=0.7))


@pytest.fixture
def roidb(tmp_path):
    return one_box_roidb(tmp_path / 'a.png', (20, 30), (4, 2, 16, 10), 2)


def _same(a, b):
    return a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def test_a_pickled_mapper_maps_like_the_original_and_a_worker_copy_draws_its_own_stream(roidb):
    mapper = TrainingMapper(seed=3, **PARAMS._asdict())
    copy = pickle.loads(pickle.dumps(mapper))   # what a spawned worker gets
    worker = mapper.for_worker(0)
    firsts = [mapper(roidb) for _ in range(4)]
    assert all(_same(a, copy(roidb)) for a in firsts)
    assert not all(_same(a, worker(roidb)) for a in firsts)
    datapoint = firsts[0]
    assert datapoint[names.GT_LABELS].tolist() == [2] and datapoint[names.GT_LABELS].dtype == np.int64
    height, width = datapoint[names.IMAGE].shape[:2]
    assert datapoint[names.GT_MASKS_PACKED].shape == (1, height, -(-width // 8))


def test_derive_seed_is_a_function_of_its_key():
    assert derive_seed(1, 2) == derive_seed(1, 2) != derive_seed(2, 1)
    assert 0 <= derive_seed(7) < 2 ** 32
