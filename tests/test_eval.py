"""Tests of eval.py: mask pasting, predict_image / predict_dataflow, the evaluation callback."""
import json
import math
import sys
import types

import numpy as np
import pycocotools.mask as coco_mask
import pytest

import eval as evaluation
from eval import DetectionResult, paste_mask, predict_dataflow, predict_image


def reference_accurate_paste(box, mask, shape_hw):
    """Pixel-by-pixel oracle of tensorpack's accurate paste.

    Pad the mask with one ring of zeros, enlarge the box about its centre by (M + 2) / M so
    the padded cells keep the original cell size, put padded cell j's value at j + 0.5 in
    padded-mask units, interpolate bilinearly (0 outside the outermost centres) at each pixel
    centre and threshold at 0.5.
    """
    size = mask.shape[0]
    padded = np.pad(mask.astype(np.float64), 1)
    x1, y1, x2, y2 = box
    half_w = (x2 - x1) / 2 * (size + 2) / size
    half_h = (y2 - y1) / 2 * (size + 2) / size
    cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
    left, top = cx - half_w, cy - half_h
    out = np.zeros(shape_hw, dtype=np.uint8)
    for row in range(shape_hw[0]):
        for col in range(shape_hw[1]):
            u = (col + 0.5 - left) / (2 * half_w) * (size + 2)
            v = (row + 0.5 - top) / (2 * half_h) * (size + 2)
            if not (0.5 <= u <= size + 1.5 and 0.5 <= v <= size + 1.5):
                continue
            j = min(int(math.floor(u - 0.5)), size)   # left grid point, keep j + 1 in range
            i = min(int(math.floor(v - 0.5)), size)
            fx, fy = u - 0.5 - j, v - 0.5 - i
            value = ((1 - fy) * ((1 - fx) * padded[i, j] + fx * padded[i, j + 1])
                     + fy * ((1 - fx) * padded[i + 1, j] + fx * padded[i + 1, j + 1]))
            out[row, col] = value >= 0.5
    return out


SHAPE_HW = (30, 40)
ORACLE_BOXES = {
    'inside': (3.0, 4.0, 20.0, 15.0),
    'outside_top_left': (-5.3, -2.7, 10.2, 8.9),
    'outside_bottom_right': (31.0, 22.0, 47.5, 36.0),
    'one_pixel': (7.0, 7.0, 8.0, 8.0),
    'fractional': (2.25, 3.75, 17.6, 9.1),
}


@pytest.mark.parametrize('name', sorted(ORACLE_BOXES))
@pytest.mark.parametrize('mask_size', [5, 14])
def test_accurate_paste_matches_pixel_oracle(name, mask_size):
    rng = np.random.RandomState(mask_size)
    mask = rng.uniform(size=(mask_size, mask_size)).astype(np.float32)
    box = np.array(ORACLE_BOXES[name], dtype=np.float32)
    expected = reference_accurate_paste(box.astype(np.float64), mask, SHAPE_HW)
    got = paste_mask(box, mask, SHAPE_HW, accurate=True)
    assert got.dtype == np.uint8 and got.shape == SHAPE_HW
    np.testing.assert_array_equal(got, expected)


def test_accurate_paste_of_full_mask_is_the_box():
    # All-ones mask, cells 2 px wide and 1 px high: along y every pixel centre is a cell centre
    # (value 1); along x the value falls from 1 at the outer cell centres to 0 one cell further
    # out, crossing 0.5 exactly on the box edge. So exactly the pixels inside the box are set.
    got = paste_mask([4.0, 6.0, 12.0, 10.0], np.ones((4, 4), np.float32), (16, 16), accurate=True)
    expected = np.zeros((16, 16), np.uint8)
    expected[6:10, 4:12] = 1
    np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize('accurate', [True, False])
def test_paste_of_empty_box_is_empty(accurate):
    got = paste_mask([5.0, 5.0, 5.0, 9.0], np.ones((4, 4), np.float32), (12, 12), accurate=accurate)
    if accurate:
        assert got.sum() == 0
    else:   # the fast paste always covers at least one column: the one of x = 5
        assert got.sum() == got[:, 5].sum() > 0


