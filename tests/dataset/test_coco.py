"""COCO-format splits on tiny hand-written jsons: conversion, bad input, ids, evaluation."""
import json

import cv2
import numpy as np
import pytest

from dataset import DatasetRegistry, register_coco
from dataset.coco import COCODetection, COCOFormatSplit

# Category ids deliberately out of order and with gaps: classes follow the sorted ids.
CATEGORIES = [{'id': 5, 'name': 'five'}, {'id': 2, 'name': 'two'}, {'id': 9, 'name': 'nine'}]


def _square(x, y, size):
    return [x, y, x + size, y, x + size, y + size, x, y + size]


def write_split(tmp_path, images, annotations, categories=CATEGORIES, skip_files=()):
    """Write instances_toy.json under tmp_path/annotations and blank jpgs under tmp_path/toy."""
    (tmp_path / 'annotations').mkdir(exist_ok=True)
    (tmp_path / 'toy').mkdir(exist_ok=True)
    for img in images:
        if img['file_name'] not in skip_files:
            cv2.imwrite(str(tmp_path / 'toy' / img['file_name']), np.zeros((img['height'], img['width'], 3), np.uint8))
    json_path = tmp_path / 'annotations' / 'instances_toy.json'
    json_path.write_text(json.dumps({'images': images, 'annotations': annotations, 'categories': categories}))
    return COCOFormatSplit(str(json_path), str(tmp_path / 'toy'), name='toy')


def _ann(ann_id, image_id, category_id, bbox, segmentation=None, **extra):
    ann = {'id': ann_id, 'image_id': image_id, 'category_id': category_id, 'bbox': bbox,
           'area': float(bbox[2] * bbox[3]), 'iscrowd': 0}
    if segmentation is not None:
        ann['segmentation'] = segmentation
    ann.update(extra)
    return ann


def test_loading_converts_boxes_classes_and_masks(tmp_path, log_messages):
    images = [{'id': 10, 'file_name': 'a.jpg', 'height': 30, 'width': 40},
              {'id': 3, 'file_name': 'b.jpg', 'height': 20, 'width': 20},
              {'id': 7, 'file_name': 'c.jpg', 'height': 20, 'width': 20}]
    crowd_rle = {'size': [30, 40], 'counts': [0, 25, 1175]}
    annotations = [
        _ann(1, 10, 9, [2, 3, 10, 8], [[2, 3, 12, 3, 12, 11, 2, 11]]),
        _ann(2, 10, 5, [35, 20, 10, 20], [_square(35, 20, 5)]),               # clipped to the image
        _ann(3, 10, 2, [0, 0, 5, 5], crowd_rle, iscrowd=1),                    # crowd RLE: kept, no polygon
        _ann(4, 10, 2, [5, 5, 0, 4], [_square(5, 5, 4)]),                      # zero width: dropped
        _ann(5, 10, 2, [50, 5, 4, 4], [_square(50, 5, 4)]),                    # outside the image: dropped
        _ann(6, 10, 2, [20, 20, 5, 5], [[1, 1, 5, 1], _square(20, 20, 5)]),   # one 2-point polygon dropped
        _ann(7, 10, 2, [1, 1, 4, 4], [[1, 1, 5, 1, 5]]),                       # no valid polygon: dropped
        _ann(8, 7, 9, [3, 3, 0, 0], [_square(3, 3, 2)]),                       # the only one of image 7: dropped
    ]
    split = write_split(tmp_path, images, annotations)
    assert split.class_names() == ['BG', 'two', 'five', 'nine']
    roidbs = split.training_roidbs()

    assert [r['image_id'] for r in roidbs] == [3, 7, 10]   # sorted by id
    for r in roidbs[:2]:   # images left without instances stay in the list
        assert r['boxes'].shape == (0, 4) and r['boxes'].dtype == np.float32
        assert r['class'].shape == (0,) and r['is_crowd'].shape == (0,) and r['segmentation'] == []
    r = roidbs[2]
    assert r['file_name'] == str(tmp_path / 'toy' / 'a.jpg')
    assert (r['height'], r['width']) == (30, 40)
    np.testing.assert_allclose(r['boxes'], [[2, 3, 12, 11], [35, 20, 40, 30], [0, 0, 5, 5], [20, 20, 25, 25]])
    assert r['class'].dtype == np.int32 and r['class'].tolist() == [3, 2, 1, 1]
    assert r['is_crowd'].dtype == np.int8 and r['is_crowd'].tolist() == [0, 0, 1, 0]
    segmentation = r['segmentation']
    assert segmentation[2] is None
    assert [len(polygons) for i, polygons in enumerate(segmentation) if i != 2] == [1, 1, 1]
    assert segmentation[0][0].dtype == np.float32 and segmentation[0][0].shape == (4, 2)
    np.testing.assert_allclose(segmentation[0][0], [[2, 3], [12, 3], [12, 11], [2, 11]])

    summary = [m for m in log_messages if m.startswith('Loaded 3 images')]
    assert len(summary) == 1
    assert '3 boxes that are empty or outside their image' in summary[0]
    assert '2 polygons with fewer than 3 points' in summary[0]
    assert '1 instances without a valid polygon' in summary[0]


