"""The balloon dataset of BALLOON.md (VIA json annotations), and a synthetic stand-in for it.

Layout, as unpacked from balloon_dataset.zip:

    basedir/{train,val}/via_region_data.json and *.jpg          (DATA.BASEDIR=~/data/balloon)
    basedir/balloon/{train,val}/...                              (DATA.BASEDIR=~/data) also works

`via_region_data.json` maps keys to entries {filename, regions}; `regions` is a dict or a list
of {shape_attributes: {name: 'polygon', all_points_x, all_points_y}, region_attributes}.
The points are integer pixel indices (pixel centres), so 0.5 is added to get continuous
coordinates where pixel i covers [i, i+1).

    python -m dataset.balloon --make-demo DIR [--num-train 61 --num-val 13]

writes synthetic balloons (filled ellipses on textured backgrounds) to DIR/balloon/ so the
commands of BALLOON.md run without a download.

Shape shorthand: N instances in one image, P points in one polygon.
"""
import argparse
import json
import os

import cv2
import numpy as np

from utils import logs as logger

from dataset.coco_eval import clean_result, coco_gt_from_roidbs, evaluate_coco
from dataset.dataset import DatasetRegistry, DatasetSplit

__all__ = ['BalloonDemo', 'register_balloon', 'write_via_dataset']

CLASS_NAMES = ['BG', 'balloon']
VIA_JSON = 'via_region_data.json'


class BalloonDemo(DatasetSplit):
    """Split 'train' or 'val' of the balloon dataset under `basedir` (see the module docstring).

    image_id is the image's file name; every instance is class 1 and not crowd.
    """

    def __init__(self, basedir, split):
        if split not in ('train', 'val'):
            raise ValueError("Balloon split must be 'train' or 'val', got {!r}".format(split))
        self.basedir = os.path.abspath(os.path.expanduser(basedir))
        self.split = split
        self.name = 'balloon_' + split

    def _split_dir(self):
        candidates = [os.path.join(self.basedir, self.split), os.path.join(self.basedir, 'balloon', self.split)]
        for directory in candidates:
            if os.path.isfile(os.path.join(directory, VIA_JSON)):
                return directory
        raise FileNotFoundError(
            "Dataset '{}': no {} in {} or {}. Unzip balloon_dataset.zip (see BALLOON.md) so that "
            "DATA.BASEDIR/{}/{} exists, or write a synthetic one with "
            "`python -m dataset.balloon --make-demo DIR`.".format(
                self.name, VIA_JSON, candidates[0], candidates[1], self.split, VIA_JSON))

    def _entries(self):
        directory = self._split_dir()
        with open(os.path.join(directory, VIA_JSON)) as f:
            entries = list(json.load(f).values())
        files = [os.path.join(directory, entry['filename']) for entry in entries]
        missing = [path for path in files if not os.path.isfile(path)]
        if missing:
            raise FileNotFoundError("{} of the {} images listed in {} are missing, e.g. {}.".format(
                len(missing), len(files), os.path.join(directory, VIA_JSON), missing[0]))
        if len(set(files)) != len(files):
            raise ValueError("{} lists some file names twice.".format(os.path.join(directory, VIA_JSON)))
        return entries, files

    def inference_roidbs(self):
        _, files = self._entries()
        return [{'file_name': path, 'image_id': os.path.basename(path)} for path in files]

    def training_roidbs(self):
        entries, files = self._entries()
        roidbs, drops = [], {'polygon': 0, 'box': 0, 'shape': 0}
        for entry, path in zip(entries, files):
            image = cv2.imread(path, cv2.IMREAD_UNCHANGED)
            if image is None:
                raise ValueError("Cannot decode image {}".format(path))
            height, width = image.shape[:2]
            boxes, polygons = [], []
            regions = entry.get('regions') or {}
            for region in (regions.values() if isinstance(regions, dict) else regions):
                shape = region['shape_attributes']
                if shape.get('name') != 'polygon':
                    drops['shape'] += 1
                    continue
                polygon = np.stack([shape['all_points_x'], shape['all_points_y']], axis=1).astype(np.float32) + 0.5
                if len(polygon) < 3:
                    drops['polygon'] += 1
                    continue
                x1, y1 = np.maximum(polygon.min(axis=0), 0)
                x2, y2 = np.minimum(polygon.max(axis=0), [width, height])
                if x2 <= x1 or y2 <= y1:
                    drops['box'] += 1
                    continue
                boxes.append([x1, y1, x2, y2])
                polygons.append([polygon])
            num = len(boxes)
            roidbs.append({
                'file_name': path, 'image_id': os.path.basename(path), 'height': height, 'width': width,
                'boxes': np.asarray(boxes, dtype=np.float32).reshape(-1, 4),
                'class': np.ones((num,), dtype=np.int32), 'is_crowd': np.zeros((num,), dtype=np.int8),
                'segmentation': polygons})
        dropped = ', '.join('{} {}'.format(n, what) for what, n in [
            ('polygons with < 3 points', drops['polygon']), ('empty or out-of-image boxes', drops['box']),
            ('non-polygon regions', drops['shape'])] if n)
        logger.info("Loaded {} images and {} balloons of '{}'{}.".format(
            len(roidbs), sum(len(r['class']) for r in roidbs), self.name, '; dropped ' + dropped if dropped else ''))
        return roidbs

    def eval_inference_results(self, results, output=None):
        """See DatasetSplit; image_id is the file name, category_id is 1 (balloon)."""
        results = [clean_result(r) for r in results]
        if output is not None:
            with open(output, 'w') as f:
                json.dump(results, f)
        coco_gt, image_id_map = coco_gt_from_roidbs(self.training_roidbs(), CLASS_NAMES)
        for result in results:
            if result['image_id'] not in image_id_map:
                raise ValueError("Result for image {!r}, which is not in '{}'.".format(result['image_id'], self.name))
            result['image_id'] = image_id_map[result['image_id']]
        return evaluate_coco(coco_gt, results, output)


