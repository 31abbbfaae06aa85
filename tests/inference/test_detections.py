"""DetectionResult, the one detection record, and its COCO result dict."""
import numpy as np
import pytest

from inference.detections import DetectionResult, detection_to_coco


def test_positional_record_converts_field_by_field():
    # predict_image, viz and tools/demo_report build the record positionally: box, score, class_id, mask.
    mask = np.zeros((4, 6), np.uint8)
    mask[1:3, 2:5] = 1
    entry = detection_to_coco(DetectionResult(np.array([2., 1., 5., 3.]), 0.87654, 3, mask), np.int64(9))
    assert entry['image_id'] == 9 and type(entry['image_id']) is int
    assert entry['category_id'] == 3
    assert entry['score'] == 0.8765
    assert entry['bbox'] == pytest.approx([2, 1, 3, 2])   # x, y, w, h
    assert entry['segmentation']['size'] == [4, 6] and isinstance(entry['segmentation']['counts'], str)


def test_record_without_mask_has_no_segmentation():
    entry = detection_to_coco(DetectionResult(box=[0, 0, 1, 1], score=0.5, class_id=1, mask=None), 'a')
    assert 'segmentation' not in entry and entry['image_id'] == 'a'
