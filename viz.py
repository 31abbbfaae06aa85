"""Pictures of annotations, proposals and detections, drawn with OpenCV (no display needed).

Shape shorthand: N boxes, H, W image size. Boxes are x1y1x2y2 float pixels of the image
being drawn on. Every function returns a new uint8 [H, W, 3] BGR image and leaves its
input untouched; float inputs (e.g. the training dataflow's image) are clipped to 0..255.
Class ids index `class_names` directly, so pass the list with 'BG' at index 0
(config's DATA.CLASS_NAMES).
"""
import colorsys

import cv2
import numpy as np

from inference.detections import DetectionResult
from utils import tensor_names
from utils.np_box_ops import iou as np_iou

_FONT = cv2.FONT_HERSHEY_SIMPLEX
_FONT_SCALE = 0.45
_PROPOSAL_COLOR = (0, 200, 255)   # BGR orange-yellow for class-less boxes

def class_color(class_id):
    """A BGR uint8 colour for `class_id`; neighbouring ids get far-apart hues."""
    hue = (int(class_id) * 0.6180339887) % 1.0   # golden-ratio steps spread hues evenly
    r, g, b = colorsys.hsv_to_rgb(hue, 0.8, 0.95)
    return (int(b * 255), int(g * 255), int(r * 255))


def _to_bgr_uint8(img):
    img = np.asarray(img)
    if img.dtype != np.uint8:
        img = np.clip(img, 0, 255).astype(np.uint8)
    if img.ndim == 2:
        img = cv2.cvtColor(img, cv2.COLOR_GRAY2BGR)
    if img.ndim != 3 or img.shape[2] != 3:
        raise ValueError("Expected an [H, W, 3] BGR or [H, W] gray image, got shape {}".format(img.shape))
    return np.ascontiguousarray(img).copy()


def _class_name(class_names, class_id):
    class_id = int(class_id)
    if not 0 <= class_id < len(class_names):
        raise ValueError("class id {} is outside class_names (length {}, 'BG' first)".format(
            class_id, len(class_names)))
    return class_names[class_id]


def _draw_text(img, text, x, y, color):
    """Text on a filled `color` box whose bottom-left corner is near (x, y), kept inside the image."""
    (text_w, text_h), baseline = cv2.getTextSize(text, _FONT, _FONT_SCALE, 1)
    height, width = img.shape[:2]
    box_h = text_h + baseline + 2
    top = y - box_h
    if top < 0:   # no room above the box: put the label just inside it
        top = y
    top = int(np.clip(top, 0, max(height - box_h, 0)))
    left = int(np.clip(x, 0, max(width - text_w - 2, 0)))
    cv2.rectangle(img, (left, top), (left + text_w + 2, top + box_h), color, thickness=-1)
    # Dark text on light backgrounds, light text on dark ones.
    luminance = 0.114 * color[0] + 0.587 * color[1] + 0.299 * color[2]
    text_color = (0, 0, 0) if luminance > 128 else (255, 255, 255)
    cv2.putText(img, text, (left + 1, top + text_h + 1), _FONT, _FONT_SCALE, text_color, 1, cv2.LINE_AA)


def draw_boxes(img, boxes, labels=None, colors=None, thickness=2):
    """Boxes with optional text labels.

    boxes: float [N, 4], x1y1x2y2. labels: N strings or None. colors: N BGR tuples, or None for one colour.
    """
    out = _to_bgr_uint8(img)
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    if labels is not None and len(labels) != len(boxes):
        raise ValueError("Got {} labels for {} boxes".format(len(labels), len(boxes)))
    for k, box in enumerate(boxes):
        color = colors[k] if colors is not None else _PROPOSAL_COLOR
        x1, y1, x2, y2 = (int(round(v)) for v in box)
        cv2.rectangle(out, (x1, y1), (max(x2 - 1, x1), max(y2 - 1, y1)), color, thickness)
    # Labels after all boxes so no box line crosses a label.
    if labels is not None:
        for k, box in enumerate(boxes):
            color = colors[k] if colors is not None else _PROPOSAL_COLOR
            _draw_text(out, labels[k], int(round(box[0])), int(round(box[1])), color)
    return out


