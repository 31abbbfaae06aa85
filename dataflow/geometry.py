"""Small numpy geometry of the dataflow: boxes as corner points, polygons to masks, boxes inside the image.

Shape shorthand: N boxes, P polygon points, H x W image.
Box model: continuous x1y1x2y2 floats, pixel i covers [i, i + 1) (see utils/np_box_ops.py).
"""
import numpy as np

__all__ = ['box_to_point4', 'point4_to_box', 'polygons_to_mask', 'filter_boxes_inside_shape']


def box_to_point4(boxes):
    """The 4 corners of each box: float [N, 4] x1y1x2y2 -> [4N, 2] (x, y).

    Corners of box n are rows 4n..4n+3: (x1, y1), (x2, y2), (x1, y2), (x2, y1).
    """
    boxes = np.asarray(boxes)
    return boxes[:, [0, 1, 2, 3, 0, 3, 2, 1]].reshape((-1, 2))


def point4_to_box(points):
    """Inverse of `box_to_point4` for any point transform: [4N, 2] -> the enclosing boxes [N, 4]."""
    corners = np.asarray(points).reshape((-1, 4, 2))
    return np.concatenate([corners.min(axis=1), corners.max(axis=1)], axis=1)


def polygons_to_mask(polys, height, width):
    """Rasterize the union of polygons into a binary mask.

    Args:
        polys: list of float [P, 2] (x, y) arrays, P >= 3, pixel coordinates.
        height, width: int, mask size.
    Returns:
        uint8 [height, width], values in {0, 1}.
    """
    import pycocotools.mask as cocomask  # imported late: only the mask dataflow needs it

    if len(polys) == 0:
        raise ValueError("polygons_to_mask needs at least one polygon")
    flat = []
    for poly in polys:
        poly = np.asarray(poly, dtype=np.float64).reshape((-1, 2))
        if len(poly) < 3:
            # pycocotools would read a 2-point (4-number) list as a bbox
            raise ValueError("A polygon needs at least 3 points, got {}".format(len(poly)))
        flat.append(poly.ravel().tolist())
    rles = cocomask.frPyObjects(flat, height, width)
    return cocomask.decode(cocomask.merge(rles)).astype(np.uint8)


def filter_boxes_inside_shape(boxes, shape_hw):
    """Boxes that lie entirely inside the image [0, w] x [0, h].

    Args:
        boxes: float [N, 4] x1y1x2y2.
        shape_hw: (h, w).
    Returns:
        (indices int [K], boxes[indices] [K, 4]).
    """
    h, w = shape_hw
    inside = (boxes[:, 0] >= 0) & (boxes[:, 1] >= 0) & (boxes[:, 2] <= w) & (boxes[:, 3] <= h)
    indices = np.where(inside)[0]
    return indices, boxes[indices]
