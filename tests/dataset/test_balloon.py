"""Balloon (VIA json) splits: the synthetic writer, loading both layouts, bad regions, evaluation."""
import json

import cv2
import numpy as np
import pytest

from dataset import DatasetRegistry, register_balloon
from dataset.balloon import BalloonDemo, write_via_dataset


@pytest.fixture(scope='module')
def demo_dir(tmp_path_factory):
    basedir = tmp_path_factory.mktemp('via')
    write_via_dataset(str(basedir), num_train=3, num_val=2, image_size=96, seed=1)
    return basedir


def test_synthetic_dataset_loads_with_both_base_directories(demo_dir, monkeypatch):
    monkeypatch.setattr(DatasetRegistry, '_registry', {})
    monkeypatch.setattr(DatasetRegistry, '_metadata', {})
    monkeypatch.setattr(DatasetRegistry, '_prefixes', {})
    for basedir in (demo_dir, demo_dir / 'balloon'):   # DATA.BASEDIR=~/data or ~/data/balloon
        register_balloon(str(basedir))
        assert DatasetRegistry.get_metadata('balloon_val', 'class_names') == ['BG', 'balloon']
        roidbs = DatasetRegistry.get('balloon_train').training_roidbs()
        assert len(roidbs) == 3
        assert roidbs[0]['file_name'] == str(demo_dir / 'balloon' / 'train' / 'balloon_0000.jpg')
    assert len(DatasetRegistry.get('balloon_val').training_roidbs()) == 2   # list-style regions


def test_polygons_outline_the_painted_balloons(demo_dir):
    roidbs = BalloonDemo(str(demo_dir), 'train').training_roidbs()
    for roidb in roidbs:
        assert (roidb['height'], roidb['width']) == (72, 96)
        assert len(roidb['boxes']) >= 1 and roidb['class'].tolist() == [1] * len(roidb['boxes'])
        assert roidb['is_crowd'].dtype == np.int8 and not roidb['is_crowd'].any()
        image = cv2.imread(roidb['file_name']).astype(np.float32)
        for box, (polygon,) in zip(roidb['boxes'], roidb['segmentation']):
            assert polygon.dtype == np.float32
            np.testing.assert_allclose(box, np.concatenate([polygon.min(0), polygon.max(0)]))
            # the VIA points are pixel indices; +0.5 made them continuous coordinates
            np.testing.assert_allclose(polygon - 0.5, np.round(polygon - 0.5))
            inside = cv2.fillPoly(np.zeros(image.shape[:2], np.uint8), [np.int32(polygon - 0.5)], 1)
            ring = cv2.dilate(inside, np.ones((5, 5), np.uint8)) - inside
            inner = cv2.erode(inside, np.ones((5, 5), np.uint8)).astype(bool)
            # a flat colour inside, something else around
            assert image[inner].std(axis=0).max() < 40
            assert np.abs(np.median(image[inner], 0) - np.median(image[ring.astype(bool)], 0)).max() > 30


def test_handwritten_via_json_with_bad_regions(tmp_path):
    split_dir = tmp_path / 'train'
    split_dir.mkdir()
    cv2.imwrite(str(split_dir / 'x.jpg'), np.zeros((20, 30, 3), np.uint8))
    polygon = {'name': 'polygon', 'all_points_x': [2, 10, 10, 2], 'all_points_y': [3, 3, 9, 9]}
    regions = {'0': {'shape_attributes': polygon, 'region_attributes': {}},
               '1': {'shape_attributes': {'name': 'polygon', 'all_points_x': [1, 2], 'all_points_y': [1, 2]},
                     'region_attributes': {}},
               '2': {'shape_attributes': {'name': 'rect', 'x': 1, 'y': 1, 'width': 3, 'height': 3},
                     'region_attributes': {}}}
    (split_dir / 'via_region_data.json').write_text(json.dumps({'x.jpg123': {'filename': 'x.jpg', 'regions': regions}}))
    roidb, = BalloonDemo(str(tmp_path), 'train').training_roidbs()
    np.testing.assert_allclose(roidb['boxes'], [[2.5, 3.5, 10.5, 9.5]])
    assert roidb['image_id'] == 'x.jpg'
    with pytest.raises(FileNotFoundError, match='via_region_data.json.*make-demo'):
        BalloonDemo(str(tmp_path), 'val').training_roidbs()
    (split_dir / 'x.jpg').unlink()
    with pytest.raises(FileNotFoundError, match='x.jpg'):
        BalloonDemo(str(tmp_path), 'train').inference_roidbs()


def test_evaluation_of_perfect_and_empty_results(demo_dir, tmp_path):
    split = BalloonDemo(str(demo_dir), 'val')
    results = []
    for roidb in split.training_roidbs():
        for x1, y1, x2, y2 in roidb['boxes']:
            results.append({'image_id': roidb['image_id'], 'category_id': 1,
                            'bbox': [x1, y1, x2 - x1, y2 - y1], 'score': 0.8})
    inference_ids = {r['image_id'] for r in split.inference_roidbs()}
    assert {r['image_id'] for r in results} <= inference_ids
    output = tmp_path / 'out.json'
    metrics = split.eval_inference_results(results, output=str(output))
    assert metrics['mAP(bbox)/IoU=0.5:0.95'] == pytest.approx(1.0)
    assert json.loads(output.read_text())[0]['image_id'] == results[0]['image_id']
    assert split.eval_inference_results([])['mAP(bbox)/IoU=0.5'] == 0