def test_paste_rejects_non_square_mask():
    with pytest.raises(ValueError, match='square'):
        paste_mask([0, 0, 4, 4], np.ones((4, 5), np.float32), (8, 8), accurate=False)


@pytest.mark.parametrize('box, rows, cols', [
    ((2.0, 3.0, 10.0, 7.0), (3, 7), (2, 10)),      # integer box: exactly its pixels
    ((2.4, 3.6, 5.5, 6.5), (4, 7), (2, 6)),        # pixels whose centres are inside
    ((7.0, 7.0, 8.0, 8.0), (7, 8), (7, 8)),        # 1x1 box
    ((-3.0, 9.0, 4.0, 15.0), (9, 12), (0, 4)),     # partly outside a 12x12 image
])
def test_fast_paste_covers_integer_box(box, rows, cols):
    got = paste_mask(box, np.ones((6, 6), np.float32), (12, 12), accurate=False)
    expected = np.zeros((12, 12), np.uint8)
    expected[rows[0]:rows[1], cols[0]:cols[1]] = 1
    assert got.dtype == np.uint8
    np.testing.assert_array_equal(got, expected)


def test_fast_paste_keeps_mask_layout():
    mask = np.zeros((4, 4), np.float32)
    mask[:, :2] = 1.0   # left half on
    got = paste_mask([0.0, 0.0, 8.0, 8.0], mask, (8, 8), accurate=False)
    assert got[:, :4].all() and not got[:, 4:].any()


class FakeModel:
    """Stands in for the predictor: known detections in resized-image pixels."""

    def __init__(self, with_masks):
        self.with_masks = with_masks
        self.seen_shapes = []

    def __call__(self, resized_img):
        self.seen_shapes.append(resized_img.shape)
        boxes = np.array([[20, 10, 100, 60], [-10, 100, 170, 130]], np.float32)
        outputs = [boxes, np.array([0.9, 0.61234567], np.float32), np.array([2, 1], np.int32)]
        if self.with_masks:
            outputs.append(np.ones((2, 4, 4), np.float32))
        return outputs


# The fast paste of an all-ones mask is exactly the box's pixels (the accurate one rounds corners).
SETTINGS = dict(short_edge_size=120, max_size=1000, accurate_paste=False)


def test_predict_image_maps_boxes_to_original_pixels():
    img = np.zeros((60, 80, 3), np.uint8)
    model = FakeModel(with_masks=True)
    results = predict_image(img, model, **SETTINGS)
    assert model.seen_shapes == [(120, 160, 3)]   # scale 2
    assert [r.class_id for r in results] == [2, 1]
    np.testing.assert_allclose(results[0].box, [10, 5, 50, 30])
    np.testing.assert_allclose(results[1].box, [0, 50, 80, 60])   # [-5, 50, 85, 65] clipped
    assert results[1].score == pytest.approx(0.61234567)
    expected_mask = np.zeros((60, 80), np.uint8)
    expected_mask[50:60, :] = 1
    np.testing.assert_array_equal(results[1].mask, expected_mask)


def test_predict_image_without_masks():
    results = predict_image(np.zeros((60, 80, 3), np.uint8), FakeModel(with_masks=False), **SETTINGS)
    assert len(results) == 2 and all(r.mask is None for r in results)


class ListDataFlow:
    """The part of the DataFlow protocol predict_dataflow uses."""

    def __init__(self, items):
        self.items = items

    def reset_state(self):
        pass

    def __len__(self):
        return len(self.items)

    def __iter__(self):
        return iter(self.items)


def test_predict_dataflow_writes_coco_results():
    img = np.zeros((60, 80, 3), np.uint8)
    df = ListDataFlow([(img, np.int64(7))])
    results = predict_dataflow(df, FakeModel(with_masks=True), **SETTINGS)
    json.dumps(results)   # serializable: no numpy scalars, counts as str
    assert [r['image_id'] for r in results] == [7, 7]
    assert [r['category_id'] for r in results] == [2, 1]
    assert results[0]['bbox'] == pytest.approx([10, 5, 40, 25])   # x, y, w, h
    assert results[1]['score'] == 0.6123
    rle = dict(results[1]['segmentation'])
    assert isinstance(rle['counts'], str) and list(rle['size']) == [60, 80]
    rle['counts'] = rle['counts'].encode('ascii')
    decoded = coco_mask.decode(rle)
    expected_mask = np.zeros((60, 80), np.uint8)
    expected_mask[50:60, :] = 1
    np.testing.assert_array_equal(decoded, expected_mask)


