"""The project's built-in dataset: circles, squares and triangles, written in COCO format.

    basedir/shapes_{train,val}/*.jpg
    basedir/annotations/instances_shapes_{train,val}.json   (categories 1 circle, 2 square, 3 triangle)

Nothing is written at registration; a split creates its files the first time its roidbs or
class names are needed, and only if they are missing or were made with other parameters
(image count, size, seed and generator version are kept in the json's `info`). The json is
written last, through a temporary file, so an interrupted run counts as missing.

Annotations are exact: shapes are painted in order, each instance's mask is what stays
visible after later shapes cover it, and its polygons trace that mask along pixel edges
(pixel i covers [i, i+1)), so the box is the mask's pixel extent and `area` its pixel count.

    python -m dataset.shapes DIR [--num-train N --num-val N --size S]

creates the data if needed and prints a summary.
"""
import argparse
import collections
import json
import os
import zlib

import cv2
import numpy as np

from utils import logs as logger
from utils.logs import progress

from dataset.coco import COCOFormatSplit
from dataset.dataset import DatasetRegistry

__all__ = ['CATEGORIES', 'render_image', 'mask_to_polygons', 'image_rng', 'write_shapes_split',
           'ensure_shapes_split', 'register_shapes']

CATEGORIES = [{'id': 1, 'name': 'circle', 'supercategory': 'shape'},
              {'id': 2, 'name': 'square', 'supercategory': 'shape'},
              {'id': 3, 'name': 'triangle', 'supercategory': 'shape'}]
# Bump when the drawing changes, so that data made by an older version gets regenerated.
GENERATOR_VERSION = 1
DEFAULT_NUM_TRAIN = 2000
DEFAULT_NUM_VAL = 200
DEFAULT_IMAGE_SIZE = 256
DEFAULT_SEED = 0
EMPTY_IMAGE_FRACTION = 0.1
MAX_SHAPES = 5
MIN_VISIBLE_FRACTION = 0.4   # of a shape's own area that must stay uncovered
MIN_VISIBLE_PIXELS = 40


def _paths(basedir, split):
    basedir = os.path.abspath(os.path.expanduser(basedir))
    return (os.path.join(basedir, 'annotations', 'instances_shapes_{}.json'.format(split)),
            os.path.join(basedir, 'shapes_' + split))


def _background(rng, size):
    """A greyish texture of smooth blotches and a few faint lines, float32 [S, S, 3] (noise comes later)."""
    grey = rng.uniform(50, 200)
    coarse = grey + rng.normal(0, 25, size=(5, 5, 3))
    image = cv2.resize(coarse.astype(np.float32), (size, size), interpolation=cv2.INTER_LINEAR)
    for _ in range(rng.integers(0, 4)):
        p1, p2 = rng.integers(0, size, size=(2, 2))
        shade = float(grey + rng.normal(0, 40))
        cv2.line(image, (int(p1[0]), int(p1[1])), (int(p2[0]), int(p2[1])), (shade, shade, shade),
                 int(rng.integers(1, 3)))
    return image


def _uniform_noise(rng, shape, amplitude):
    # uniform rather than gaussian noise: several times cheaper to draw, which dominates the run time
    return (rng.random(shape, dtype=np.float32) - 0.5) * (2 * amplitude)


def _shape_mask(rng, size):
    """(category id, uint8 [S, S] mask) of one random shape; it may extend past the border."""
    category = int(rng.integers(1, 4))
    center = rng.uniform(0, size, size=2)
    radius = rng.uniform(0.05, 0.2) * size
    mask = np.zeros((size, size), dtype=np.uint8)
    if category == 1:
        cv2.circle(mask, (int(center[0]), int(center[1])), int(radius), 1, -1)
    else:
        corners = 4 if category == 2 else 3
        angles = rng.uniform(0, 2 * np.pi) + np.arange(corners) * 2 * np.pi / corners
        points = center + radius * np.stack([np.cos(angles), np.sin(angles)], axis=1)
        cv2.fillPoly(mask, [np.round(points * 16).astype(np.int32)], 1, shift=4)   # 1/16 px precision
    return category, mask


def _has_hole(mask):
    _, hierarchy = cv2.findContours(mask, cv2.RETR_CCOMP, cv2.CHAIN_APPROX_SIMPLE)
    return hierarchy is not None and (hierarchy[0, :, 3] >= 0).any()


def _layout(rng, size):
    """Place up to MAX_SHAPES shapes. Returns (categories, full areas, id map int32 [S, S]):
    id map value j + 1 marks the pixels where shape j is visible."""
    id_map = np.zeros((size, size), dtype=np.int32)
    categories, areas = [], []
    if rng.uniform() < EMPTY_IMAGE_FRACTION:
        return categories, areas, id_map
    for _ in range(rng.integers(1, MAX_SHAPES + 1)):
        for _attempt in range(10):
            category, mask = _shape_mask(rng, size)
            area = int(mask.sum())
            if area < MIN_VISIBLE_PIXELS / MIN_VISIBLE_FRACTION:
                continue
            candidate = np.where(mask > 0, len(categories) + 1, id_map)
            visible = np.bincount(candidate.ravel(), minlength=len(categories) + 2)[1:]
            needed = np.maximum(np.asarray(areas + [area]) * MIN_VISIBLE_FRACTION, MIN_VISIBLE_PIXELS)
            if (visible < needed).any():
                continue
            # a shape landing inside another would leave a hole the polygons cannot express
            if any(_has_hole((candidate == j + 1).astype(np.uint8)) for j in range(len(categories))):
                continue
            id_map = candidate
            categories.append(category)
            areas.append(area)
            break
    return categories, areas, id_map


