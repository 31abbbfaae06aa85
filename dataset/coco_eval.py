"""COCO-style evaluation shared by every split: pycocotools' COCOeval behind one function.

A split hands over its ground truth as a pycocotools `COCO` object (from its own json, or
built in memory from roidbs by `coco_gt_from_roidbs`) and results already mapped to that
object's image and category ids.

Result dicts (one per detected instance): image_id, category_id, bbox [x, y, w, h] in
pixels of the original image, score, optional segmentation (COCO RLE with str counts).

Given the path of the results json, the evaluation also writes two files beside it:
`<json>.per_class.txt`, the per-class AP table, and `<json>.per_class.json`, all twelve
COCO numbers and the per-class AP of each IoU type (see `evaluation_details`).
"""
import contextlib
import io
import json

import numpy as np

from utils import logs as logger

__all__ = ['METRIC_FIELDS', 'STAT_NAMES', 'coco_from_dict', 'coco_gt_from_roidbs', 'clean_result',
           'evaluate_coco', 'per_class_ap', 'per_class_table', 'per_class_paths']

# The first six numbers of COCOeval.stats: AP averaged over IoU 0.5:0.95, AP at 0.5 and 0.75,
# and AP over 0.5:0.95 for small / medium / large objects. Keys are 'mAP(bbox)/IoU=0.5' etc.
METRIC_FIELDS = ('IoU=0.5:0.95', 'IoU=0.5', 'IoU=0.75', 'small', 'medium', 'large')
# All twelve numbers of COCOeval.stats, in order: the six above, then the average recall with
# at most 1, 10 and 100 detections per image, and at 100 for small / medium / large objects.
STAT_NAMES = ('AP', 'AP50', 'AP75', 'APs', 'APm', 'APl', 'AR1', 'AR10', 'AR100', 'ARs', 'ARm', 'ARl')
# Columns of the per-class table: AP over IoU 0.5:0.95, at IoU 0.5 and at IoU 0.75.
PER_CLASS_FIELDS = ('AP', 'AP50', 'AP75')


def _quiet_call(func, *args):
    """Run a pycocotools call, sending what it prints to the log instead of stdout."""
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        ret = func(*args)
    return ret, buffer.getvalue()


def coco_from_dict(dataset):
    """A pycocotools `COCO` built from an already parsed COCO-format dict (no file access).

    Fills the fields COCOeval needs but hand-written jsons may lack: `iscrowd` (0) and
    `area` (box area). Annotation ids are renumbered 1..N in the order of the list: COCOeval
    records a match by the ground truth's id and reads id 0 as "unmatched", so a json that
    numbers its annotations from 0 (or repeats an id) would be scored wrong; results never
    refer to these ids. Mutates `dataset`.
    """
    from pycocotools.coco import COCO
    for number, ann in enumerate(dataset.get('annotations', []), 1):
        ann['id'] = number
        ann.setdefault('iscrowd', 0)
        if 'area' not in ann:
            ann['area'] = float(ann['bbox'][2]) * float(ann['bbox'][3])
    dataset.setdefault('annotations', [])
    coco = COCO()
    coco.dataset = dataset
    _quiet_call(coco.createIndex)
    return coco


def _polygons_area(polygons, height, width):
    from pycocotools import mask as mask_util
    flat = [np.asarray(p, dtype=np.float64).ravel().tolist() for p in polygons]
    rle = mask_util.merge(mask_util.frPyObjects(flat, height, width))
    return float(mask_util.area(rle))


def coco_gt_from_roidbs(roidbs, class_names):
    """Ground truth of a split as a pycocotools `COCO` object, built from its roidbs.

    Args:
        roidbs: training roidbs (schema in dataset.dataset.DatasetSplit), with height/width.
        class_names: ['BG', name_1, ..., name_K]; category k of the result is class k.

    Returns:
        (coco, image_id_map): `image_id_map` maps each roidb's `image_id` (any hashable) to
        the int id used inside `coco`.
    """
    images, annotations, image_id_map = [], [], {}
    for roidb in roidbs:
        if roidb['image_id'] in image_id_map:
            raise ValueError("Image id {!r} ({}) occurs twice in the roidbs.".format(
                roidb['image_id'], roidb['file_name']))
        coco_image_id = len(images) + 1
        image_id_map[roidb['image_id']] = coco_image_id
        height, width = int(roidb['height']), int(roidb['width'])
        images.append({'id': coco_image_id, 'file_name': roidb['file_name'], 'height': height, 'width': width})
        segmentation = roidb.get('segmentation')
        for i, (box, cls, crowd) in enumerate(zip(roidb['boxes'], roidb['class'], roidb['is_crowd'])):
            x1, y1, x2, y2 = (float(v) for v in box)
            ann = {'id': len(annotations) + 1, 'image_id': coco_image_id, 'category_id': int(cls),
                   'bbox': [x1, y1, x2 - x1, y2 - y1], 'iscrowd': int(crowd), 'area': (x2 - x1) * (y2 - y1)}
            polygons = segmentation[i] if segmentation is not None else None
            if polygons:
                ann['segmentation'] = [np.asarray(p, dtype=np.float64).ravel().tolist() for p in polygons]
                ann['area'] = _polygons_area(polygons, height, width)
            else:
                # no polygon (box-only data, or an RLE-only crowd region): the box is its mask
                ann['segmentation'] = [[x1, y1, x2, y1, x2, y2, x1, y2]]
            annotations.append(ann)
    categories = [{'id': k, 'name': name} for k, name in enumerate(class_names) if k > 0]
    coco = coco_from_dict({'images': images, 'annotations': annotations, 'categories': categories})
    return coco, image_id_map


