"""Tests of viz.py: every drawing returns a new BGR uint8 image, changed where boxes are drawn."""
import numpy as np
import pytest

import viz
from inference.detections import DetectionResult

CLASS_NAMES = ['BG', 'circle', 'square']
H, W = 48, 64


def gray_image():
    return np.full((H, W, 3), 100, np.uint8)


def assert_drawn_in(out, original, box):
    """`out` is a fresh uint8 BGR image equal to `original` far from `box` and different on its border."""
    assert out.shape == original.shape and out.dtype == np.uint8
    assert out is not original
    x1, y1, x2, y2 = box
    assert (out[y1:y2, x1] != original[y1:y2, x1]).any()   # the left edge is drawn
    assert (out[y1:y2, x2 - 1] != original[y1:y2, x2 - 1]).any()
    np.testing.assert_array_equal(out[-3:, -3:], original[-3:, -3:])   # a corner far from the box


def test_class_colors_are_distinct():
    colors = [viz.class_color(c) for c in range(1, 11)]
    assert len(set(colors)) == 10
    assert all(len(c) == 3 and all(0 <= v <= 255 for v in c) for c in colors)


def test_draw_annotation():
    img = gray_image()
    polygons = [[np.array([[12, 22], [20, 22], [16, 30]], np.float32)]]
    out = viz.draw_annotation(img, np.array([[10, 20, 30, 36]], np.float32), [2], CLASS_NAMES,
                              polygons=polygons, is_crowd=[1])
    assert_drawn_in(out, img, (10, 20, 30, 36))
    np.testing.assert_array_equal(img, gray_image())   # input untouched


def test_draw_annotation_fills_masks():
    img = gray_image()
    mask = np.zeros((H, W), np.uint8)
    mask[22:34, 12:28] = 1
    box = np.array([[10, 20, 30, 36]], np.float32)
    out = viz.draw_annotation(img, box, [1], CLASS_NAMES, masks=[mask])
    outlined = viz.draw_annotation(img, box, [1], CLASS_NAMES)
    assert (out[28, 20] != img[28, 20]).any()            # inside the mask, away from box and label
    np.testing.assert_array_equal(outlined[28, 20], img[28, 20])
    np.testing.assert_array_equal(out[-3:, -3:], img[-3:, -3:])
    with pytest.raises(ValueError, match='2 masks for 1 boxes'):
        viz.draw_annotation(img, box, [1], CLASS_NAMES, masks=[mask, mask])


def test_draw_annotation_rejects_unknown_class():
    with pytest.raises(ValueError, match='class id 3'):
        viz.draw_annotation(gray_image(), np.array([[1, 1, 5, 5]], np.float32), [3], CLASS_NAMES)


def test_draw_proposal_recall_picks_best_proposal_per_gt():
    img = gray_image()
    proposals = np.array([[0, 0, 8, 8], [10, 20, 24, 30], [40, 5, 50, 15], [11, 21, 30, 36]], np.float32)
    gt_boxes = np.array([[10, 20, 30, 36], [41, 5, 50, 16]], np.float32)
    out, indices = viz.draw_proposal_recall(img, proposals, np.array([0.1, 0.2, 0.3, 0.4]), gt_boxes)
    assert indices.tolist() == [2, 3]
    assert_drawn_in(out, img, (11, 21, 30, 36))
    np.testing.assert_array_equal(out[2:6, 2:6], img[2:6, 2:6])   # proposal 0 is not drawn


def test_draw_proposal_recall_without_gt():
    out, indices = viz.draw_proposal_recall(gray_image(), np.zeros((2, 4), np.float32), np.zeros(2),
                                            np.zeros((0, 4), np.float32))
    assert len(indices) == 0
    np.testing.assert_array_equal(out, gray_image())


def test_draw_predictions_accepts_float_image():
    img = gray_image().astype(np.float32)
    out = viz.draw_predictions(img, np.array([[10, 20, 30, 36]], np.float32), [0.75], [1], CLASS_NAMES)
    assert_drawn_in(out, gray_image(), (10, 20, 30, 36))


def test_draw_mask_blends_only_masked_pixels():
    img = gray_image()
    mask = np.zeros((H, W), np.uint8)
    mask[10:20, 10:30] = 1
    out = viz.draw_mask(img, mask, (0, 0, 255))
    assert out[15, 20, 2] > 100 and out[15, 20, 0] < 100   # redder inside
    np.testing.assert_array_equal(out[30:, :], img[30:, :])
    with pytest.raises(ValueError, match='mask shape'):
        viz.draw_mask(img, mask[:10], (0, 0, 255))


def test_draw_final_outputs_with_masks_and_threshold():
    img = gray_image()
    mask = np.zeros((H, W), np.uint8)
    mask[22:34, 12:28] = 1
    results = [DetectionResult(np.array([10, 20, 30, 36], np.float32), 0.9, 1, mask),
               DetectionResult(np.array([44, 38, 62, 47], np.float32), 0.2, 2, None)]
    out = viz.draw_final_outputs(img, results, CLASS_NAMES, score_thresh=0.5)
    assert_drawn_in(out, img, (10, 20, 30, 36))
    assert (out[28, 20] != img[28, 20]).any()   # mask interior is tinted
    np.testing.assert_array_equal(out[38:, 40:], img[38:, 40:])   # the low-score box is skipped
    np.testing.assert_array_equal(viz.draw_final_outputs(img, [], CLASS_NAMES), img)


def test_stack_grid_layout():
    a, b, c = gray_image(), np.zeros((24, 32, 3), np.uint8), np.full((H, W, 3), 255, np.uint8)
    grid = viz.stack_grid([a, b, c], titles=['gt', 'proposals', 'final'], num_cols=2)
    assert grid.dtype == np.uint8 and grid.shape[1] == 2 * W
    cell_h = grid.shape[0] // 2
    assert grid.shape[0] == 2 * cell_h and cell_h > H   # title bars above each cell
    np.testing.assert_array_equal(grid[cell_h - H:cell_h, :W], a)
    np.testing.assert_array_equal(grid[-H:, W:], 0)      # empty fourth cell
    no_titles = viz.stack_grid([a, c], num_cols=2)
    assert no_titles.shape == (H, 2 * W, 3)


def test_draw_visualization_grid():
    sample = {'image': gray_image().astype(np.float32),
              'gt_boxes': np.array([[10, 20, 30, 36]], np.float32), 'gt_labels': np.array([1])}
    outputs = {
        'generate_fpn_proposals/boxes': np.array([[0, 0, 8, 8], [11, 21, 30, 36]], np.float32),
        'generate_fpn_proposals/probs': np.array([0.3, 0.8], np.float32),
        'fastrcnn_all_scores': np.array([[0.8, 0.1, 0.1], [0.1, 0.2, 0.7]], np.float32),
        'output/boxes': np.array([[11, 21, 30, 36]], np.float32),
        'output/scores': np.array([0.7], np.float32),
        'output/labels': np.array([2], np.int32),
    }
    grid = viz.draw_visualization_grid(sample, outputs, CLASS_NAMES)
    assert grid.dtype == np.uint8 and grid.shape[1] == 2 * W and grid.shape[0] > 2 * H
    del outputs['fastrcnn_all_scores']
    with pytest.raises(KeyError, match='fastrcnn_all_scores'):
        viz.draw_visualization_grid(sample, outputs, CLASS_NAMES)