def mask_to_polygons(mask):
    """Polygons along the pixel edges of a binary mask without holes.

    Returns a list of float32 [P, 2] (x, y) arrays, vertices on integer coordinates. Tracing
    the mask upsampled 2x puts contour points a quarter pixel inside each edge; rounding
    (point + 0.5) / 2 moves them onto the edge itself.
    """
    x0, y0, w, h = cv2.boundingRect(mask.astype(np.uint8))
    crop = mask[y0:y0 + h, x0:x0 + w].astype(np.uint8)
    crop = np.pad(crop.repeat(2, axis=0).repeat(2, axis=1), 1)
    contours, _ = cv2.findContours(crop, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    polygons = []
    for contour in contours:
        points = np.round((contour.reshape(-1, 2) - 1 + 0.5) / 2)   # -1 undoes the padding
        keep = np.any(points != np.roll(points, 1, axis=0), axis=1)
        points = points[keep]
        if len(points) >= 3:
            polygons.append((points + [x0, y0]).astype(np.float32))
    return polygons


def render_image(rng, size):
    """One synthetic image and its exact annotations.

    Returns:
        image: uint8 [S, S, 3], BGR.
        instances: list of dicts {category_id, color (BGR, 3 ints), mask bool [S, S] (visible
            part), polygons list of float32 [P, 2], box [x1, y1, x2, y2] float, area int}.
    """
    image = _background(rng, size)
    categories, _, id_map = _layout(rng, size)
    # saturated colours against the greyish background; palette row 0 is unused (background)
    hsv = np.stack([rng.integers(0, 180, len(categories) + 1), rng.integers(150, 256, len(categories) + 1),
                    rng.integers(150, 256, len(categories) + 1)], axis=1).astype(np.uint8)
    palette = cv2.cvtColor(hsv[None], cv2.COLOR_HSV2BGR)[0].astype(np.float32)
    on_shape = id_map > 0
    # pixel noise everywhere, weaker on the shapes so they stay nearly flat
    noise = _uniform_noise(rng, image.shape, 14) * np.where(on_shape, 0.4, 1.0).astype(np.float32)[:, :, None]
    image = np.where(on_shape[:, :, None], palette[id_map], image) + noise
    instances = []
    for j, category in enumerate(categories):
        mask = id_map == j + 1
        x, y, w, h = cv2.boundingRect(mask.astype(np.uint8))
        instances.append({'category_id': category, 'color': palette[j + 1].astype(int).tolist(), 'mask': mask,
                          'polygons': mask_to_polygons(mask), 'box': [float(x), float(y), float(x + w), float(y + h)],
                          'area': int(mask.sum())})
    return np.clip(image, 0, 255).astype(np.uint8), instances


def image_rng(seed, split, index):
    """The random generator of image `index` (0-based) of `split`: each image is reproducible alone."""
    return np.random.default_rng([seed, zlib.crc32(split.encode('utf-8')), index])


def _generator_info(num_images, image_size, seed):
    return {'num_images': int(num_images), 'image_size': int(image_size), 'seed': int(seed),
            'generator_version': GENERATOR_VERSION}


def write_shapes_split(basedir, split, num_images, image_size, seed):
    """Write split `split` ('train', 'val', ...): images first, then the json atomically."""
    json_path, image_dir = _paths(basedir, split)
    os.makedirs(image_dir, exist_ok=True)
    os.makedirs(os.path.dirname(json_path), exist_ok=True)
    if os.path.exists(json_path):
        os.remove(json_path)   # from here on the split counts as missing until the new json lands
    images, annotations = [], []
    for i in progress(range(num_images), desc='Writing shapes_' + split):
        image, instances = render_image(image_rng(seed, split, i), image_size)
        file_name = '{:06d}.jpg'.format(i + 1)
        cv2.imwrite(os.path.join(image_dir, file_name), image, [cv2.IMWRITE_JPEG_QUALITY, 95])
        images.append({'id': i + 1, 'file_name': file_name, 'height': image_size, 'width': image_size})
        for instance in instances:
            x1, y1, x2, y2 = instance['box']
            annotations.append({
                'id': len(annotations) + 1, 'image_id': i + 1, 'category_id': instance['category_id'],
                'bbox': [x1, y1, x2 - x1, y2 - y1], 'area': instance['area'], 'iscrowd': 0,
                'segmentation': [p.astype(int).ravel().tolist() for p in instance['polygons']]})
    info = dict(_generator_info(num_images, image_size, seed),
                description='synthetic shapes ({}), made by dataset/shapes.py'.format(split))
    dataset = {'info': info, 'images': images, 'annotations': annotations, 'categories': CATEGORIES}
    temp_path = '{}.tmp{}'.format(json_path, os.getpid())
    with open(temp_path, 'w') as f:
        json.dump(dataset, f)
    os.replace(temp_path, json_path)


def _why_regenerate(json_path, image_dir, wanted):
    """None if the split on disk matches `wanted`, else the reason to write it again."""
    if not os.path.isfile(json_path):
        return '{} does not exist'.format(json_path)
    try:
        with open(json_path) as f:
            dataset = json.load(f)
        info = dataset['info']
        file_names = [img['file_name'] for img in dataset['images']]
    except (ValueError, KeyError, TypeError) as e:
        return '{} is unreadable ({!r})'.format(json_path, e)
    changed = ['{}={!r} (wanted {!r})'.format(k, info.get(k), v) for k, v in wanted.items() if info.get(k) != v]
    if changed:
        return '{} was made with {}'.format(json_path, ', '.join(changed))
    missing = [name for name in file_names if not os.path.isfile(os.path.join(image_dir, name))]
    if missing:
        return '{} images are missing from {}, e.g. {}'.format(len(missing), image_dir, missing[0])
    return None


def _on_disk_info(json_path):
    """The generator settings recorded in an existing split's json, or {}."""
    try:
        with open(json_path) as f:
            return dict(json.load(f).get('info', {}))
    except (OSError, ValueError, AttributeError):
        return {}


def ensure_shapes_split(basedir, split, num_images=None, image_size=None, seed=None):
    """Write the split unless an identical one is on disk already. Returns (json_path, image_dir).

    A setting left as None means "as the split on disk has it", or the default when there is
    none, so `train.py` uses whatever `python -m dataset.shapes DIR --num-train ...` wrote.
    """
    json_path, image_dir = _paths(basedir, split)
    on_disk = _on_disk_info(json_path)
    default_count = DEFAULT_NUM_TRAIN if split == 'train' else DEFAULT_NUM_VAL
    num_images = num_images if num_images is not None else on_disk.get('num_images', default_count)
    image_size = image_size if image_size is not None else on_disk.get('image_size', DEFAULT_IMAGE_SIZE)
    seed = seed if seed is not None else on_disk.get('seed', DEFAULT_SEED)
    reason = _why_regenerate(json_path, image_dir, _generator_info(num_images, image_size, seed))
    if reason is not None:
        logger.info("Generating shapes_{}: {} images of {}px, because {}.".format(
            split, num_images, image_size, reason))
        write_shapes_split(basedir, split, num_images, image_size, seed)
    return json_path, image_dir


def _make_split(basedir, split, num_images, image_size, seed):
    json_path, image_dir = _paths(basedir, split)
    return COCOFormatSplit(json_path, image_dir, name='shapes_' + split,
                           prepare=lambda: ensure_shapes_split(basedir, split, num_images, image_size, seed))


def register_shapes(basedir, num_train=None, num_val=None, image_size=None, seed=None):
    """Register shapes_train and shapes_val under `basedir`; nothing is written until used.

    None settings take what is on disk (see `ensure_shapes_split`), else the defaults
    (DEFAULT_NUM_TRAIN / DEFAULT_NUM_VAL images of DEFAULT_IMAGE_SIZE px, seed DEFAULT_SEED).
    """
    for split, count in (('train', num_train), ('val', num_val)):
        name = 'shapes_' + split
        DatasetRegistry.register(
            name, lambda split=split, count=count: _make_split(basedir, split, count, image_size, seed))
        DatasetRegistry.register_lazy_metadata(
            name, 'class_names',
            lambda split=split, count=count: _make_split(basedir, split, count, image_size, seed).class_names())


def main(argv=None):
    parser = argparse.ArgumentParser(description="Create the synthetic shapes dataset (if needed) and summarize it.")
    parser.add_argument('basedir', metavar='DIR')
    parser.add_argument('--num-train', type=int, default=DEFAULT_NUM_TRAIN)
    parser.add_argument('--num-val', type=int, default=DEFAULT_NUM_VAL)
    parser.add_argument('--size', type=int, default=DEFAULT_IMAGE_SIZE, help='image side in pixels')
    parser.add_argument('--seed', type=int, default=DEFAULT_SEED)
    args = parser.parse_args(argv)
    register_shapes(args.basedir, args.num_train, args.num_val, args.size, args.seed)
    names = [c['name'] for c in CATEGORIES]
    for split in ('train', 'val'):
        split_obj = DatasetRegistry.get('shapes_' + split)
        roidbs = split_obj.training_roidbs()
        counts = collections.Counter(int(c) for r in roidbs for c in r['class'])
        empty = sum(len(r['class']) == 0 for r in roidbs)
        per_class = ', '.join('{} {}'.format(counts[k + 1], name) for k, name in enumerate(names))
        print("shapes_{}: {} images of {}px in {}; instances: {}; {} images without objects".format(
            split, len(roidbs), args.size, split_obj.image_dir, per_class, empty))


if __name__ == '__main__':
    main()
