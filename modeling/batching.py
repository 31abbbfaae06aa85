"""Several images per tower: the helpers that let one graph train on a batch of B images.

The training graph always runs on a batch (NOTES.md, "Several images per tower"). With
TRAIN.BATCH_SIZE_PER_GPU = 1 the dataflow feeds one image without a batch axis, and
`batch_of_one` makes the batch of one from it; the inference graph is a batch of one too.

Shape shorthand: B images; Hp, Wp the padded size of the batch; fH, fW a feature map's size;
A anchors per cell; M gt boxes of all images; R rows (rois). Boxes are float32 x1y1x2y2 in
pixels of the resized image.
"""
from collections import namedtuple

from utils.tf_compat import tf

from utils import tensor_names as names

from .model_box import RPNAnchors


def run_on_nonempty_batch(head, roi_features):
    """head(roi_features), computed on at least one row and cut back to the R rows given.

    roi_features: float32 [R, ...]. A roi head gets no rows when an image has no usable gt and no
    proposal survives, or when inference keeps no detection. oneDNN's convolution kernels (TF's
    default on CPUs with AVX512_VNNI/BF16/AMX) get R == 0 wrong: the forward conv returns a tensor
    shaped like its input, and the filter gradient fused with the bias gradient loses an output. So
    an empty batch is padded with one all-zero row. The slice drops that row's output, so its
    gradient is zero, and a non-empty batch is computed exactly as before.
    """
    num_rois = tf.shape(roi_features)[0]
    pad_rows = tf.maximum(1 - num_rois, 0)
    paddings = tf.concat([[[0, pad_rows]], tf.zeros([roi_features.shape.ndims - 1, 2], tf.int32)], axis=0)
    padded = tf.pad(roi_features, paddings)
    padded.set_shape(roi_features.shape)   # a computed padding would lose the static shape
    return head(padded)[:num_rois]


def batched_input_specs(specs, batch_size):
    """The inputs of a training graph of `batch_size` > 1 images per tower from the one-image `specs`.

    Every input gets a leading axis of batch_size (names.IMAGE_VALID_HW and names.GT_COUNTS are
    added), except the image, whose rank is left open: the inference graph built from these
    inputs (e.g. by EvalCallback's predictor) feeds one [H, W, 3] image to it.
    """
    out = []
    for spec in specs:
        if spec.name == names.IMAGE:
            out.append(tf.TensorSpec(None, spec.dtype, spec.name))
            out.append(tf.TensorSpec((batch_size, 2), tf.int32, names.IMAGE_VALID_HW))
            continue
        out.append(tf.TensorSpec([batch_size] + spec.shape.as_list(), spec.dtype, spec.name))
        if spec.name == names.GT_LABELS:
            out.append(tf.TensorSpec((batch_size,), tf.int32, names.GT_COUNTS))
    return out


def batch_of_one(inputs):
    """The one-image training inputs (as the dataflow feeds them with one image per tower) as a
    batch of one, in the layout of `batched_input_specs`: every tensor gets a leading axis of 1,
    and IMAGE_VALID_HW and GT_COUNTS are the image's size and its number of gt boxes."""
    batch = {name: tf.expand_dims(tensor, 0) for name, tensor in inputs.items()}
    batch[names.IMAGE_VALID_HW] = tf.expand_dims(tf.shape(inputs[names.IMAGE])[:2], 0)
    batch[names.GT_COUNTS] = tf.shape(inputs[names.GT_LABELS])[:1]
    return batch


def num_images(valid_hw):
    """B, the static batch size of valid_hw (int32 [B, 2])."""
    batch_size = valid_hw.shape.as_list()[0]
    assert batch_size is not None, 'the batch size must be static'
    return batch_size


def valid_pixel_mask(valid_hw, padded_hw, data_format):
    """float32 [B, Hp, Wp, 1] (NHWC) or [B, 1, Hp, Wp]: 1 inside each image's valid_hw (int32 [B, 2])."""
    rows = tf.range(padded_hw[0])[None, :] < valid_hw[:, 0:1]     # [B, Hp]
    cols = tf.range(padded_hw[1])[None, :] < valid_hw[:, 1:2]     # [B, Wp]
    mask = tf.cast(tf.logical_and(rows[:, :, None], cols[:, None, :]), tf.float32)
    return tf.expand_dims(mask, 3 if data_format == 'NHWC' else 1)


def fit_spatial(x, height_width, pad_value):
    """x [B, h, w, ...] cut or padded with pad_value at the bottom/right to [B, fH, fW, ...]."""
    shape = tf.shape(x)
    extra = tf.maximum(height_width - shape[1:3], 0)
    paddings = tf.concat([[[0, 0]], tf.stack([tf.zeros([2], tf.int32), extra], axis=1),
                          tf.zeros([x.shape.ndims - 3, 2], tf.int32)], axis=0)
    x = tf.pad(x, paddings, constant_values=pad_value)
    begin = tf.zeros([x.shape.ndims], tf.int32)
    size = tf.concat([[-1], height_width, -tf.ones([x.shape.ndims - 3], tf.int32)], axis=0)
    return tf.slice(x, begin, size)


def batched_anchors(grid, gt_labels, gt_boxes, height_width):
    """RPNAnchors of one level for a batch: the grid float32 [fH', fW', A, 4] (numpy) cut to the
    feature map's [fH, fW]; gt_labels [B, h, w, A] and gt_boxes [B, h, w, A, 4] fitted to it
    (padded -1 / 0, i.e. ignored, where the dataflow's arrays are smaller than the map), or both
    None (inference)."""
    size = tf.concat([height_width, [-1, -1]], axis=0)
    boxes = tf.slice(grid, [0, 0, 0, 0], size)
    if gt_labels is None:
        return RPNAnchors(boxes, None, None)
    return RPNAnchors(boxes, fit_spatial(gt_labels, height_width, -1), fit_spatial(gt_boxes, height_width, 0.))


def own_feature_cells(valid_hw, stride, multiple):
    """int32 [2]: the feature cells at `stride` that image of valid_hw (int32 [2]) has when it is
    alone, i.e. padded to a multiple of `multiple` (1: not padded)."""
    padded = (valid_hw + multiple - 1) // multiple * multiple
    return (padded + stride - 1) // stride


BatchGroundTruth = namedtuple('BatchGroundTruth', ['per_image', 'boxes', 'labels', 'offsets'])
BatchGroundTruth.__doc__ = """The real gt boxes of a batch.

per_image: a list of B (boxes float32 [M_i, 4], labels int64 [M_i]); boxes float32 [M, 4] and
labels int64 [M]: their concatenation in image order; offsets int64 [B]: the first row of each
image in it."""


def per_image_ground_truth(inputs, batch_size):
    """The BatchGroundTruth of a batched datapoint (`inputs` by name, gt padded to Mmax rows)."""
    counts = inputs[names.GT_COUNTS]
    per_image = [(inputs[names.GT_BOXES][i, :counts[i]], inputs[names.GT_LABELS][i, :counts[i]])
                 for i in range(batch_size)]
    return BatchGroundTruth(
        per_image=per_image,
        boxes=tf.concat([boxes for boxes, _ in per_image], axis=0),
        labels=tf.concat([labels for _, labels in per_image], axis=0),
        offsets=tf.cast(tf.cumsum(counts, exclusive=True), tf.int64))


def image_indices(per_image_rows):
    """int32 [sum R_i]: i for every row of per_image_rows[i] (tensors [R_i, ...] of image i), in order."""
    return tf.concat([tf.fill(tf.shape(rows)[:1], i) for i, rows in enumerate(per_image_rows)], axis=0)
