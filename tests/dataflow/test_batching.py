"""dataflow/batching.py: aspect-ratio grouping and padding of several images per tower (numpy only)."""
import numpy as np
import pytest
from tensorpack.dataflow import DataFromList, MapData

from dataflow import build
from dataflow.batching import AspectRatioGroupedBatches, BatchingParams, add_batching, pad_batch
from dataset import DatasetRegistry
from tests.dataflow.test_build import _OneImageSplit, _settings, one_image  # noqa: F401  (the fixture)
from utils import tensor_names as names


def datapoint(height, width, num_gt, tag=0, anchor_hw=(3, 4), masks=True):
    """A one-image datapoint of the FPN contract with one anchor level (lvl2), A = 2 anchors."""
    dp = {names.IMAGE: np.full((height, width, 3), 100. + tag, np.float32),
          names.GT_BOXES: np.arange(num_gt * 4, dtype=np.float32).reshape(num_gt, 4) + tag,
          names.GT_LABELS: np.arange(1, num_gt + 1, dtype=np.int64),
          names.fpn_anchor_labels(2): np.ones(anchor_hw + (2,), np.int32),
          names.fpn_anchor_boxes(2): np.full(anchor_hw + (2, 4), 7., np.float32)}
    if masks:
        dp[names.GT_MASKS_PACKED] = np.full((num_gt, height, -(-width // 8)), 255, np.uint8)
    return dp


def test_pad_batch_pads_to_the_multiple_and_keeps_each_image():
    batch = pad_batch([datapoint(40, 50, 2, tag=1, anchor_hw=(10, 13)), datapoint(33, 70, 0, tag=2)], 32)
    # largest h, w = 40, 70 -> rounded up to 64, 96
    assert batch[names.IMAGE].shape == (2, 64, 96, 3)
    np.testing.assert_array_equal(batch[names.IMAGE_VALID_HW], [[40, 50], [33, 70]])
    assert batch[names.IMAGE_VALID_HW].dtype == np.int32
    image = batch[names.IMAGE]
    assert np.all(image[0, :40, :50] == 101) and np.all(image[0, 40:] == 0) and np.all(image[0, :, 50:] == 0)
    assert np.all(image[1, :33, :70] == 102) and image[1, 33:].sum() == 0
    np.testing.assert_array_equal(batch[names.GT_COUNTS], [2, 0])
    assert batch[names.GT_BOXES].shape == (2, 2, 4) and np.all(batch[names.GT_BOXES][1] == 0)
    np.testing.assert_array_equal(batch[names.GT_BOXES][0], np.arange(8).reshape(2, 4) + 1)
    np.testing.assert_array_equal(batch[names.GT_LABELS], [[1, 2], [0, 0]])
    assert batch[names.GT_LABELS].dtype == np.int64
    masks = batch[names.GT_MASKS_PACKED]
    assert masks.shape == (2, 2, 64, 12) and masks.dtype == np.uint8     # ceil(96 / 8) = 12 bytes
    assert np.all(masks[0, :, :40, :7] == 255) and masks[0, :, 40:].sum() == 0 and masks[0, :, :, 7:].sum() == 0
    # anchors: padded to the largest level array of the batch, labels with -1, boxes with 0
    labels = batch[names.fpn_anchor_labels(2)]
    assert labels.shape == (2, 10, 13, 2) and labels.dtype == np.int32
    assert np.all(labels[0] == 1)
    assert np.all(labels[1, :3, :4] == 1) and np.all(labels[1, 3:] == -1) and np.all(labels[1, :, 4:] == -1)
    boxes = batch[names.fpn_anchor_boxes(2)]
    assert boxes.shape == (2, 10, 13, 2, 4) and np.all(boxes[1, :3, :4] == 7) and boxes[1, 3:].sum() == 0


def test_pad_batch_refuses_unknown_entries_and_mixed_keys():
    with pytest.raises(KeyError, match="'extra'"):
        pad_batch([dict(datapoint(8, 8, 1), extra=np.zeros(3))], 8)
    with pytest.raises(ValueError, match='different keys'):
        pad_batch([datapoint(8, 8, 1), datapoint(8, 8, 1, masks=False)], 8)


def test_batches_group_by_aspect_ratio_in_arrival_order():
    # L = landscape (h <= w), P = portrait; the tag of a datapoint is its arrival order
    shapes = [(30, 40), (50, 20), (40, 40), (60, 30), (20, 50), (35, 35), (45, 25)]   # L P L P L L P
    ds = AspectRatioGroupedBatches(DataFromList([datapoint(h, w, 1, tag=i) for i, (h, w) in enumerate(shapes)],
                                                shuffle=False), batch_size=2, multiple=16)
    ds.reset_state()
    batches = list(ds)
    assert len(ds) == 3     # 7 // 2, an estimate: what is left in a bucket at the end is dropped
    tags = [[int(img[0, 0, 0]) - 100 for img in b[names.IMAGE]] for b in batches]
    assert tags == [[0, 2], [1, 3], [4, 5]]     # the lone portrait 6 is dropped
    np.testing.assert_array_equal(batches[1][names.IMAGE_VALID_HW], [[50, 20], [60, 30]])
    assert batches[1][names.IMAGE].shape[1:3] == (64, 32)     # 60 x 30 rounded up to 16
    assert batches[0][names.IMAGE].shape[1:3] == (48, 48)


def test_one_image_per_tower_has_no_batcher(one_image):  # noqa: F811
    ds = build.get_train_dataflow(_settings())
    assert isinstance(ds, MapData) and not isinstance(ds, AspectRatioGroupedBatches)
    source = DataFromList([1])
    assert add_batching(source, None) is source


class _TwiceSplit(_OneImageSplit):
    def training_roidbs(self):
        return [dict(self.roidb), dict(self.roidb)]


def test_two_images_per_tower_batches_the_map_step(one_image):  # noqa: F811
    DatasetRegistry.register('one_image_twice', lambda: _TwiceSplit(DatasetRegistry.get('one_image').roidb))
    settings = _settings()._replace(splits=('one_image_twice',), batching=BatchingParams(2, 16))
    ds = build.get_train_dataflow(settings)
    assert isinstance(ds, AspectRatioGroupedBatches) and isinstance(ds.ds, MapData)
    ds.reset_state()
    batch = next(iter(ds))
    assert batch[names.IMAGE].shape[1:3] == (32, 64)     # the 20 x 40 image resized to 32 x 64 (multiples of 16)
    assert batch[names.IMAGE].shape[0] == 2 and list(batch[names.GT_COUNTS]) == [1, 1]


def test_batching_params_from_config_values():
    with pytest.raises(ValueError, match='2 or more'):
        BatchingParams(1, 32)
    assert BatchingParams(4, 32).batch_size == 4 and BatchingParams(4, 32).multiple == 32
