"""The detection record of an original image, and its COCO result form (no TensorFlow)."""
from collections import namedtuple

import numpy as np
import pycocotools.mask as coco_mask

__all__ = ['DetectionResult', 'detection_to_coco']

DetectionResult = namedtuple('DetectionResult', ['box', 'score', 'class_id', 'mask'])
DetectionResult.__doc__ = """One detection in an original image.

box: float32 [4], x1y1x2y2, original-image pixels.
score: float.
class_id: int, 1..K (0 is background and never appears).
mask: uint8 [H, W] of 0/1 over the whole original image, or None without a mask head.
"""


def detection_to_coco(result, image_id):
    """COCO result dict of one DetectionResult.

    Returns {image_id, category_id (1..K, contiguous), bbox [x, y, w, h] original pixels rounded to
    1e-3, score rounded to 1e-4[, segmentation: RLE dict with `counts` as str]}; JSON-serializable.
    """
    x1, y1, x2, y2 = (float(v) for v in result.box)
    if isinstance(image_id, np.generic):
        image_id = image_id.item()
    entry = {
        'image_id': image_id,
        'category_id': int(result.class_id),
        'bbox': [round(v, 3) for v in (x1, y1, x2 - x1, y2 - y1)],
        'score': round(float(result.score), 4),
    }
    if result.mask is not None:
        rle = coco_mask.encode(np.asfortranarray(result.mask[:, :, None], dtype=np.uint8))[0]
        rle['counts'] = rle['counts'].decode('ascii')
        entry['segmentation'] = rle
    return entry