def test_multithread_predict_dataflow_concatenates_in_order():
    img = np.zeros((60, 80, 3), np.uint8)
    dataflows = [ListDataFlow([(img, 1)]), ListDataFlow([(img, 2), (img, 3)])]
    results = evaluation.multithread_predict_dataflow(
        dataflows, [FakeModel(False), FakeModel(False)], **SETTINGS)
    assert [r['image_id'] for r in results] == [1, 1, 2, 2, 3, 3]
    with pytest.raises(ValueError, match='one model_func per dataflow'):
        evaluation.multithread_predict_dataflow(dataflows, [FakeModel(False)], **SETTINGS)


def test_epochs_to_evaluate():
    assert evaluation.epochs_to_evaluate(3, 10) == {3, 6, 9, 10}
    assert evaluation.epochs_to_evaluate(5, 10) == {5, 10}
    with pytest.raises(ValueError, match='EVAL_PERIOD'):
        evaluation.epochs_to_evaluate(0, 10)


def test_eval_callback_puts_scores_into_monitors(monkeypatch, tmp_path):
    """The replicated path of `_eval`, with predictors, dataflows and the dataset faked."""
    seen = {}

    class FakeSplit:
        def eval_inference_results(self, results, output=None):
            seen['results'], seen['output'] = results, output
            return {'mAP(bbox)/IoU=0.5:0.95': 0.25}

    fake_dataset = types.ModuleType('dataset')
    fake_dataset.DatasetRegistry = types.SimpleNamespace(get=lambda name: FakeSplit())
    monkeypatch.setitem(sys.modules, 'dataset', fake_dataset)

    scalars = {}
    trainer = types.SimpleNamespace(
        epoch_num=2, global_step=40, max_epoch=4,
        monitors=types.SimpleNamespace(put_scalar=lambda name, value: scalars.update({name: value})))
    callback = evaluation.EvalCallback('toy_val', ['image'], ['output/boxes'], str(tmp_path))
    callback.trainer = trainer
    callback._use_horovod = False
    callback._settings = dict(SETTINGS)
    callback._eval_period = 2
    callback._predictors = [FakeModel(False)]
    callback._dataflows = [ListDataFlow([(np.zeros((60, 80, 3), np.uint8), 5)])]
    callback._before_train()
    callback._trigger_epoch()
    assert scalars == {'toy_val-mAP(bbox)/IoU=0.5:0.95': 0.25}
    assert len(seen['results']) == 2 and seen['output'].startswith(str(tmp_path))


def test_detection_result_fields():
    assert DetectionResult._fields == ('box', 'score', 'class_id', 'mask')


@pytest.mark.parametrize('num_gpus, devices', [(0, [-1]), (2, [0, 1, 0, 1])])
def test_eval_callback_builds_one_predictor_per_shard(monkeypatch, num_gpus, devices):
    import data
    from config import config as cfg

    cfg.update_args(['TRAIN.NUM_GPUS={}'.format(num_gpus), 'TRAIN.EVAL_PERIOD=3'])
    shards = []
    monkeypatch.setattr(data, 'get_eval_dataflow',
                        lambda name, shard, num_shards: shards.append((name, shard, num_shards)) or shard)
    built = []
    trainer = types.SimpleNamespace(
        max_epoch=7, get_predictor=lambda in_names, out_names, device: built.append(device) or device)
    callback = evaluation.EvalCallback('toy_val', ['image'], ['output/boxes'], '/nonexistent')
    callback.trainer = trainer
    callback._setup_graph()
    callback._before_train()
    assert built == devices
    assert shards == [('toy_val', k, len(devices)) for k in range(len(devices))]
    assert callback._epochs_to_eval == {3, 6, 7}
