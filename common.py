"""Image reading, resizing, the small geometric helpers and the worker pool of the dataflow.

The face of dataflow.image_io, dataflow.resize, dataflow.geometry, dataflow.build's seeded list
and utils/workers.py, under the names tensorpack's example users know from `common.py`.
"""
from dataflow.build import SeededDataFromList
from dataflow.geometry import box_to_point4, filter_boxes_inside_shape, point4_to_box, polygons_to_mask
from dataflow.image_io import (ImageSizeMismatchError, TruncatedImageError, UnreadableImageError, jpeg_is_complete,
                               read_image_bgr)
from dataflow.resize import CustomResize, resized_shape
from utils.workers import WORKER_FAILURE_KEY, SpawnMultiProcessMapData

__all__ = ['UnreadableImageError', 'TruncatedImageError', 'ImageSizeMismatchError', 'jpeg_is_complete',
           'read_image_bgr', 'resized_shape', 'CustomResize', 'box_to_point4', 'point4_to_box',
           'polygons_to_mask', 'filter_boxes_inside_shape', 'SeededDataFromList', 'WORKER_FAILURE_KEY',
           'SpawnMultiProcessMapData']
