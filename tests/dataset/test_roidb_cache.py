"""The memory-mapped roidb cache gives exactly the json loader's roidbs, follows the json's
content and survives several processes building it at once."""
import glob
import json
import multiprocessing
import os
import pickle

import numpy as np
import pytest

from dataset.coco import COCOFormatSplit
from dataset.roidb_cache import PolygonLists, read_header
from tests.dataset.test_coco import _ann, _square, write_split

IMAGES = [{'id': 11, 'file_name': 'a.jpg', 'height': 40, 'width': 50},
          {'id': 12, 'file_name': 'b.jpg', 'height': 30, 'width': 30},   # no instance
          {'id': 13, 'file_name': 'c.jpg', 'height': 60, 'width': 40}]
ANNOTATIONS = [
    _ann(1, 11, 9, [2, 2, 10, 10], [_square(2, 2, 10)]),
    _ann(2, 11, 5, [20, 20, 12, 12], [_square(20, 20, 6), _square(26, 26, 6)]),   # two polygons
    _ann(3, 11, 2, [1, 1, 30, 30], {'size': [40, 50], 'counts': 'abc'}, iscrowd=1),   # RLE crowd: None
    _ann(4, 13, 2, [5.5, 5.25, 20.125, 20], [[5.5, 5.25, 25.625, 5.25, 25.625, 25.25]]),
    _ann(5, 13, 5, [100, 100, 5, 5], [_square(100, 100, 5)]),   # outside the image: dropped
    _ann(6, 13, 9, [1, 1, 5, 5], [[1, 1, 2, 2]]),   # no valid polygon: dropped
]


def assert_same(expected, actual, where='roidbs'):
    """Equal values, types, dtypes, shapes and key order, all the way down; a cached roidb's
    'segmentation' (a read-only PolygonLists) stands for the list with the same items."""
    if isinstance(actual, PolygonLists):
        assert actual == expected, where
        actual = list(actual)
    assert type(expected) is type(actual) or (isinstance(expected, np.ndarray) and isinstance(actual, np.ndarray)), \
        (where, type(expected), type(actual))
    if isinstance(expected, dict):
        assert list(expected) == list(actual), where
        for key in expected:
            assert_same(expected[key], actual[key], '{}[{!r}]'.format(where, key))
    elif isinstance(expected, list):
        assert len(expected) == len(actual), where
        for k, (e, a) in enumerate(zip(expected, actual)):
            assert_same(e, a, '{}[{}]'.format(where, k))
    elif isinstance(expected, np.ndarray):
        assert expected.dtype == actual.dtype and expected.shape == actual.shape, (where, expected, actual)
        assert expected.tobytes() == actual.tobytes(), where
    else:
        assert expected == actual, where


def _cached_split(split, cache='.'):
    return COCOFormatSplit(split.json_path, split.image_dir, name=split.name, roidb_cache=cache)


def _cache_files(tmp_path):
    return sorted(glob.glob(str(tmp_path / '**' / '*.roidbs*'), recursive=True))


@pytest.mark.parametrize('annotations', [ANNOTATIONS, [dict(a, segmentation=None) for a in ANNOTATIONS]],
                         ids=['masks', 'boxes-only'])
def test_cache_gives_the_json_loaders_roidbs_bit_for_bit(tmp_path, annotations):
    split = write_split(tmp_path, IMAGES, annotations)
    expected = split.training_roidbs()
    assert ('segmentation' in expected[0]) == (annotations is ANNOTATIONS)
    built = _cached_split(split).training_roidbs()      # builds the cache, then reads it
    assert len(_cache_files(tmp_path)) == 1
    again = _cached_split(split).training_roidbs()      # reads it
    assert_same(expected, built)
    assert_same(expected, again)
    assert _cached_split(split).class_names() == split.class_names() == ['BG', 'two', 'five', 'nine']
    header = read_header(_cache_files(tmp_path)[0])   # logged again when read
    assert header['summary'].startswith('; dropped 1 boxes that are empty'), header['summary']


def test_cache_in_a_directory_of_its_own(tmp_path):
    split = write_split(tmp_path, IMAGES, ANNOTATIONS)
    cache_dir = tmp_path / 'cache'
    assert_same(split.training_roidbs(), _cached_split(split, str(cache_dir)).training_roidbs())
    assert [os.path.dirname(p) for p in _cache_files(tmp_path)] == [str(cache_dir)]