def draw_annotation(img, boxes, class_ids, class_names, polygons=None, is_crowd=None, masks=None):
    """Ground truth: boxes labelled with class names, optional polygon outlines and filled masks.

    boxes: float [N, 4], x1y1x2y2. class_ids: int [N], 1..K.
    polygons: None, or N lists of float [P, 2] (x, y) polygons (roidb 'segmentation').
    is_crowd: None or int [N]; crowd boxes get a ';crowd' suffix.
    masks: None, or N [H, W] masks (nonzero inside), filled semi-transparent in the class colour.
    """
    boxes = np.asarray(boxes).reshape(-1, 4)
    if len(class_ids) != len(boxes):
        raise ValueError("Got {} class ids for {} boxes".format(len(class_ids), len(boxes)))
    colors = [class_color(c) for c in class_ids]
    labels = [_class_name(class_names, c) for c in class_ids]
    if is_crowd is not None:
        labels = [name + (';crowd' if crowd else '') for name, crowd in zip(labels, is_crowd)]
    out = _to_bgr_uint8(img)
    if masks is not None:
        if len(masks) != len(boxes):
            raise ValueError("Got {} masks for {} boxes".format(len(masks), len(boxes)))
        for mask, color in zip(masks, colors):
            out = draw_mask(out, mask, color)
    if polygons is not None:
        for polys, color in zip(polygons, colors):
            pts = [np.round(np.asarray(p, dtype=np.float64)).astype(np.int32).reshape(-1, 1, 2) for p in polys]
            cv2.polylines(out, pts, isClosed=True, color=color, thickness=1, lineType=cv2.LINE_AA)
    return draw_boxes(out, boxes, labels, colors)


def draw_proposal_recall(img, proposals, proposal_scores, gt_boxes):
    """The best-overlapping proposal of every ground-truth box, labelled with its score.

    proposals: float [P, 4], x1y1x2y2. proposal_scores: float [P]. gt_boxes: float [G, 4].
    Returns (image, indices): indices int [<= G] of the drawn proposals, sorted, without repeats.
    """
    proposals = np.asarray(proposals, dtype=np.float32).reshape(-1, 4)
    gt_boxes = np.asarray(gt_boxes, dtype=np.float32).reshape(-1, 4)
    if len(proposals) == 0 or len(gt_boxes) == 0:
        return _to_bgr_uint8(img), np.zeros((0,), dtype=np.int64)
    best = np.unique(np.argmax(np_iou(gt_boxes, proposals), axis=1))
    labels = ['{:.2f}'.format(float(s)) for s in np.asarray(proposal_scores)[best]]
    return draw_boxes(img, proposals[best], labels), best


def draw_predictions(img, boxes, scores, labels, class_names):
    """Scored boxes, e.g. raw head outputs, labelled 'name score'.

    boxes: float [N, 4], x1y1x2y2. scores: float [N]. labels: int [N], 1..K (0 draws as 'BG').
    From per-class probabilities [N, K+1]: labels = probs.argmax(1), scores = probs.max(1).
    """
    texts = ['{} {:.2f}'.format(_class_name(class_names, c), float(s)) for c, s in zip(labels, scores)]
    return draw_boxes(img, boxes, texts, [class_color(c) for c in labels])


def draw_mask(img, mask, color, alpha=0.5):
    """Blend `color` into the pixels where `mask` > 0 and outline them.

    mask: [H, W], same size as img. color: BGR tuple. alpha: weight of the colour.
    """
    out = _to_bgr_uint8(img)
    mask = np.asarray(mask) > 0
    if mask.shape != out.shape[:2]:
        raise ValueError("mask shape {} differs from image shape {}".format(mask.shape, out.shape[:2]))
    color_arr = np.asarray(color, dtype=np.float32)
    out[mask] = (out[mask] * (1.0 - alpha) + color_arr * alpha).astype(np.uint8)
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    cv2.drawContours(out, contours, -1, tuple(int(c) for c in color), 1, cv2.LINE_AA)
    return out


def _kept(results, score_thresh):
    # Lowest score first so the most confident detection ends up on top.
    return sorted((r for r in results if r.score >= score_thresh), key=lambda r: r.score)