def clean_result(result):
    """A json-serializable copy of one result dict, with numpy scalars turned into Python ones.

    Raises KeyError naming a missing key and ValueError for a bbox that is not [x, y, w, h].
    """
    for key in ('image_id', 'category_id', 'bbox', 'score'):
        if key not in result:
            raise KeyError("Result {!r} has no '{}'; each result needs image_id, category_id, "
                           "bbox [x, y, w, h] and score.".format(result, key))
    bbox = [round(float(v), 3) for v in np.asarray(result['bbox']).ravel()]
    if len(bbox) != 4:
        raise ValueError("Result bbox must be [x, y, w, h], got {!r}".format(result['bbox']))
    image_id = result['image_id']
    if isinstance(image_id, np.generic):
        image_id = image_id.item()
    ret = {'image_id': image_id, 'category_id': int(result['category_id']), 'bbox': bbox,
           'score': round(float(result['score']), 5)}
    if result.get('segmentation') is not None:
        rle = dict(result['segmentation'])
        if isinstance(rle.get('counts'), bytes):
            rle['counts'] = rle['counts'].decode('ascii')
        rle['size'] = [int(v) for v in rle['size']]
        ret['segmentation'] = rle
    return ret


def _zero_metrics(iou_types):
    return {'mAP({})/{}'.format(t, f): 0.0 for t in iou_types for f in METRIC_FIELDS}


def per_class_ap(precision, iou_thresholds, category_names):
    """AP of each category from COCOeval's accumulated precision.

    Args:
        precision: float [T, R, K, A, M], `COCOeval.eval['precision']`: T IoU thresholds, R
            recall points, K categories, A area ranges (0 is 'all'), M max-detection settings
            (the last is 100); -1 marks an entry without ground truth.
        iou_thresholds: float [T], `COCOeval.params.iouThrs`.
        category_names: K names, in the order of `COCOeval.params.catIds`.

    Returns:
        {name: {'AP': ..., 'AP50': ..., 'AP75': ...}}, each the mean precision over the recall
        points (and, for 'AP', over all IoU thresholds) of area 'all' and 100 detections;
        None for a category without ground truth.
    """
    precision = np.asarray(precision, dtype=np.float64)
    if precision.ndim != 5 or precision.shape[2] != len(category_names):
        raise ValueError("precision must be [T, R, K, A, M] with K = {} categories, got shape {}".format(
            len(category_names), precision.shape))
    iou_thresholds = np.asarray(iou_thresholds, dtype=np.float64)
    rows = {'AP': slice(None), 'AP50': np.isclose(iou_thresholds, 0.5), 'AP75': np.isclose(iou_thresholds, 0.75)}
    table = {}
    for k, name in enumerate(category_names):
        table[name] = {}
        for field in PER_CLASS_FIELDS:
            values = precision[rows[field], :, k, 0, -1]
            values = values[values > -1]
            table[name][field] = float(values.mean()) if values.size else None
    return table


def per_class_table(per_class):
    """Text table of `{iou_type: per_class_ap(...)}`: one row per class, AP / AP50 / AP75
    columns per IoU type, '-' for a class without ground truth."""
    iou_types = list(per_class)
    if not iou_types:
        return '(no per-class AP)'
    names = list(per_class[iou_types[0]])
    name_width = max([len('class')] + [len(str(n)) for n in names])
    header = '{:<{w}}'.format('class', w=name_width) + ''.join(
        ' {:>7}'.format('{}:{}'.format(t, f) if f == 'AP' else f) for t in iou_types for f in PER_CLASS_FIELDS)
    lines = [header, '-' * len(header)]
    for name in names:
        cells = []
        for iou_type in iou_types:
            for field in PER_CLASS_FIELDS:
                value = per_class[iou_type][name][field]
                cells.append(' {:>7}'.format('-' if value is None else '{:.3f}'.format(value)))
        lines.append('{:<{w}}'.format(str(name), w=name_width) + ''.join(cells))
    return '\n'.join(lines)


