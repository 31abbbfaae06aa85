"""The dataflow builders of dataflow/build.py, from settings records made by hand (no global config)."""
import cv2
import numpy as np
import pytest

from dataflow import build
from dataflow.anchor_targets import AnchorLabelParams
from dataflow.mapper import MapperParams
from dataset import DatasetRegistry, DatasetSplit
from tests.dataflow.one_box import one_box_roidb
from utils import tensor_names as names


class _OneImageSplit(DatasetSplit):
    def __init__(self, roidb):
        self.roidb = roidb

    def training_roidbs(self):
        return [dict(self.roidb)]

    def inference_roidbs(self):
        return [{'file_name': self.roidb['file_name'], 'image_id': 1}]


def _settings(**mapper_changes):
    mapper = MapperParams(
        mode_fpn=False, mode_mask=False, short_edge_size=(32, 32), max_size=64, absolute_coord=True,
        num_category=1, anchor_stride=16, anchor_sizes=(4, 8, 16, 32, 64), anchor_ratios=(1.,),
        fpn_anchor_strides=(4, 8, 16, 32, 64),
        anchor_params=AnchorLabelParams(batch_per_im=8, fg_ratio=0.5, positive_thresh=0.7, negative_thresh=0.3,
                                        crowd_overlap_thresh=0.7))
    return build.TrainDataSettings(splits=('one_image',), class_names=['BG', 'thing'], filter_empty=True, seed=5,
                                   num_workers=0, buffer_per_worker=20, mapper=mapper._replace(**mapper_changes))


@pytest.fixture
def one_image(tmp_path):
    roidb = one_box_roidb(tmp_path / 'a.png', (20, 40), (8, 4, 24, 12), 1)
    DatasetRegistry.register('one_image', lambda: _OneImageSplit(roidb))


def _first(ds):
    ds.reset_state()
    return next(iter(ds))


def test_two_differently_configured_dataflows_in_one_process(one_image):
    c4 = _first(build.get_train_dataflow(_settings()))
    fpn_settings = _settings(mode_fpn=True, short_edge_size=(16, 16), resolution_requirement=32)
    fpn = _first(build.get_train_dataflow(fpn_settings))
    assert c4[names.IMAGE].shape == (32, 64, 3) and names.C4_ANCHOR_LABELS in c4
    assert fpn[names.IMAGE].shape == (16, 32, 3) and names.fpn_anchor_labels(2) in fpn
    # the gt box scales with the image (flipped or not): 16 x 8 px at scale 1.6 and 0.8
    np.testing.assert_allclose(np.ptp(c4[names.GT_BOXES].reshape(2, 2), axis=0), [25.6, 12.8], rtol=1e-5)
    np.testing.assert_allclose(np.ptp(fpn[names.GT_BOXES].reshape(2, 2), axis=0), [12.8, 6.4], rtol=1e-5)


def test_seed_and_rank_pick_the_streams(one_image):
    def flips(settings, rank):   # 4 epochs of the one image; its box starts at x = 12.8, or 25.6 when flipped
        ds = build.get_train_dataflow(settings, rank)
        ds.reset_state()
        return tuple(bool(dp[names.GT_BOXES][0, 0] > 20) for _ in range(4) for dp in ds)

    samples = {(seed, rank): flips(_settings()._replace(seed=seed), rank) for seed in range(3) for rank in range(2)}
    assert all(flips(_settings()._replace(seed=seed), rank) == seen for (seed, rank), seen in samples.items())
    assert len(set(samples.values())) > 1


def test_negative_worker_count_is_an_error(one_image):
    with pytest.raises(ValueError, match='DATA.NUM_WORKERS=-1'):
        build.get_train_dataflow(_settings()._replace(num_workers=-1))


def test_exif_orientations_are_counted_once_per_split(tmp_path, log_messages):
    from tests.dataflow.test_image_io import write_jpeg_with_orientation
    image = np.zeros((8, 16, 3), np.uint8)
    names = []
    for k, orientation in enumerate([6, 1, 3, None]):
        names.append(str(tmp_path / '{}.jpg'.format(k)))
        if orientation is None:
            cv2.imwrite(names[-1], image)
        else:
            write_jpeg_with_orientation(names[-1], image, orientation)
    assert build.report_exif_orientations('exif_test_split', names, True) == 2
    assert build.report_exif_orientations('exif_test_split', names, True) is None   # said once
    assert "exif_test_split: 2 of 4 images carry an EXIF orientation tag other than 1 (rotated or mirrored). " \
           "With DATA.EXIF_ORIENTATION='apply' they are read turned as the tag says" in log_messages[-1]
    assert build.report_exif_orientations('exif_test_ignored', names, False) == 2
    assert "With DATA.EXIF_ORIENTATION='ignore' they are read as stored" in log_messages[-1]
