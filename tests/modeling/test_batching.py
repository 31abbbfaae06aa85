"""Tests of modeling/batching.py: the batch of one that the one-image training inputs become, the
gt of a batch, that a lone image's proposals come from every cell of its feature maps, and the
guard that keeps conv heads off empty batches."""
import numpy as np
import pytest

from utils.tf_compat import tf

from modeling import batching
from utils import tensor_names as names

from tests.modeling import rcnn_helpers as helpers
from tests.tf_helpers import run_graph


def test_batch_of_one_adds_the_batch_axis_and_the_two_batch_inputs():
    image = np.zeros((5, 7, 3), np.float32)
    gt_boxes = np.array([[0, 0, 2, 2], [1, 1, 4, 3], [2, 0, 6, 5]], np.float32)
    gt_labels = np.array([1, 2, 1], np.int64)
    anchor_labels = np.ones((2, 3, 4), np.int32)

    def fn(*tensors):
        inputs = dict(zip([names.IMAGE, names.GT_BOXES, names.GT_LABELS, names.C4_ANCHOR_LABELS], tensors))
        return batching.batch_of_one(inputs)
    batch = run_graph(fn, image, gt_boxes, gt_labels, anchor_labels)
    assert sorted(batch) == sorted([names.IMAGE, names.GT_BOXES, names.GT_LABELS, names.C4_ANCHOR_LABELS,
                                    names.IMAGE_VALID_HW, names.GT_COUNTS])
    np.testing.assert_array_equal(batch[names.IMAGE_VALID_HW], [[5, 7]])
    np.testing.assert_array_equal(batch[names.GT_COUNTS], [3])
    np.testing.assert_array_equal(batch[names.GT_BOXES], gt_boxes[None])
    assert batch[names.IMAGE].shape == (1, 5, 7, 3) and batch[names.C4_ANCHOR_LABELS].shape == (1, 2, 3, 4)


def test_per_image_ground_truth_drops_the_padding_rows_and_offsets_each_image():
    boxes = np.arange(2 * 3 * 4, dtype=np.float32).reshape((2, 3, 4))   # Mmax = 3
    labels = np.array([[1, 2, 0], [3, 0, 0]], np.int64)
    counts = np.array([2, 1], np.int32)

    def fn(boxes, labels, counts):
        gt = batching.per_image_ground_truth({names.GT_BOXES: boxes, names.GT_LABELS: labels,
                                              names.GT_COUNTS: counts}, 2)
        return gt.boxes, gt.labels, gt.offsets, [labels for _, labels in gt.per_image]
    all_boxes, all_labels, offsets, per_image_labels = run_graph(fn, boxes, labels, counts)
    np.testing.assert_array_equal(all_boxes, [boxes[0, 0], boxes[0, 1], boxes[1, 0]])
    np.testing.assert_array_equal(all_labels, [1, 2, 3])
    np.testing.assert_array_equal(offsets, [0, 2])
    assert [list(x) for x in per_image_labels] == [[1, 2], [3]]


@pytest.mark.parametrize('overrides', [[], ['MODE_FPN=False']], ids=['fpn', 'c4'])
def test_a_lone_image_has_no_feature_cell_beyond_its_own(overrides):
    """The RPN takes each image's candidates from its own cells (own_feature_cells, the cells it
    has when alone) cut to the map; for a batch of one these must be the whole map, as a
    one-image RPN sees it, whatever the image's size."""
    helpers.configure(*overrides)
    model = helpers.build_model()
    params = model.params
    sizes = [(128, 160), (97, 131), (113, 150), (64, 65)]
    for height, width in sizes:
        def fn(image):
            return [tf.shape(f)[1:3] for f in model.backbone(image)]
        map_sizes = run_graph(fn, np.zeros((1, height, width, 3), np.float32))
        if params.meta_architecture == 'ResNetFPN':
            strides, multiple = params.fpn.anchor_strides, params.fpn.resolution_requirement
        else:
            strides, multiple = [params.rpn.anchor_stride], 1
        own = [run_graph(lambda hw: batching.own_feature_cells(hw, stride, multiple), np.array([height, width]))
               for stride in strides]
        for map_hw, own_hw in zip(map_sizes, own):
            assert np.all(map_hw <= own_hw), ((height, width), map_hw, own_hw)


def test_batched_anchors_cut_the_grid_and_fit_the_targets_to_the_map():
    """A 2 x 3 map: the 4 x 4 grid is cut to it; labels of 1 x 4 cells are cut to 3 columns and
    padded with -1 (ignored) on the missing row, their boxes with 0."""
    grid = np.arange(4 * 4 * 2 * 4, dtype=np.float32).reshape(4, 4, 2, 4)
    labels = np.arange(1 * 4 * 2, dtype=np.int32).reshape(1, 1, 4, 2)
    boxes = np.ones((1, 1, 4, 2, 4), np.float32)

    def fn(labels, boxes):
        anchors = batching.batched_anchors(grid, labels, boxes, tf.constant([2, 3]))
        return anchors.boxes, anchors.gt_labels, anchors.gt_boxes
    cut_grid, fitted_labels, fitted_boxes = run_graph(fn, labels, boxes)
    np.testing.assert_array_equal(cut_grid, grid[:2, :3])
    np.testing.assert_array_equal(fitted_labels[0, 0], labels[0, 0, :3])
    np.testing.assert_array_equal(fitted_labels[0, 1], -np.ones((3, 2)))
    assert fitted_boxes.shape == (1, 2, 3, 2, 4)
    assert np.all(fitted_boxes[0, 0] == 1) and np.all(fitted_boxes[0, 1] == 0)


class TestRunOnNonemptyBatch:
    """The guard that keeps conv heads off empty batches (oneDNN's convs get them wrong)."""

    @staticmethod
    def _conv_head_outputs(num_rows):
        rng = np.random.RandomState(0)
        with tf.Graph().as_default():
            rois = tf.placeholder(tf.float32, [None, 6, 6, 4])
            kernel = tf.constant(rng.randn(2, 2, 4, 3).astype(np.float32))
            weights = tf.Variable(rng.randn(3, 3, 4, 4).astype(np.float32))

            def head(x):
                hidden = tf.nn.relu(tf.nn.conv2d(x, weights, 1, 'SAME'))
                # a stride-2 conv changes the spatial size: the shape oneDNN got wrong on empty batches
                return tf.nn.conv2d(hidden, kernel, 2, 'VALID')
            out = batching.run_on_nonempty_batch(head, rois)
            grad = tf.gradients(tf.reduce_sum(out ** 2), weights)[0]
            direct = head(rois)
            with tf.Session() as sess:
                sess.run(tf.global_variables_initializer())
                feed = {rois: rng.rand(num_rows, 6, 6, 4).astype(np.float32)}
                if num_rows == 0:
                    return sess.run([out, grad], feed) + [None]
                return sess.run([out, grad, direct], feed)

    def test_empty_batch_has_the_right_shape_and_zero_gradient(self):
        out, grad, _ = self._conv_head_outputs(0)
        assert out.shape == (0, 3, 3, 3)
        assert np.all(grad == 0)

    def test_nonempty_batch_is_computed_as_without_it(self):
        out, grad, direct = self._conv_head_outputs(2)
        assert out.shape == (2, 3, 3, 3)
        np.testing.assert_array_equal(out, direct)
        assert np.any(grad != 0)