def draw_final_outputs(img, results, class_names, score_thresh=0.0):
    """Final detections: semi-transparent class-coloured masks, boxes and 'name score' labels.

    results: [DetectionResult] in this image's pixels; those scoring below score_thresh are skipped.
    """
    results = _kept(results, score_thresh)
    out = _to_bgr_uint8(img)
    for r in results:
        if r.mask is not None:
            out = draw_mask(out, r.mask, class_color(r.class_id))
    if not results:
        return out
    boxes = np.asarray([r.box for r in results])
    return draw_predictions(out, boxes, [r.score for r in results], [r.class_id for r in results], class_names)


def stack_grid(images, titles=None, num_cols=2):
    """Tile images into a grid (row-major), each under a title bar; for predict.py --visualize.

    images: list of [H_i, W_i, 3] images, resized to the first one's size. titles: list of str or None.
    Returns uint8 [rows * (H + title bar), num_cols * W, 3]; empty cells are black.
    """
    if not images:
        raise ValueError("stack_grid needs at least one image")
    if titles is not None and len(titles) != len(images):
        raise ValueError("Got {} titles for {} images".format(len(titles), len(images)))
    height, width = np.asarray(images[0]).shape[:2]
    bar_h = cv2.getTextSize('Ag', _FONT, _FONT_SCALE, 1)[0][1] + 10 if titles is not None else 0
    cells = []
    for k, image in enumerate(images):
        image = _to_bgr_uint8(image)
        if image.shape[:2] != (height, width):
            image = cv2.resize(image, (width, height))
        if titles is not None:
            bar = np.full((bar_h, width, 3), 32, dtype=np.uint8)
            cv2.putText(bar, titles[k], (4, bar_h - 6), _FONT, _FONT_SCALE, (255, 255, 255), 1, cv2.LINE_AA)
            image = np.concatenate([bar, image], axis=0)
        cells.append(image)
    num_rows = -(-len(cells) // num_cols)
    cells += [np.zeros_like(cells[0])] * (num_rows * num_cols - len(cells))
    rows = [np.concatenate(cells[r * num_cols:(r + 1) * num_cols], axis=1) for r in range(num_rows)]
    return np.concatenate(rows, axis=0)


def _find_output(outputs, suffixes):
    for name in outputs:
        if any(name.endswith(suffix) for suffix in suffixes):
            return outputs[name]
    raise KeyError("draw_visualization_grid needs an output named '...{}'; got {}".format(
        "' or '...".join(suffixes), sorted(outputs)))


def draw_visualization_grid(sample, outputs, class_names):
    """2x2 picture of one training sample through the model, for predict.py --visualize.

    sample: dataflow dict with 'image' [H, W, 3] BGR, 'gt_boxes' float32 [G, 4], 'gt_labels' int [G].
    outputs: tensor name -> value, with '...proposals/boxes' [P, 4], '...proposals/probs' or
        '...proposals/scores' [P], 'fastrcnn_all_scores' [P, K + 1] and output/boxes|scores|labels.
    Panels: ground truth; the best proposal per gt box; the class scores of those proposals;
    the final detections. All boxes in the pixels of sample['image'].
    """
    image = sample[tensor_names.IMAGE]
    gt_boxes, gt_labels = sample[tensor_names.GT_BOXES], sample[tensor_names.GT_LABELS]
    proposal_boxes = _find_output(outputs, (tensor_names.PROPOSAL_BOXES_SUFFIX,))
    proposal_scores = _find_output(outputs, tensor_names.PROPOSAL_SCORES_SUFFIXES)
    all_scores = _find_output(outputs, (tensor_names.FASTRCNN_ALL_SCORES,))
    final = [outputs[name] for name in tensor_names.OUTPUT_NAMES]

    gt_viz = draw_annotation(image, gt_boxes, gt_labels, class_names)
    proposal_viz, best = draw_proposal_recall(image, proposal_boxes, proposal_scores, gt_boxes)
    best_scores = np.asarray(all_scores)[best]
    score_viz = draw_predictions(image, np.asarray(proposal_boxes)[best], best_scores.max(axis=1),
                                 best_scores.argmax(axis=1), class_names)
    results = [DetectionResult(box, score, label, None) for box, score, label in zip(*final)]
    final_viz = draw_final_outputs(image, results, class_names)
    return stack_grid([gt_viz, proposal_viz, score_viz, final_viz],
                      ['ground truth', 'best proposal per gt', 'their class scores', 'final detections'])