def per_class_paths(output):
    """(text table, json details) paths written beside the results json `output`."""
    return output + '.per_class.txt', output + '.per_class.json'


def _write_details(output, details):
    text_path, json_path = per_class_paths(output)
    with open(text_path, 'w') as f:
        f.write(per_class_table({t: d['per_class'] for t, d in details.items()}) + '\n')
    with open(json_path, 'w') as f:
        json.dump(details, f, indent=1)
    logger.info("Per-class AP written to {} and {}.".format(text_path, json_path))


def _evaluate_nothing(coco_gt, output):
    """What `evaluate_coco` reports for no detections (pycocotools can't load an empty result
    list): zeros, and None for the classes without ground truth, as it would have."""
    logger.warn("No detections to evaluate; reporting 0 for every metric.")
    annotations = coco_gt.dataset['annotations']
    iou_types = ['bbox']
    if annotations and all('segmentation' in ann for ann in annotations):
        iou_types.append('segm')
    with_gt = {ann['category_id'] for ann in annotations if not ann.get('iscrowd', 0)}
    per_class = {cat['name']: {field: 0.0 if cat['id'] in with_gt else None for field in PER_CLASS_FIELDS}
                 for cat in coco_gt.loadCats(sorted(coco_gt.getCatIds()))}
    details = {t: {'stats': {name: 0.0 for name in STAT_NAMES}, 'per_class': per_class} for t in iou_types}
    logger.info("Per-class AP:\n" + per_class_table({t: d['per_class'] for t, d in details.items()}))
    if output is not None:
        _write_details(output, details)
    return _zero_metrics(iou_types)


def evaluate_coco(coco_gt, results, output=None):
    """COCO AP of `results` against `coco_gt`.

    Args:
        coco_gt: pycocotools COCO with the ground truth.
        results: list of result dicts (see `clean_result`) in `coco_gt`'s image and category ids.
        output: optional path of the json the results were saved to; the per-class table and
            the details (twelve COCO numbers, per-class AP) are then written beside it, to the
            paths of `per_class_paths(output)`, like that json replacing earlier ones.

    Returns:
        dict: 'mAP(bbox)/<field>' for each of METRIC_FIELDS, and 'mAP(segm)/<field>' when any
        result has a segmentation. Values in [0, 1]; pycocotools reports -1 for an area range
        without ground truth. Empty `results` score 0 with a warning, for 'bbox' and, where the
        ground truth has masks, 'segm', and write the same files as any evaluation.
    """
    from pycocotools.cocoeval import COCOeval
    if len(results) == 0:
        return _evaluate_nothing(coco_gt, output)

    known_images = set(coco_gt.getImgIds())
    unknown = sorted({r['image_id'] for r in results if r['image_id'] not in known_images}, key=str)
    if unknown:
        raise ValueError("Results refer to {} image ids that are not in the ground truth, e.g. {}.".format(
            len(unknown), unknown[:5]))

    iou_types = ['bbox']
    if any('segmentation' in r for r in results):
        if all('segmentation' in ann for ann in coco_gt.dataset['annotations']):
            iou_types.append('segm')
        else:
            logger.warn("Results have masks but the ground truth has none; evaluating boxes only.")
    # loadRes adds fields to the dicts it gets, so hand it copies
    coco_dt, _ = _quiet_call(coco_gt.loadRes, [dict(r) for r in results])
    metrics, details = {}, {}
    for iou_type in iou_types:
        coco_eval = COCOeval(coco_gt, coco_dt, iou_type)
        _quiet_call(coco_eval.evaluate)
        _quiet_call(coco_eval.accumulate)
        _, summary = _quiet_call(coco_eval.summarize)
        logger.info("COCO evaluation ({}):\n{}".format(iou_type, summary.rstrip()))
        for k, field in enumerate(METRIC_FIELDS):
            metrics['mAP({})/{}'.format(iou_type, field)] = float(coco_eval.stats[k])
        names = [cat['name'] for cat in coco_gt.loadCats(coco_eval.params.catIds)]
        details[iou_type] = {
            'stats': {name: float(v) for name, v in zip(STAT_NAMES, coco_eval.stats)},
            'per_class': per_class_ap(coco_eval.eval['precision'], coco_eval.params.iouThrs, names)}
    logger.info("Per-class AP:\n" + per_class_table({t: d['per_class'] for t, d in details.items()}))
    if output is not None:
        _write_details(output, details)
    return metrics
