"""predict_image / predict_dataflow of inference/run.py on a fake predictor."""
import json

import numpy as np
import pycocotools.mask as coco_mask
import pytest

from inference.run import multithread_predict_dataflow, predict_dataflow, predict_image
from tests.inference.fakes import SETTINGS, FakeModel, ListDataFlow


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
    results = multithread_predict_dataflow(
        dataflows, [FakeModel(False), FakeModel(False)], **SETTINGS)
    assert [r['image_id'] for r in results] == [1, 1, 2, 2, 3, 3]
    with pytest.raises(ValueError, match='one model_func per dataflow'):
        multithread_predict_dataflow(dataflows, [FakeModel(False)], **SETTINGS)
