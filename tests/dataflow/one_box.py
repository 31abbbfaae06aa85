"""A one-object training image written to disk, and its roidb, for the dataflow tests."""
import cv2
import numpy as np


def one_box_roidb(path, shape_hw, box, class_id):
    """Writes a black `shape_hw` image with the integer `box` (x1y1x2y2) filled bright to `path`;
    returns its roidb: that box, `class_id`, not crowd, and the box as its polygon."""
    x1, y1, x2, y2 = box
    image = np.zeros(tuple(shape_hw) + (3,), np.uint8)
    image[y1:y2, x1:x2] = 220
    cv2.imwrite(str(path), image)
    return {'file_name': str(path), 'height': shape_hw[0], 'width': shape_hw[1],
            'boxes': np.array([box], np.float32), 'class': np.array([class_id], np.int32),
            'is_crowd': np.array([0], np.int8),
            'segmentation': [[np.array([[x1, y1], [x2, y1], [x2, y2], [x1, y2]], np.float32)]]}