def test_box_only_json_gives_box_only_roidbs(tmp_path):
    split = write_split(tmp_path, [{'id': 1, 'file_name': 'a.jpg', 'height': 10, 'width': 10}],
                        [_ann(1, 1, 2, [1, 1, 3, 3])])
    roidb, = split.training_roidbs()
    assert 'segmentation' not in roidb
    np.testing.assert_allclose(roidb['boxes'], [[1, 1, 4, 4]])


def test_inference_roidbs(tmp_path):
    split = write_split(tmp_path, [{'id': 4, 'file_name': 'a.jpg', 'height': 10, 'width': 12}], [])
    roidb, = split.inference_roidbs()
    assert roidb['image_id'] == 4 and roidb['file_name'].endswith('a.jpg') and 'boxes' not in roidb


def test_missing_image_file_is_named(tmp_path):
    images = [{'id': 1, 'file_name': 'a.jpg', 'height': 10, 'width': 10},
              {'id': 2, 'file_name': 'gone.jpg', 'height': 10, 'width': 10}]
    split = write_split(tmp_path, images, [], skip_files=('gone.jpg',))
    with pytest.raises(FileNotFoundError, match='gone.jpg'):
        split.training_roidbs()


def test_unknown_category_names_id_and_image(tmp_path):
    split = write_split(tmp_path, [{'id': 1, 'file_name': 'a.jpg', 'height': 10, 'width': 10}],
                        [_ann(1, 1, 7, [1, 1, 3, 3])])
    with pytest.raises(ValueError, match=r'category_id 7.*\[2, 5, 9\]') as info:
        split.training_roidbs()
    assert 'a.jpg' in str(info.value)


@pytest.mark.parametrize('bbox, message', [
    ([1, 1, 3], r'has bbox \[1, 1, 3\]; a COCO bbox is 4 numbers'),
    ([1, 1, 3, 3, 5], 'a COCO bbox is 4 numbers'),
    (None, 'has bbox None'),
    ([1, 'x', 3, 3], 'non-numeric bbox'),
    ([1, float('nan'), 3, 3], 'non-finite bbox'),
    ([1, 1, float('inf'), 3], 'non-finite bbox'),
])
def test_bad_bbox_names_the_annotation_and_image(tmp_path, bbox, message):
    ann = _ann(17, 1, 5, [1, 1, 3, 3])
    ann['bbox'] = bbox
    split = write_split(tmp_path, [{'id': 1, 'file_name': 'a.jpg', 'height': 10, 'width': 10}], [ann])
    for load in (split.training_roidbs, split.inference_roidbs):   # ground truth of training and of evaluation
        with pytest.raises(ValueError, match=message) as info:
            load()
        assert str(info.value).startswith('Annotation 17 of image 1 (') and 'a.jpg' in str(info.value)


def test_non_finite_polygon_names_the_annotation(tmp_path):
    polygon = _square(1, 1, 3)
    polygon[3] = float('nan')
    split = write_split(tmp_path, [{'id': 1, 'file_name': 'a.jpg', 'height': 10, 'width': 10}],
                        [_ann(4, 1, 5, [1, 1, 3, 3], segmentation=[polygon])])
    with pytest.raises(ValueError, match=r'Annotation 4 of image 1 .*a.jpg.* non-finite coordinate'):
        split.training_roidbs()


def test_malformed_json_names_its_path(tmp_path):
    split = write_split(tmp_path, [], [])
    with open(split.json_path, 'w') as f:
        f.write('{"images": [], "annotations": [,]}')
    with pytest.raises(ValueError, match=r'instances_toy.json is not valid JSON: .*line 1, column'):
        split.training_roidbs()
    with pytest.raises(ValueError, match='instances_toy.json'):
        split.class_names()


@pytest.mark.parametrize('size', [(0, 10), (10, -3), (10, 'ten'), (10.5, 10)])
def test_bad_image_size_in_the_json_names_the_image(tmp_path, size):
    split = write_split(tmp_path, [{'id': 1, 'file_name': 'a.jpg', 'height': 10, 'width': 10}], [])
    with open(split.json_path) as f:
        dataset = json.load(f)
    dataset['images'][0]['height'], dataset['images'][0]['width'] = size
    with open(split.json_path, 'w') as f:
        json.dump(dataset, f)
    with pytest.raises(ValueError, match=r'Image 1 \(a.jpg\) .* positive whole numbers'):
        split.inference_roidbs()


