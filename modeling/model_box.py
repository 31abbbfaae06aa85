"""Box geometry in TensorFlow: clip, area, IoU, box encoding, ROIAlign, RPN anchors.

Shape shorthand: N, M boxes; R rois; C channels; h, w feature-map height/width;
S output resolution; A anchors per feature-map cell; `...` any leading dims.

The box/pixel model
-------------------
A box is four continuous float32 coordinates x1, y1, x2, y2 (x first). Pixel (row i,
column j) covers the unit square [j, j+1) x [i, i+1), so its centre is at (j+0.5, i+0.5)
and an image of width W spans [0, W]. A box's width is x2 - x1 with no "+1": the box
[0, 0, 2, 2] covers exactly four pixels. Boxes on a feature map of stride s are the
image boxes multiplied by 1/s; the same model applies there.

ROIAlign on top of tf.image.crop_and_resize
-------------------------------------------
ROIAlign cuts a box into S x S equal bins and returns, per bin, the mean of the feature
map bilinearly sampled at 2 x 2 points spread evenly inside the bin (at the centres of
the bin's four quarters). Bilinear sampling at a continuous point u uses the pixels
whose centres surround it, i.e. it reads the pixel grid at index position u - 0.5.

crop_and_resize takes a box in normalized, y-first coordinates (y1, x1, y2, x2) and a
crop size K, and samples K points per axis with the first at index position
y1 * (H - 1) and the last at y2 * (H - 1): the corners of its box are sample points.
Along x, our wanted K = 2S points have spacing d = (x2 - x1) / K and sit at the centres
of K equal cells, so the first is at index position x1 + d/2 - 0.5 and the last is
(K - 1) * d further. Dividing both by (W - 1) gives the normalized box that makes
crop_and_resize sample exactly there (`_to_crop_and_resize_boxes`). Averaging each 2 x 2
block of the 2S x 2S crop then gives the S x S ROIAlign output.

crop_and_resize writes zeros for sample points outside [0, W - 1], while the points of a
box inside the map reach [-0.5, W - 0.5]. Padding the map by one replicated pixel on
each side (and shifting boxes by +1) makes those border samples read the edge pixel;
tensorpack's model zoo was trained that way, so we keep it.
"""
from collections import namedtuple

import numpy as np

from utils.tf_compat import tf
from tensorpack.tfutils.scope_utils import under_name_scope

from .params import DATA_FORMATS



def check_data_format(data_format):
    """Raise ValueError unless `data_format` is 'NHWC' or 'NCHW' (BACKBONE.DATA_FORMAT)."""
    if data_format not in DATA_FORMATS:
        raise ValueError("Unknown data_format {!r} (BACKBONE.DATA_FORMAT); valid: {}".format(
            data_format, ', '.join(DATA_FORMATS)))


@under_name_scope()
def clip_boxes(boxes, window_hw, name=None):
    """Clip boxes to the image [0, w] x [0, h].

    boxes: float32 [..., 4], x1y1x2y2. window_hw: int or float [2], (h, w) of one image for all
    boxes; or [N, 2] with boxes [N, 4], the image of each box (several images in a batch).
    Returns float32 [..., 4].
    """
    boxes = tf.maximum(boxes, 0.0)
    window_hw = tf.cast(window_hw, tf.float32)
    rank = window_hw.shape.ndims
    upper = tf.tile(tf.reverse(window_hw, [rank - 1]), [1] * (rank - 1) + [2])    # (w, h, w, h)
    return tf.minimum(boxes, upper, name=name)


@under_name_scope()
def area(boxes):
    """boxes: float32 [..., 4], x1y1x2y2 -> float32 [...] areas (negative for inverted boxes)."""
    return (boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1])


@under_name_scope()
def pairwise_intersection(boxes_a, boxes_b):
    """boxes_a: float32 [N, 4], boxes_b: float32 [M, 4], x1y1x2y2 -> float32 [N, M] areas."""
    a_x1, a_y1, a_x2, a_y2 = tf.split(boxes_a, 4, axis=1)     # [N, 1] each
    b_x1, b_y1, b_x2, b_y2 = tf.split(tf.transpose(boxes_b), 4, axis=0)     # [1, M] each
    inter_w = tf.maximum(0.0, tf.minimum(a_x2, b_x2) - tf.maximum(a_x1, b_x1))
    inter_h = tf.maximum(0.0, tf.minimum(a_y2, b_y2) - tf.maximum(a_y1, b_y1))
    return inter_w * inter_h


