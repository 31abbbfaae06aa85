"""A COCO json of one's own, from the command line alone: train.py (with its evaluation) and
predict.py --evaluate / --visualize on a split named neither like COCO's nor registered anywhere,
with ids numbered from 0, through both name forms, the training roidbs from the roidb cache."""
import glob
import json
import os
import shutil

from config import combine_overrides
from tests.test_end_to_end import TINY_MODEL, ap_scores, run_script


def _renumber_from_zero(coco):
    """The same data with image, category and annotation ids 0, 1, 2, ..."""
    images = {img['id']: k for k, img in enumerate(coco['images'])}
    categories = {cat['id']: k for k, cat in enumerate(coco['categories'])}
    for img in coco['images']:
        img['id'] = images[img['id']]
    for cat in coco['categories']:
        cat['id'] = categories[cat['id']]
    for k, ann in enumerate(coco['annotations']):
        ann.update(id=k, image_id=images[ann['image_id']], category_id=categories[ann['category_id']])
    return coco


def _move_split(shapes_dir, split, json_path, image_dir):
    with open(os.path.join(shapes_dir, 'annotations', 'instances_shapes_{}.json'.format(split))) as f:
        coco = _renumber_from_zero(json.load(f))
    os.makedirs(os.path.dirname(json_path), exist_ok=True)
    with open(json_path, 'w') as f:
        json.dump(coco, f)
    shutil.copytree(os.path.join(shapes_dir, 'shapes_' + split), image_dir)


def test_own_coco_json_trains_evaluates_and_visualizes_by_name(tmp_path):
    shapes_dir = str(tmp_path / 'shapes')
    run_script(['-m', 'dataset.shapes', shapes_dir, '--num-train', '8', '--num-val', '2', '--size', '128'])
    basedir = tmp_path / 'fruits'   # the COCO layout under a split name of its own
    _move_split(shapes_dir, 'train', str(basedir / 'annotations' / 'instances_trainval.json'),
                str(basedir / 'trainval'))
    elsewhere = tmp_path / 'elsewhere'   # a json and an image directory anywhere
    _move_split(shapes_dir, 'val', str(elsewhere / 'labels' / 'val.json'), str(elsewhere / 'photos'))
    val_name = 'coco:{}:{}'.format(elsewhere / 'labels' / 'val.json', elsewhere / 'photos')

    logdir = str(tmp_path / 'train_log')
    config = combine_overrides(TINY_MODEL, [
        'DATA.BASEDIR={}'.format(basedir), "DATA.TRAIN=('coco_trainval',)", "DATA.VAL=('{}',)".format(val_name),
        'PREPROC.TRAIN_SHORT_EDGE_SIZE=[128,128]', 'PREPROC.TEST_SHORT_EDGE_SIZE=128', 'PREPROC.MAX_SIZE=128',
        'TRAIN.STEPS_PER_EPOCH=4', 'TRAIN.LR_SCHEDULE=[1,1,1]', 'TRAIN.WARMUP=4', 'TRAIN.EVAL_PERIOD=2',
        'DATA.ROIDB_CACHE=.'])
    train = run_script(['train.py', '--logdir', logdir, '--config'] + config)
    label = 'coco_{}_labels_val.json_{}_photos'.format(str(elsewhere).strip('/').replace('/', '_'),
                                                       str(elsewhere).strip('/').replace('/', '_'))
    assert "Loaded 8 images" in train.stdout and "of 'coco_trainval'" in train.stdout
    assert glob.glob(str(basedir / 'annotations' / 'instances_trainval.json.*.roidbs'))   # the roidb cache
    assert glob.glob(os.path.join(logdir, label + '-outputs*.json')), os.listdir(logdir)
    assert 'mAP(bbox)/IoU=0.5' in train.stdout

    pictures = str(tmp_path / 'pictures')
    output = str(tmp_path / 'eval.json')
    predict = run_script(['predict.py', '--load', logdir, '--evaluate', output, '--visualize', '--num-visualize', '1',
                          '--output-dir', pictures, '--config'] + config)
    assert 'mAP(bbox)/IoU=0.5' in ap_scores(predict.stdout)
    with open('{}-{}'.format(output, label)) as f:
        detections = json.load(f)
    # written back in the json's own ids: images 0 and 1, categories 0..2
    assert {d['image_id'] for d in detections} <= {0, 1} and {d['category_id'] for d in detections} <= {0, 1, 2}
    assert glob.glob(os.path.join(pictures, 'visualize', '*.png'))