def test_json_size_smaller_than_the_image_is_an_error_where_the_image_is_read(tmp_path):
    from common import ImageSizeMismatchError, read_image_bgr
    from data import recorded_size

    split = write_split(tmp_path, [{'id': 1, 'file_name': 'a.jpg', 'height': 10, 'width': 12}], [])
    cv2.imwrite(str(tmp_path / 'toy' / 'a.jpg'), np.zeros((20, 24, 3), np.uint8))   # the real image is larger
    roidb = split.inference_roidbs()[0]
    with pytest.raises(ImageSizeMismatchError, match=r'a.jpg is 24x20 .* annotations say 12x10'):
        read_image_bgr(roidb['file_name'], expected_hw=recorded_size(roidb))


def test_missing_json_explains_layout(tmp_path):
    split = COCODetection(str(tmp_path), 'val2017')
    with pytest.raises(FileNotFoundError, match='instances_val2017.json.*annotations/instances_<split>.json'):
        split.training_roidbs()


def test_register_coco_touches_no_file(tmp_path, monkeypatch):
    monkeypatch.setattr(DatasetRegistry, '_registry', {})
    monkeypatch.setattr(DatasetRegistry, '_metadata', {})
    monkeypatch.setattr(DatasetRegistry, '_prefixes', {})
    register_coco(str(tmp_path / 'nowhere'))
    for name in ('coco_train2017', 'coco_val2017', 'coco_train2014', 'coco_val2014', 'coco_minival2014',
                 'coco_valminusminival2014'):
        assert name in DatasetRegistry.names()
    split = DatasetRegistry.get('coco_minival2014')
    assert split.image_dir.endswith('val2014')
    with pytest.raises(FileNotFoundError, match='instances_val2017.json'):
        DatasetRegistry.get_metadata('coco_val2017', 'class_names')


def _eval_split(tmp_path):
    images = [{'id': 11, 'file_name': 'a.jpg', 'height': 40, 'width': 40},
              {'id': 12, 'file_name': 'b.jpg', 'height': 40, 'width': 40}]
    annotations = [_ann(1, 11, 9, [2, 2, 10, 10], [_square(2, 2, 10)]),
                   _ann(2, 11, 5, [20, 20, 12, 12], [_square(20, 20, 12)]),
                   _ann(3, 12, 2, [5, 5, 20, 20], [_square(5, 5, 20)])]
    return write_split(tmp_path, images, annotations)


def _perfect_results(split):
    """One exact detection per instance, in the contiguous classes, with RLE masks."""
    from pycocotools import mask as mask_util
    results = []
    for roidb in split.training_roidbs():
        for box, cls, polygons in zip(roidb['boxes'], roidb['class'], roidb['segmentation']):
            rle = mask_util.merge(mask_util.frPyObjects(
                [p.ravel().tolist() for p in polygons], roidb['height'], roidb['width']))
            rle['counts'] = rle['counts'].decode('ascii')
            x1, y1, x2, y2 = box
            results.append({'image_id': np.int64(roidb['image_id']), 'category_id': np.int32(cls),
                            'bbox': np.float32([x1, y1, x2 - x1, y2 - y1]), 'score': np.float32(0.9),
                            'segmentation': rle})
    return results


def test_perfect_results_score_one_and_are_written_with_original_ids(tmp_path):
    split = _eval_split(tmp_path)
    output = tmp_path / 'results.json'
    metrics = split.eval_inference_results(_perfect_results(split), output=str(output))
    for iou_type in ('bbox', 'segm'):
        for field in ('IoU=0.5:0.95', 'IoU=0.5', 'IoU=0.75', 'small'):
            assert metrics['mAP({})/{}'.format(iou_type, field)] == pytest.approx(1.0)
    assert 'mAP(segm)/large' in metrics and 'mAP(bbox)/medium' in metrics
    written = json.loads(output.read_text())
    assert sorted((r['image_id'], r['category_id']) for r in written) == [(11, 5), (11, 9), (12, 2)]


def test_boxes_only_results_give_bbox_metrics_only(tmp_path):
    split = _eval_split(tmp_path)
    results = _perfect_results(split)
    for r in results:
        del r['segmentation']
    results[0]['bbox'] = [30, 30, 5, 5]   # one miss
    metrics = split.eval_inference_results(results)
    assert not any(k.startswith('mAP(segm)') for k in metrics)
    assert 0 < metrics['mAP(bbox)/IoU=0.5'] < 1


def test_empty_results_give_zeros(tmp_path):
    metrics = _eval_split(tmp_path).eval_inference_results([])
    assert metrics['mAP(bbox)/IoU=0.5:0.95'] == 0 and set(metrics.values()) == {0.0}


def test_bad_results_are_rejected(tmp_path):
    split = _eval_split(tmp_path)
    result = {'image_id': 11, 'category_id': 4, 'bbox': [1, 1, 2, 2], 'score': 0.5}
    with pytest.raises(ValueError, match='category_id 4'):
        split.eval_inference_results([result])
    with pytest.raises(ValueError, match='99'):
        split.eval_inference_results([dict(result, category_id=1, image_id=99)])
    with pytest.raises(KeyError, match='score'):
        split.eval_inference_results([{'image_id': 11, 'category_id': 1, 'bbox': [1, 1, 2, 2]}])