@under_name_scope()
def pairwise_iou(boxes_a, boxes_b):
    """boxes_a: float32 [N, 4], boxes_b: float32 [M, 4], x1y1x2y2 -> float32 [N, M] IoU.

    Pairs that do not intersect get 0, also when both boxes have zero area.
    """
    inter = pairwise_intersection(boxes_a, boxes_b)
    union = tf.expand_dims(area(boxes_a), 1) + tf.expand_dims(area(boxes_b), 0) - inter
    # The where keeps 0/0 (two empty boxes) from turning into NaN.
    return tf.where(tf.equal(inter, 0.0), tf.zeros_like(inter), inter / union)


def _is_unit(weights):
    return isinstance(weights, (tuple, list, np.ndarray)) and np.all(np.asarray(weights) == 1)


@under_name_scope()
def encode_bbox_target(boxes, anchors, weights=(1., 1., 1., 1.)):
    """Regression targets that move `anchors` onto `boxes`.

    boxes, anchors: float32 [..., 4], x1y1x2y2 (broadcastable against each other).
    weights: 4 floats (wx, wy, ww, wh) multiplied into (dx, dy, dw, dh).
    Returns float32 [..., 4] deltas (dx, dy, dw, dh); dw/dh are -inf for zero-size boxes
    (the all-zero gt of unmatched anchors), which callers mask out.
    """
    anchor_wh = anchors[..., 2:] - anchors[..., :2]
    anchor_center = (anchors[..., 2:] + anchors[..., :2]) * 0.5
    box_wh = boxes[..., 2:] - boxes[..., :2]
    box_center = (boxes[..., 2:] + boxes[..., :2]) * 0.5
    deltas = tf.concat([(box_center - anchor_center) / anchor_wh,
                        tf.math.log(box_wh / anchor_wh)], axis=-1)
    if not _is_unit(weights):
        deltas = deltas * tf.cast(weights, tf.float32)
    return deltas


@under_name_scope()
def decode_bbox_target(deltas, anchors, weights=(1., 1., 1., 1.), *, clip):
    """Apply regression `deltas` to `anchors`; inverse of `encode_bbox_target`.

    deltas: float32 [..., 4] (dx, dy, dw, dh), weighted as in encode.
    anchors: float32 [..., 4], x1y1x2y2, broadcastable against deltas
        (e.g. [R, 1, 4] anchors with [R, K, 4] per-class deltas).
    weights: 4 floats (wx, wy, ww, wh) the deltas are divided by.
    clip: upper bound on dw, dh before exp(), so wild predictions stay finite
        (the model passes ModelParams.decode_clip, log(MAX_SIZE / 16)).
    Returns float32 boxes [..., 4], x1y1x2y2.
    """
    if not _is_unit(weights):
        deltas = deltas / tf.cast(weights, tf.float32)
    anchor_wh = anchors[..., 2:] - anchors[..., :2]
    anchor_center = (anchors[..., 2:] + anchors[..., :2]) * 0.5
    center = deltas[..., :2] * anchor_wh + anchor_center
    half_wh = tf.exp(tf.minimum(deltas[..., 2:], clip)) * anchor_wh * 0.5
    return tf.concat([center - half_wh, center + half_wh], axis=-1)


def _to_crop_and_resize_boxes(boxes, image_hw, crop_size):
    """x1y1x2y2 boxes in pixels of an [H, W] image -> normalized y1x1y2x2 boxes that
    make crop_and_resize sample the centres of a crop_size x crop_size grid of cells
    (derivation in the module docstring)."""
    x1y1 = boxes[:, :2]
    spacing = (boxes[:, 2:] - x1y1) * (1.0 / crop_size)
    first = x1y1 + spacing * 0.5 - 0.5
    last = first + spacing * (crop_size - 1)
    # (W - 1, H - 1); at least 1 so a one-pixel-wide map does not divide by zero
    # (crop_and_resize multiplies by 0 there anyway).
    scale_wh = tf.cast(tf.maximum(tf.reverse(image_hw, [0]) - 1, 1), tf.float32)
    normalized = tf.concat([first / scale_wh, last / scale_wh], axis=1)    # x1 y1 x2 y2
    return tf.gather(normalized, [1, 0, 3, 2], axis=1)