def test_a_changed_json_is_never_served_from_an_old_cache(tmp_path):
    split = write_split(tmp_path, IMAGES, ANNOTATIONS)
    first = _cached_split(split).training_roidbs()
    with open(split.json_path) as f:
        dataset = json.load(f)
    dataset['annotations'][0]['bbox'] = [3, 3, 10, 10]
    with open(split.json_path, 'w') as f:
        json.dump(dataset, f)
    os.utime(split.json_path, ns=(0, 0))   # the content, not the time, decides
    second = _cached_split(split).training_roidbs()
    assert first[0]['boxes'][0].tolist() == [2, 2, 12, 12] and second[0]['boxes'][0].tolist() == [3, 3, 13, 13]
    assert_same(split.training_roidbs(), second)
    assert len(_cache_files(tmp_path)) == 2


def test_string_image_ids_survive(tmp_path):
    images = [dict(img, id='img{}'.format(img['id'])) for img in IMAGES]
    annotations = [dict(a, image_id='img{}'.format(a['image_id'])) for a in ANNOTATIONS]
    split = write_split(tmp_path, images, annotations)
    assert_same(split.training_roidbs(), _cached_split(split).training_roidbs())


def test_a_corrupt_cache_file_is_made_again(tmp_path):
    split = write_split(tmp_path, IMAGES, ANNOTATIONS)
    _cached_split(split).training_roidbs()
    path, = _cache_files(tmp_path)
    with open(path, 'wb') as f:
        f.write(b'not a cache')
    assert_same(split.training_roidbs(), _cached_split(split).training_roidbs())
    assert read_header(path)['num_images'] == 3


def _load_in_child(args):
    json_path, image_dir = args
    roidbs = COCOFormatSplit(json_path, image_dir, roidb_cache='.').training_roidbs()
    return [(r['image_id'], r['boxes'].tolist(), [[p.tolist() for p in ps] if ps is not None else None
                                                  for ps in r['segmentation']]) for r in roidbs]


def test_processes_building_the_cache_at_once_agree(tmp_path):
    split = write_split(tmp_path, IMAGES, ANNOTATIONS)
    expected = _load_in_child((split.json_path, split.image_dir))
    os.remove(_cache_files(tmp_path)[0])
    with multiprocessing.get_context('fork').Pool(4) as pool:
        results = pool.map(_load_in_child, [(split.json_path, split.image_dir)] * 8)
    assert all(result == expected for result in results)
    assert len(_cache_files(tmp_path)) == 1   # one file, no temporary file left behind


def test_polygon_lists_read_like_the_list(tmp_path):
    split = write_split(tmp_path, IMAGES, ANNOTATIONS)
    expected = split.training_roidbs()[0]['segmentation']
    cached = _cached_split(split).training_roidbs()[0]['segmentation']
    assert len(cached) == len(expected) == 3 and cached[2] is None and cached[-1] is None
    assert [p.tolist() for p in cached[1]] == [p.tolist() for p in expected[1]]
    assert len(cached[0:2]) == 2 and cached != expected[:2]
    with pytest.raises(IndexError):
        cached[3]
    with pytest.raises(ValueError, match='read-only'):
        cached[0][0][0, 0] = 1.0   # views into the mapped file
    unpickled = pickle.loads(pickle.dumps(cached))   # how a worker receives it
    assert type(unpickled) is list
    assert_same(expected, unpickled)


def test_class_names_then_roidbs_parse_the_json_once(tmp_path, monkeypatch):
    """What train.py asks for first (class names, for the config), then the roidbs."""
    import dataset.coco
    split = write_split(tmp_path, IMAGES, ANNOTATIONS)
    parses = []
    read_json = dataset.coco._read_json
    monkeypatch.setattr(dataset.coco, '_read_json', lambda path: parses.append(path) or read_json(path))
    assert _cached_split(split).class_names() == ['BG', 'two', 'five', 'nine']
    assert_same(split.training_roidbs(), _cached_split(split).training_roidbs())   # the first parses again
    assert len(parses) == 2
    assert _cached_split(split).class_names() == ['BG', 'two', 'five', 'nine']     # from the cache's header
    assert len(parses) == 2