def register_balloon(basedir):
    """Register balloon_train and balloon_val under `basedir` (no file is read here)."""
    for split in ('train', 'val'):
        name = 'balloon_' + split
        DatasetRegistry.register(name, lambda split=split: BalloonDemo(basedir, split))
        DatasetRegistry.register_metadata(name, 'class_names', list(CLASS_NAMES))


# --- synthetic stand-in -------------------------------------------------------------------

def _textured_background(rng, height, width):
    coarse = (rng.uniform(50, 200) + rng.normal(0, 30, size=(4, 4, 3))).astype(np.float32)
    image = cv2.resize(coarse, (width, height), interpolation=cv2.INTER_CUBIC)
    image += rng.normal(0, 10, size=(height, width, 3)).astype(np.float32)
    return image


def _draw_balloons(rng, image):
    """Paint 1-3 ellipses, inside the image and apart; returns their VIA polygons (the integer points cv2
    filled, so each polygon + 0.5 outlines exactly the painted balloon)."""
    height, width = image.shape[:2]
    occupied = np.zeros((height, width), dtype=np.uint8)
    polygons = []
    wanted = rng.integers(1, 4)
    for _ in range(20):
        if len(polygons) == wanted:
            break
        axes = (int(rng.uniform(0.06, 0.15) * width), int(rng.uniform(0.08, 0.2) * width))
        center = (int(rng.uniform(0.15, 0.85) * width), int(rng.uniform(0.2, 0.8) * height))
        points = cv2.ellipse2Poly(center, axes, int(rng.uniform(-30, 30)), 0, 360, 10)
        if points.min() < 0 or points[:, 0].max() >= width or points[:, 1].max() >= height:
            continue
        candidate = cv2.fillPoly(np.zeros_like(occupied), [points], 1)
        if (candidate & occupied).any():
            continue
        occupied |= candidate
        color = rng.uniform(0, 255, size=3)
        color[rng.integers(3)] = 230   # keep balloons saturated against the greyish background
        cv2.fillPoly(image, [points], color.tolist())
        # a highlight, as on a real balloon, small and central enough to stay inside at any angle
        short = min(axes)
        cv2.circle(image, (center[0] - short // 3, center[1] - short // 3), max(short // 6, 1), (240, 240, 240), -1)
        polygons.append(points)
    return polygons


def write_via_dataset(basedir, num_train=61, num_val=13, image_size=640, seed=0):
    """Write a synthetic balloon dataset to basedir/balloon/{train,val}/ (jpgs + VIA json).

    Images are `image_size` wide and 3/4 as tall. Train uses dict `regions`, val list
    `regions`: both VIA layouts occur in the wild. Returns the directory basedir/balloon.
    """
    root = os.path.join(os.path.expanduser(basedir), 'balloon')
    height = int(round(image_size * 3 / 4))
    for split_index, (split, count) in enumerate([('train', num_train), ('val', num_val)]):
        directory = os.path.join(root, split)
        os.makedirs(directory, exist_ok=True)
        entries = {}
        for i in range(count):
            rng = np.random.default_rng([seed, split_index, i])
            image = _textured_background(rng, height, image_size)
            polygons = _draw_balloons(rng, image)
            filename = 'balloon_{:04d}.jpg'.format(i)
            cv2.imwrite(os.path.join(directory, filename), np.clip(image, 0, 255).astype(np.uint8))
            regions = [{'shape_attributes': {'name': 'polygon', 'all_points_x': p[:, 0].tolist(),
                                             'all_points_y': p[:, 1].tolist()},
                        'region_attributes': {}} for p in polygons]
            if split == 'train':
                regions = {str(k): region for k, region in enumerate(regions)}
            size = os.path.getsize(os.path.join(directory, filename))
            entries[filename + str(size)] = {'fileref': '', 'size': size, 'filename': filename,
                                             'base64_img_data': '', 'file_attributes': {}, 'regions': regions}
        with open(os.path.join(directory, VIA_JSON), 'w') as f:
            json.dump(entries, f)
        logger.info("Wrote {} synthetic balloon images to {}".format(count, directory))
    return root


def main(argv=None):
    parser = argparse.ArgumentParser(description="Write a synthetic balloon dataset (BALLOON.md layout).")
    parser.add_argument('--make-demo', metavar='DIR', required=True, help='writes DIR/balloon/{train,val}')
    parser.add_argument('--num-train', type=int, default=61)
    parser.add_argument('--num-val', type=int, default=13)
    parser.add_argument('--size', type=int, default=640, help='image width in pixels')
    parser.add_argument('--seed', type=int, default=0)
    args = parser.parse_args(argv)
    root = write_via_dataset(args.make_demo, args.num_train, args.num_val, args.size, args.seed)
    print("Synthetic balloon dataset in {}; train with DATA.BASEDIR={}".format(root, root))


if __name__ == '__main__':
    main()
