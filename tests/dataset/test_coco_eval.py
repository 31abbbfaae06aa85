"""Per-class AP of dataset.coco_eval on evaluations small enough to check by hand."""
import json

import numpy as np
import pytest

from dataset.coco_eval import STAT_NAMES, coco_from_dict, evaluate_coco, per_class_ap, per_class_paths, \
    per_class_table


def _box_polygon(x, y, w, h):
    return [[x, y, x + w, y, x + w, y + h, x, y + h]]


def _ground_truth():
    """Two 40x40 images: a 'disc' in each and one 'block' in the first; 'ghost' has no instance."""
    images = [{'id': 1, 'file_name': 'a.jpg', 'height': 40, 'width': 40},
              {'id': 2, 'file_name': 'b.jpg', 'height': 40, 'width': 40}]
    boxes = [(1, 1, [2, 2, 10, 10]), (2, 1, [20, 5, 8, 12]), (1, 2, [25, 25, 10, 6])]
    annotations = [{'id': k + 1, 'image_id': image_id, 'category_id': cat, 'bbox': box,
                    'segmentation': _box_polygon(*box), 'area': float(box[2] * box[3]), 'iscrowd': 0}
                   for k, (image_id, cat, box) in enumerate(boxes)]
    categories = [{'id': 1, 'name': 'disc'}, {'id': 2, 'name': 'block'}, {'id': 3, 'name': 'ghost'}]
    return coco_from_dict({'images': images, 'annotations': annotations, 'categories': categories})


def _perfect_discs(coco_gt):
    return [{'image_id': ann['image_id'], 'category_id': 1, 'bbox': ann['bbox'], 'score': 0.9}
            for ann in coco_gt.dataset['annotations'] if ann['category_id'] == 1]


def test_one_perfect_class_and_one_missed_class(tmp_path):
    coco_gt = _ground_truth()
    output = str(tmp_path / 'results.json')
    metrics = evaluate_coco(coco_gt, _perfect_discs(coco_gt), output=output)
    # the mean over the classes with ground truth: (1 + 0) / 2
    assert metrics['mAP(bbox)/IoU=0.5:0.95'] == pytest.approx(0.5)

    text_path, json_path = per_class_paths(output)
    details = json.loads(open(json_path).read())
    assert list(details) == ['bbox']   # no result has a mask
    per_class = details['bbox']['per_class']
    assert per_class['disc'] == {'AP': pytest.approx(1.0), 'AP50': pytest.approx(1.0), 'AP75': pytest.approx(1.0)}
    assert per_class['block'] == {'AP': 0.0, 'AP50': 0.0, 'AP75': 0.0}
    assert per_class['ghost'] == {'AP': None, 'AP50': None, 'AP75': None}
    assert list(details['bbox']['stats']) == list(STAT_NAMES)
    assert details['bbox']['stats']['AP'] == pytest.approx(0.5)
    assert details['bbox']['stats']['AR100'] == pytest.approx(0.5)

    lines = open(text_path).read().splitlines()
    assert lines[0].split() == ['class', 'bbox:AP', 'AP50', 'AP75']
    assert lines[2].split() == ['disc', '1.000', '1.000', '1.000']
    assert lines[3].split() == ['block', '0.000', '0.000', '0.000']
    assert lines[4].split() == ['ghost', '-', '-', '-']


def test_masks_add_segm_columns(tmp_path):
    from pycocotools import mask as mask_util
    coco_gt = _ground_truth()
    results = _perfect_discs(coco_gt)
    for r in results:
        x, y, w, h = r['bbox']
        rle = mask_util.merge(mask_util.frPyObjects(_box_polygon(x, y, w, h), 40, 40))
        r['segmentation'] = dict(rle, counts=rle['counts'].decode('ascii'))
    output = str(tmp_path / 'results.json')
    evaluate_coco(coco_gt, results, output=output)
    details = json.loads(open(per_class_paths(output)[1]).read())
    assert details['segm']['per_class']['disc']['AP'] == pytest.approx(1.0)
    assert details['segm']['per_class']['block']['AP'] == 0.0
    header = open(per_class_paths(output)[0]).readline().split()
    assert header == ['class', 'bbox:AP', 'AP50', 'AP75', 'segm:AP', 'AP50', 'AP75']


def test_no_output_writes_nothing(tmp_path):
    coco_gt = _ground_truth()
    evaluate_coco(coco_gt, _perfect_discs(coco_gt))
    assert list(tmp_path.iterdir()) == []


def test_per_class_ap_averages_the_right_slices():
    iou_thresholds = np.linspace(0.5, 0.95, 10)
    # [T=10, R=2, K=2, A=1, M=2]; only area 'all' and the last max-detection setting count
    precision = np.full((10, 2, 2, 1, 2), 7.0)
    precision[:, :, 0, 0, -1] = np.arange(10)[:, None] / 10.   # class 'a': 0.0 at IoU .5 ... 0.9 at .95
    precision[:, 1, 0, 0, -1] = -1                              # a recall point that was never reached
    precision[:, :, 1, 0, -1] = -1                              # class 'b': no ground truth
    table = per_class_ap(precision, iou_thresholds, ['a', 'b'])
    assert table['a'] == {'AP': pytest.approx(0.45), 'AP50': pytest.approx(0.0), 'AP75': pytest.approx(0.5)}
    assert table['b'] == {'AP': None, 'AP50': None, 'AP75': None}
    assert '-' in per_class_table({'bbox': table}).splitlines()[3]
    with pytest.raises(ValueError, match='K = 3'):
        per_class_ap(precision, iou_thresholds, ['a', 'b', 'c'])


def test_no_detections_give_zeros_and_the_usual_files(tmp_path):
    """A model that found nothing still gets box and mask lines and the per-class files."""
    output = str(tmp_path / 'results.json')
    metrics = evaluate_coco(_ground_truth(), [], output=output)
    assert sorted({key.split('/')[0] for key in metrics}) == ['mAP(bbox)', 'mAP(segm)']
    assert set(metrics.values()) == {0.0}
    text_path, json_path = per_class_paths(output)
    details = json.loads(open(json_path).read())
    assert list(details) == ['bbox', 'segm']
    assert details['segm']['per_class']['block'] == {'AP': 0.0, 'AP50': 0.0, 'AP75': 0.0}
    assert details['segm']['per_class']['ghost'] == {'AP': None, 'AP50': None, 'AP75': None}
    assert list(details['bbox']['stats']) == list(STAT_NAMES)
    assert open(text_path).read().splitlines()[3].split() == ['block', '0.000', '0.000', '0.000', '0.000', '0.000',
                                                               '0.000']


def test_no_detections_without_masks_in_the_ground_truth(tmp_path):
    coco_gt = _ground_truth()
    for ann in coco_gt.dataset['annotations']:
        del ann['segmentation']
    metrics = evaluate_coco(coco_gt, [], output=str(tmp_path / 'results.json'))
    assert sorted({key.split('/')[0] for key in metrics}) == ['mAP(bbox)']
