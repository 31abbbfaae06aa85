"""The synthetic shapes dataset: exact annotations, determinism, lazy and cached generation."""
import json
import os

import cv2
import numpy as np
import pytest
from pycocotools import mask as mask_util

from dataset import DatasetRegistry, register_shapes, shapes

SIZE = 64


def _rasterize(polygons, size):
    flat = [p.ravel().tolist() for p in polygons]
    return mask_util.decode(mask_util.merge(mask_util.frPyObjects(flat, size, size))).astype(bool)


@pytest.fixture
def registry(monkeypatch):
    monkeypatch.setattr(DatasetRegistry, '_registry', {})
    monkeypatch.setattr(DatasetRegistry, '_metadata', {})
    monkeypatch.setattr(DatasetRegistry, '_prefixes', {})


def test_mask_to_polygons_follows_pixel_edges():
    mask = np.zeros((6, 7), bool)
    mask[1:3, 1:3] = True   # an L shape: rows 1-2 cols 1-2, plus rows 3-4 cols 1-4
    mask[3:5, 1:5] = True
    polygon, = shapes.mask_to_polygons(mask)
    assert sorted(map(tuple, polygon.tolist())) == sorted([(1, 1), (3, 1), (3, 3), (5, 3), (5, 5), (1, 5)])
    np.testing.assert_array_equal(_rasterize([polygon], 7)[:6], mask)


def test_rendered_annotations_are_exact():
    num_instances = num_empty = 0
    for i in range(30):
        image, instances = shapes.render_image(np.random.default_rng([0, i]), SIZE)
        assert image.shape == (SIZE, SIZE, 3) and image.dtype == np.uint8
        num_empty += not instances
        num_instances += len(instances)
        for instance in instances:
            mask = instance['mask']
            assert instance['category_id'] in (1, 2, 3)
            assert mask.sum() == instance['area'] >= shapes.MIN_VISIBLE_PIXELS
            # polygons reproduce the visible mask pixel for pixel ...
            np.testing.assert_array_equal(_rasterize(instance['polygons'], SIZE), mask)
            # ... and the box is their extent
            points = np.concatenate(instance['polygons'])
            assert instance['box'] == [*points.min(0).tolist(), *points.max(0).tolist()]
            # the painted colour is inside (pixel noise is at most +-5.6 there)
            np.testing.assert_allclose(image[mask].mean(0), instance['color'], atol=3)
            assert np.abs(image[mask].astype(int) - instance['color']).max() <= 7
    assert num_instances > 30


def _write(basedir, num_images=6, size=SIZE, seed=0):
    return shapes.ensure_shapes_split(str(basedir), 'val', num_images, size, seed)


def test_generation_is_deterministic_and_written_as_coco(tmp_path):
    json_a, image_dir = _write(tmp_path / 'a')
    json_b, _ = _write(tmp_path / 'b')
    with open(json_a) as f_a, open(json_b) as f_b:
        text = f_a.read()
        assert text == f_b.read()
    dataset = json.loads(text)
    assert dataset['info']['num_images'] == 6 and dataset['info']['image_size'] == SIZE
    assert [c['name'] for c in dataset['categories']] == ['circle', 'square', 'triangle']
    assert image_dir == str(tmp_path / 'a' / 'shapes_val')
    assert json_a == str(tmp_path / 'a' / 'annotations' / 'instances_shapes_val.json')
    for ann in dataset['annotations']:
        assert ann['iscrowd'] == 0
        xs, ys = np.concatenate([np.reshape(p, (-1, 2)) for p in ann['segmentation']]).T
        x, y, w, h = ann['bbox']
        assert [x, y, x + w, y + h] == [xs.min(), ys.min(), xs.max(), ys.max()]


def test_images_on_disk_match_the_annotations(tmp_path):
    json_path, image_dir = _write(tmp_path)
    with open(json_path) as f:
        dataset = json.load(f)
    by_image = {}
    for ann in dataset['annotations']:
        by_image.setdefault(ann['image_id'], []).append(ann)
    checked = 0
    for i, img in enumerate(dataset['images']):
        on_disk = cv2.imread(os.path.join(image_dir, img['file_name'])).astype(int)
        _, instances = shapes.render_image(shapes.image_rng(0, 'val', i), SIZE)
        assert len(instances) == len(by_image.get(img['id'], []))
        for instance, ann in zip(instances, by_image.get(img['id'], [])):
            mask = _rasterize([np.reshape(p, (-1, 2)) for p in ann['segmentation']], SIZE)
            np.testing.assert_array_equal(mask, instance['mask'])
            inner = cv2.erode(mask.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
            if inner.sum() > 10:   # jpeg blurs edges; the inside keeps the drawn colour
                np.testing.assert_allclose(on_disk[inner].mean(0), instance['color'], atol=8)
                checked += 1
    assert checked >= 3


def test_not_regenerated_when_present_and_regenerated_when_parameters_change(tmp_path, log_messages):
    json_path, image_dir = _write(tmp_path)
    os.utime(json_path, (1, 1))   # an old mtime, so a rewrite could not go unnoticed
    _write(tmp_path)
    assert os.path.getmtime(json_path) == 1

    _write(tmp_path, size=48)
    assert os.path.getmtime(json_path) > 1
    with open(json_path) as f:
        assert json.load(f)['info']['image_size'] == 48
    assert any('image_size=64 (wanted 48)' in m for m in log_messages)

    os.remove(os.path.join(image_dir, '000002.jpg'))   # e.g. an interrupted copy
    os.utime(json_path, (1, 1))
    _write(tmp_path, size=48)
    assert os.path.getmtime(json_path) > 1 and os.path.isfile(os.path.join(image_dir, '000002.jpg'))


def test_registration_is_lazy_and_splits_load_as_coco(tmp_path, registry):
    register_shapes(str(tmp_path), num_train=4, num_val=3, image_size=SIZE, seed=5)
    assert os.listdir(tmp_path) == []
    assert DatasetRegistry.get_metadata('shapes_train', 'class_names') == ['BG', 'circle', 'square', 'triangle']
    assert os.path.isfile(tmp_path / 'annotations' / 'instances_shapes_train.json')
    assert not os.path.exists(tmp_path / 'annotations' / 'instances_shapes_val.json')
    roidbs = DatasetRegistry.get('shapes_val').training_roidbs()
    assert len(roidbs) == 3
    for roidb in roidbs:
        assert roidb['class'].dtype == np.int32 and set(roidb['class'].tolist()) <= {1, 2, 3}
        for box, polygons in zip(roidb['boxes'], roidb['segmentation']):
            points = np.concatenate(polygons)
            np.testing.assert_allclose(box, [*points.min(0), *points.max(0)])
