"""COCO-format splits reached by name alone (coco_<split>, coco:<json>:<image_dir>), and jsons
that number images, categories and annotations from 0."""
import json
import os

import numpy as np
import pytest

from dataset import DatasetRegistry, register_coco
from dataset.coco import COCOFormatSplit
from dataset.dataset import file_label
from tests.dataset.test_coco import _ann, _perfect_results, _square


@pytest.fixture(autouse=True)
def empty_registry(monkeypatch):
    monkeypatch.setattr(DatasetRegistry, '_registry', {})
    monkeypatch.setattr(DatasetRegistry, '_metadata', {})
    monkeypatch.setattr(DatasetRegistry, '_prefixes', {})


def _write(json_path, image_dir, images, annotations, categories):
    import cv2
    os.makedirs(os.path.dirname(json_path), exist_ok=True)
    os.makedirs(image_dir, exist_ok=True)
    for img in images:
        cv2.imwrite(os.path.join(image_dir, img['file_name']), np.zeros((img['height'], img['width'], 3), np.uint8))
    with open(json_path, 'w') as f:
        json.dump({'images': images, 'annotations': annotations, 'categories': categories}, f)


# Images, categories and annotations all numbered from 0, as many exporters do.
ZERO_IMAGES = [{'id': 0, 'file_name': 'a.png', 'height': 40, 'width': 40},
               {'id': 1, 'file_name': 'b.png', 'height': 40, 'width': 40}]
ZERO_CATEGORIES = [{'id': 0, 'name': 'zero'}, {'id': 1, 'name': 'one'}]
ZERO_ANNOTATIONS = [_ann(0, 0, 0, [2, 2, 10, 10], [_square(2, 2, 10)]),
                    _ann(1, 0, 1, [20, 20, 12, 12], [_square(20, 20, 12)]),
                    _ann(2, 1, 0, [5, 5, 20, 20], [_square(5, 5, 20)])]


def test_any_split_name_resolves_to_the_coco_layout(tmp_path):
    _write(str(tmp_path / 'annotations' / 'instances_trainval.json'), str(tmp_path / 'trainval'),
           ZERO_IMAGES, ZERO_ANNOTATIONS, ZERO_CATEGORIES)
    register_coco(str(tmp_path))
    assert 'coco_trainval' not in DatasetRegistry.names()   # nothing read or listed before use
    assert DatasetRegistry.get_metadata('coco_trainval', 'class_names') == ['BG', 'zero', 'one']
    split = DatasetRegistry.get('coco_trainval')
    assert split.image_dir == str(tmp_path / 'trainval') and split.name == 'coco_trainval'
    roidbs = split.training_roidbs()
    assert [r['image_id'] for r in roidbs] == [0, 1]
    assert roidbs[0]['class'].tolist() == [1, 2] and roidbs[1]['class'].tolist() == [1]
    assert roidbs[0]['file_name'] == str(tmp_path / 'trainval' / 'a.png')


def test_explicit_name_takes_a_json_and_an_image_dir_anywhere(tmp_path):
    _write(str(tmp_path / 'labels' / 'fruit.json'), str(tmp_path / 'photos'),
           ZERO_IMAGES, ZERO_ANNOTATIONS, ZERO_CATEGORIES)
    register_coco(str(tmp_path))
    relative = 'coco:labels/fruit.json:photos'   # relative to the basedir
    absolute = 'coco:{}:{}'.format(tmp_path / 'labels' / 'fruit.json', tmp_path / 'photos')
    for name in (relative, absolute):
        split = DatasetRegistry.get(name)
        assert split.json_path == str(tmp_path / 'labels' / 'fruit.json')
        assert split.image_dir == str(tmp_path / 'photos')
        assert len(split.training_roidbs()) == 2
        assert DatasetRegistry.get_metadata(name, 'class_names') == ['BG', 'zero', 'one']
    with pytest.raises(FileNotFoundError, match='missing.json'):
        DatasetRegistry.get('coco:missing.json:photos').training_roidbs()


@pytest.mark.parametrize('name', ['coco:only_a_json.json', 'coco:a.json:b:c', 'coco::images'])
def test_malformed_explicit_name_says_the_form(tmp_path, name):
    register_coco(str(tmp_path))
    with pytest.raises(ValueError, match=r"not of the form 'coco:<json>:<image_dir>'"):
        DatasetRegistry.get(name)


def test_unknown_name_lists_the_forms(tmp_path):
    register_coco(str(tmp_path))
    with pytest.raises(KeyError, match=r"'fruits'.*coco:<json>:<image_dir>, coco_<split>"):
        DatasetRegistry.get('fruits')


def test_file_label():
    assert file_label('coco_val2017') == 'coco_val2017'
    assert file_label('coco:/data/ann/val.json:/data/val') == 'coco_data_ann_val.json_data_val'


def test_ids_from_zero_score_ground_truth_as_ap_one(tmp_path):
    """pycocotools records a match by the ground truth's annotation id and takes 0 for "none":
    without renumbering, the instance with id 0 could never be matched (AP of 'zero' < 1)."""
    json_path, image_dir = str(tmp_path / 'ann.json'), str(tmp_path / 'images')
    _write(json_path, image_dir, ZERO_IMAGES, ZERO_ANNOTATIONS, ZERO_CATEGORIES)
    split = COCOFormatSplit(json_path, image_dir)
    output = str(tmp_path / 'results.json')
    metrics = split.eval_inference_results(_perfect_results(split), output)   # the ground truth as results
    for iou_type in ('bbox', 'segm'):
        for field in ('IoU=0.5:0.95', 'IoU=0.5', 'IoU=0.75'):
            assert metrics['mAP({})/{}'.format(iou_type, field)] == pytest.approx(1.0), (iou_type, field)
    with open(output) as f:
        written = json.load(f)
    # written back in the json's own ids
    assert sorted((r['image_id'], r['category_id']) for r in written) == [(0, 0), (0, 1), (1, 0)]
