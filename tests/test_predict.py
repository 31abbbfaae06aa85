"""predict.py on random weights of a tiny model and a two-image COCO-format split: weights that
do not fit the config are an error, bad --predict images are reported without stopping the
others, and --evaluate never overwrites earlier results."""
import json
import os
import subprocess
import sys

import cv2
import numpy as np
import pytest

import predict
from tests.modeling import rcnn_helpers as helpers

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODEL = helpers.TINY_OVERRIDES + ['BACKBONE.NORM=GN', 'FPN.NORM=GN', 'BACKBONE.DATA_FORMAT=NHWC']


@pytest.fixture(scope='module')
def setup(tmp_path_factory):
    """A COCO layout (coco_val2017: 2 images, 3 classes) and random weights of MODEL."""
    basedir = tmp_path_factory.mktemp('coco')
    (basedir / 'val2017').mkdir()
    (basedir / 'annotations').mkdir()
    rng = np.random.RandomState(0)
    images, annotations = [], []
    for image_id in (1, 2):
        image = rng.randint(0, 80, (96, 128, 3)).astype(np.uint8)
        image[20:60, 30:90] = 200
        cv2.imwrite(str(basedir / 'val2017' / '{}.jpg'.format(image_id)), image)
        images.append({'id': image_id, 'file_name': '{}.jpg'.format(image_id), 'height': 96, 'width': 128})
        annotations.append({'id': image_id, 'image_id': image_id, 'category_id': 1, 'bbox': [30, 20, 60, 40],
                            'area': 2400.0, 'iscrowd': 0, 'segmentation': [[30, 20, 90, 20, 90, 60, 30, 60]]})
    categories = [{'id': k, 'name': name} for k, name in enumerate(helpers.TINY_CLASSES[1:], start=1)]
    with open(str(basedir / 'annotations' / 'instances_val2017.json'), 'w') as f:
        json.dump({'images': images, 'annotations': annotations, 'categories': categories}, f)
    with open(str(basedir / 'annotations' / 'instances_train2017.json'), 'w') as f:   # another class count
        json.dump({'images': [], 'annotations': [], 'categories': categories[:1]}, f)
    weights = str(tmp_path_factory.mktemp('weights') / 'model.npz')
    helpers.save_random_model(weights, *MODEL)
    return dict(basedir=basedir, weights=weights, config=MODEL + ['DATA.BASEDIR={}'.format(basedir)] + split_config())


def split_config(split='coco_val2017'):
    return ['DATA.TRAIN={}'.format(split), 'DATA.VAL={}'.format(split)]


def run_predict(args):
    """predict.py in a fresh interpreter; (exit code, output lines with stderr after stdout)."""
    proc = subprocess.run([sys.executable, 'predict.py'] + args, cwd=ROOT, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True, timeout=600)
    return proc.returncode, (proc.stdout + proc.stderr).strip().splitlines()


def test_weights_of_another_config_are_an_error_as_the_last_line(setup, tmp_path):
    config = [c for c in setup['config'] if 'RESNET_NUM_BLOCKS' not in c] + ['BACKBONE.RESNET_NUM_BLOCKS=[2,2,2,2]']
    code, lines = run_predict(['--load', setup['weights'], '--predict', str(setup['basedir'] / 'val2017' / '1.jpg'),
                               '--output-dir', str(tmp_path), '--config'] + config)
    assert code != 0
    assert lines[-1].startswith('ValueError: ') and 'missing from {}'.format(setup['weights']) in lines[-1]
    assert 'BACKBONE.RESNET_NUM_BLOCKS' in lines[-1]
    assert not os.listdir(str(tmp_path))   # nothing predicted with random layers


def test_a_bad_image_is_reported_and_the_others_are_done(setup, tmp_path):
    good = [str(setup['basedir'] / 'val2017' / name) for name in ('1.jpg', '2.jpg')]
    data = open(good[0], 'rb').read()
    bad = tmp_path / 'bad.jpg'
    bad.write_bytes(data[:len(data) // 2])
    out = tmp_path / 'pictures'
    code, lines = run_predict(['--load', setup['weights'], '--predict', good[0], str(bad), good[1],
                               '--output-dir', str(out), '--config'] + setup['config'])
    assert code == 1
    assert sorted(os.listdir(str(out))) == ['1-pred.png', '2-pred.png']
    assert lines[-1].startswith('predict.py: 1 of 3 --predict image(s) failed: {} ('.format(bad))
    assert 'truncated' in lines[-1]


def test_evaluate_never_overwrites_earlier_results(setup, tmp_path):
    out = str(tmp_path / 'out.json')
    with open(out + '-coco_val2017', 'w') as f:
        f.write('results of another model')
    assert predict.main(['--load', setup['weights'], '--evaluate', out, '--config'] + setup['config']) == 0
    with open(out + '-coco_val2017') as f:
        assert f.read() == 'results of another model'
    with open(out + '-coco_val2017-1') as f:
        assert isinstance(json.load(f), list)


def test_evaluate_with_mismatched_weights_raises_before_predicting(setup, tmp_path):
    config = [c for c in setup['config'] if not c.startswith(('DATA.TRAIN=', 'DATA.VAL='))]
    with pytest.raises(ValueError, match=r'fastrcnn/outputs/class/W is \[64, 2\] in the graph but \[64, 4\].*'
                                         r'DATA.NUM_CATEGORY \(the file looks like DATA.NUM_CATEGORY=3\)'):
        predict.main(['--load', setup['weights'], '--evaluate', str(tmp_path / 'out.json'), '--config']
                     + config + split_config('coco_train2017'))
    assert not os.listdir(str(tmp_path))