def _crop_and_resize_nhwc(image, boxes, box_indices, crop_size, pad_border):
    """The NHWC core of `crop_and_resize`."""
    boxes = tf.stop_gradient(boxes)
    if pad_border:
        # Grappler merges identical pads of the same map, so the box head, mask head and
        # cascade stages share one padded copy per level.
        image = tf.pad(image, [[0, 0], [1, 1], [1, 1], [0, 0]], mode='SYMMETRIC')
        boxes = boxes + 1.0
    normalized = _to_crop_and_resize_boxes(boxes, tf.shape(image)[1:3], crop_size)
    return tf.image.crop_and_resize(
        image, normalized, box_indices=tf.cast(box_indices, tf.int32),
        crop_size=[crop_size, crop_size])


@under_name_scope()
def crop_and_resize(image, boxes, box_indices, crop_size, data_format, pad_border=True):
    """Bilinear crops sampled at cell centres (the box/pixel model above).

    image: float32 [B, H, W, C] (NHWC) or [B, C, H, W] (NCHW).
    boxes: float32 [N, 4], x1y1x2y2 in pixels of `image`; no gradient flows into them.
    box_indices: int [N], which image of the batch each box crops.
    crop_size: int S. pad_border: replicate the edge pixel for samples within half a
    pixel outside the image (True for features; False for masks, where outside is 0).
    Returns float32 [N, S, S, C] (NHWC) or [N, C, S, S] (NCHW).
    """
    check_data_format(data_format)
    if not isinstance(crop_size, int):
        raise ValueError("crop_size must be a python int, got {!r}".format(crop_size))
    if data_format == 'NCHW':
        # crop_and_resize only exists for NHWC.
        image = tf.transpose(image, [0, 2, 3, 1])
    crops = _crop_and_resize_nhwc(image, boxes, box_indices, crop_size, pad_border)
    if data_format == 'NCHW':
        crops = tf.transpose(crops, [0, 3, 1, 2])
    return crops


def roi_align_nhwc(featuremap, boxes, resolution, box_indices=None):
    """ROIAlign on an NHWC map: featuremap [B, h, w, C], boxes float32 [R, 4] x1y1x2y2 in
    feature-map pixels -> float32 [R, S, S, C]. Building block of `roi_align` and FPN.
    box_indices: int32 [R], the image of the batch each box reads; None: all image 0."""
    if box_indices is None:
        box_indices = tf.zeros(tf.shape(boxes)[:1], dtype=tf.int32)
    crops = _crop_and_resize_nhwc(featuremap, boxes, box_indices, resolution * 2, pad_border=True)
    return tf.nn.avg_pool2d(crops, ksize=2, strides=2, padding='VALID', data_format='NHWC')


@under_name_scope()
def roi_align(featuremap, boxes, resolution, data_format, box_indices=None):
    """ROIAlign with 2 x 2 samples per bin.

    featuremap: float32 [B, h, w, C] (NHWC) or [B, C, h, w] (NCHW); B = 1 unless batched.
    boxes: float32 [R, 4], x1y1x2y2 in feature-map pixels (image boxes / stride).
    resolution: int S, output bins per side.
    box_indices: int32 [R], the image each box reads (None: image 0, the one-image graph).
    Returns float32 [R, S, S, C] (NHWC) or [R, C, S, S] (NCHW).
    """
    check_data_format(data_format)
    if not isinstance(resolution, int):
        raise ValueError("resolution must be a python int, got {!r}".format(resolution))
    if data_format == 'NCHW':
        featuremap = tf.transpose(featuremap, [0, 2, 3, 1])
    rois = roi_align_nhwc(featuremap, boxes, resolution, box_indices)
    if data_format == 'NCHW':
        rois = tf.transpose(rois, [0, 3, 1, 2])
    return rois


class RPNAnchors(namedtuple('_RPNAnchors', ['boxes', 'gt_labels', 'gt_boxes'])):
    """The anchors of one feature level with their training targets.

    boxes: float32 [fH, fW, A, 4], x1y1x2y2 image pixels (numpy or tensor).
    gt_labels: int32 [B, fH, fW, A], 1 fg, 0 bg, -1 ignore (B images; also without B).
    gt_boxes: float32 [B, fH, fW, A, 4], x1y1x2y2, the gt box matched to each anchor.
    modeling/batching.batched_anchors makes them for a batch's feature map.
    """

    def encoded_gt_boxes(self):
        """float32 [B, fH, fW, A, 4] regression targets (unweighted)."""
        return encode_bbox_target(self.gt_boxes, self.boxes)

    def decode_logits(self, logits, *, clip):
        """logits: float32 [B, fH, fW, A, 4] deltas -> float32 [B, fH, fW, A, 4] boxes, x1y1x2y2."""
        return decode_bbox_target(logits, self.boxes, clip=clip)
