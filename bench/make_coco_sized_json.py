"""Write a COCO-train2017-sized instances json with random polygons, and placeholder images.

    BASEDIR/annotations/instances_<split>.json   118,287 images, ~860k instances (default)
    BASEDIR/<split>/<id>.jpg                       empty files: the roidb loader only checks
                                                   that each image exists

Sizes follow COCO's: images of 480-640 px, 1-20 instances each (7.2 on average), 80
categories with COCO's ids (1..90 with gaps), one polygon of 8-40 points per instance (a
second one for one instance in ten), 1% crowd regions in RLE. No pixels: for loading
benchmarks only (bench/bench_roidb_cache.py).

Run: .venv/bin/python bench/make_coco_sized_json.py BASEDIR [--split train2017] [--images 118287]
"""
import argparse
import json
import os

import numpy as np

# COCO's 80 category ids
CATEGORY_IDS = [i for i in range(1, 91) if i not in (12, 26, 29, 30, 45, 66, 68, 69, 71, 83)]


def _polygon(rng, x, y, w, h):
    count = int(rng.integers(8, 41))
    angles = np.sort(rng.uniform(0, 2 * np.pi, count))
    radius = rng.uniform(0.6, 1.0, count)
    xs = x + w / 2 + np.cos(angles) * radius * w / 2
    ys = y + h / 2 + np.sin(angles) * radius * h / 2
    return [round(float(v), 2) for v in np.stack([xs, ys], axis=1).ravel()]


def make(num_images, seed=0):
    """The COCO-format dict: images, annotations, categories."""
    rng = np.random.default_rng(seed)
    images, annotations = [], []
    for image_id in range(1, num_images + 1):
        width, height = int(rng.choice([640, 480, 612, 500])), int(rng.choice([480, 427, 640, 375]))
        images.append({'id': image_id, 'file_name': '{:012d}.jpg'.format(image_id), 'height': height,
                       'width': width})
        for _ in range(int(rng.integers(1, 21)) if rng.uniform() < 0.6 else int(rng.integers(1, 5))):
            w, h = float(rng.uniform(4, width / 2)), float(rng.uniform(4, height / 2))
            x, y = float(rng.uniform(0, width - w)), float(rng.uniform(0, height - h))
            ann = {'id': len(annotations) + 1, 'image_id': image_id, 'category_id': int(rng.choice(CATEGORY_IDS)),
                   'bbox': [round(x, 2), round(y, 2), round(w, 2), round(h, 2)], 'area': round(w * h * 0.7, 2),
                   'iscrowd': 0}
            if rng.uniform() < 0.01:
                ann['iscrowd'] = 1
                ann['segmentation'] = {'size': [height, width], 'counts': [int(v) for v in rng.integers(1, 200, 20)]}
            else:
                ann['segmentation'] = [_polygon(rng, x, y, w, h)]
                if rng.uniform() < 0.1:
                    ann['segmentation'].append(_polygon(rng, x, y, w / 2, h / 2))
            annotations.append(ann)
    categories = [{'id': i, 'name': 'category{}'.format(i), 'supercategory': 'thing'} for i in CATEGORY_IDS]
    return {'images': images, 'annotations': annotations, 'categories': categories}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('basedir')
    parser.add_argument('--split', default='train2017')
    parser.add_argument('--images', type=int, default=118287)
    parser.add_argument('--seed', type=int, default=0)
    args = parser.parse_args()
    json_path = os.path.join(args.basedir, 'annotations', 'instances_{}.json'.format(args.split))
    if os.path.exists(json_path):
        raise SystemExit('{} exists already; remove it or choose another BASEDIR.'.format(json_path))
    dataset = make(args.images, args.seed)
    image_dir = os.path.join(args.basedir, args.split)
    os.makedirs(image_dir, exist_ok=True)
    for image in dataset['images']:
        open(os.path.join(image_dir, image['file_name']), 'wb').close()
    os.makedirs(os.path.dirname(json_path), exist_ok=True)
    with open(json_path + '.tmp', 'w') as f:
        json.dump(dataset, f)
    os.replace(json_path + '.tmp', json_path)
    print('{}: {} images, {} instances, {:.0f} MB; placeholder images in {}/'.format(
        json_path, len(dataset['images']), len(dataset['annotations']), os.path.getsize(json_path) / 1e6, image_dir))


if __name__ == '__main__':
    main()
