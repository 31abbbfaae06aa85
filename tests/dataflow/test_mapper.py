"""TrainingMapper of dataflow/mapper.py, built from a hand-made MapperParams record."""
import pickle

import numpy as np
import pytest

from dataflow.anchor_targets import AnchorLabelParams, feature_map_hw
from dataflow.mapper import MapperParams, TrainingMapper, derive_seed
from tests.dataflow.one_box import one_box_roidb
from utils import tensor_names as names

PARAMS = MapperParams(
    mode_fpn=True, mode_mask=True, short_edge_size=(24, 40), max_size=64, absolute_coord=True, num_category=2,
    anchor_stride=16, anchor_sizes=(4, 8, 16, 32, 64), anchor_ratios=(0.5, 1., 2.),
    fpn_anchor_strides=(4, 8, 16, 32, 64), resolution_requirement=32,
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


# anchor targets of the image's own feature map: the whole canvas's, cropped -------------------
C4_PARAMS = PARAMS._replace(mode_fpn=False, mode_mask=False, short_edge_size=(40, 76), max_size=128,
                            anchor_sizes=(32, 64), resolution_requirement=None)
FPN_PARAMS = PARAMS._replace(mode_mask=False, short_edge_size=(40, 76), max_size=128)


def _anchor_entries(datapoint):
    return {k: v for k, v in datapoint.items() if k.startswith('anchor_')}


@pytest.mark.parametrize('params', [C4_PARAMS, FPN_PARAMS], ids=['c4', 'fpn'])
def test_anchor_targets_are_the_canvas_targets_cropped_to_the_feature_map(params, tmp_path, monkeypatch):
    roidbs = [one_box_roidb(tmp_path / '{}.png'.format(i), shape, box, 1) for i, (shape, box) in enumerate([
        ((40, 60), (2, 4, 22, 24)), ((47, 33), (5, 30, 25, 45)), ((60, 80), (4, 4, 20, 20))])]
    mapper = TrainingMapper(seed=4, **params._asdict())
    outputs = [mapper(roidb) for roidb in roidbs * 3]   # random sizes in 40..76, random flips
    # Today's targets: the whole MAX_SIZE canvas labelled (and sampled), then cropped as the graph does.
    monkeypatch.setattr('dataflow.mapper.labelled_region_hw', lambda grid, image_hw, feature_hw: grid.shape[:2])
    canvas_mapper = TrainingMapper(seed=4, **params._asdict())
    references = [canvas_mapper(roidb) for roidb in roidbs * 3]
    strides = params.fpn_anchor_strides if params.mode_fpn else (params.anchor_stride,)
    beyond = 0   # images whose inside anchors reach past the (rounded-down C4) feature map
    for new, reference in zip(outputs, references):
        height, width = new[names.IMAGE].shape[:2]
        assert _anchor_entries(new).keys() == _anchor_entries(reference).keys()
        for key, value in _anchor_entries(new).items():
            assert value.tobytes() == reference[key].tobytes() and value.dtype == reference[key].dtype
        levels = sorted(k for k in _anchor_entries(new) if 'labels' in k)
        for key, stride in zip(levels, strides):
            assert new[key].shape[:2] == feature_map_hw((height, width), stride, params.resolution_requirement)
        beyond += int(height % 16 >= 12 or width % 16 >= 12)
    if not params.mode_fpn:
        assert beyond > 0   # the case where labelling only the feature map's cells would sample differently
    assert len({dp[names.IMAGE].shape for dp in outputs}) > 3


def test_the_image_is_sent_as_uint8_rounded_from_the_float_resize(roidb):
    mapper = TrainingMapper(seed=3, **PARAMS._asdict())
    image = mapper(roidb)[names.IMAGE]
    assert image.dtype == np.uint8 and image.shape[2] == 3
    # The same resize and flip in float32 (a fresh mapper of the same seed draws the same ones).
    import cv2
    source = cv2.imread(roidb['file_name'], cv2.IMREAD_COLOR).astype(np.float32)
    state = TrainingMapper(seed=3, **PARAMS._asdict())._setup()
    float_image = state.augmentors.get_transform(source).apply_image(source)
    assert np.abs(image - float_image).max() <= 0.5
    assert not np.array_equal(image, float_image)   # the resize interpolates: some values moved


def test_round_to_uint8_rounds_half_to_even_and_clips_also_on_a_flipped_view():
    from dataflow.mapper import _round_to_uint8
    values = np.array([0.5, 1.5, 2.5, 3.49, 254.5, 255.5, 300., -0.4, -3.], np.float32)
    image = np.stack([values, values + 1, values * 0], axis=-1)[None, ::-1]   # [1, 9, 3], negative strides
    expected = np.clip(np.rint(image), 0, 255).astype(np.uint8)
    assert expected[0, ::-1, 0].tolist() == [0, 2, 2, 3, 254, 255, 255, 0, 0]
    assert np.array_equal(_round_to_uint8(image), expected)
