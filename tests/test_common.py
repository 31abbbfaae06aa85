"""common.py, the face of the dataflow's image and geometry helpers: each name it offers is the
one of its home module (the tests of each live in tests/dataflow/ and tests/test_failures.py)."""
import importlib

import common

HOME = {'dataflow.image_io': ['UnreadableImageError', 'TruncatedImageError', 'ImageSizeMismatchError',
                              'jpeg_is_complete', 'read_image_bgr'],
        'dataflow.resize': ['resized_shape', 'CustomResize'],
        'dataflow.geometry': ['box_to_point4', 'point4_to_box', 'polygons_to_mask', 'filter_boxes_inside_shape'],
        'dataflow.build': ['SeededDataFromList'],
        'utils.workers': ['WORKER_FAILURE_KEY', 'SpawnMultiProcessMapData']}


def test_common_offers_each_helper_from_its_home_module():
    assert sorted(common.__all__) == sorted(name for names in HOME.values() for name in names)
    for module, names in HOME.items():
        for name in names:
            assert getattr(common, name) is getattr(importlib.import_module(module), name), name
