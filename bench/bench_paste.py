"""Time eval.paste_mask: 100 random 28x28 masks into an 800x1200 image, accurate and fast.

Run: .venv/bin/python bench/bench_paste.py [--num-masks 100] [--repeats 5]
"""
import argparse
import time

import numpy as np
from tabulate import tabulate

import benchlib  # noqa: F401  (the project root on sys.path)

from eval import paste_mask

IMAGE_HW = (800, 1200)
MASK_SIZE = 28


def random_boxes_and_masks(num_masks, rng):
    """Boxes of 8..400 px sides (some reaching past the border, as before clipping), random masks."""
    height, width = IMAGE_HW
    sizes = rng.uniform(8, 400, size=(num_masks, 2))
    corners = rng.uniform([-20, -20], [width - 8, height - 8], size=(num_masks, 2))
    boxes = np.concatenate([corners, corners + sizes], axis=1).astype(np.float32)
    masks = rng.uniform(size=(num_masks, MASK_SIZE, MASK_SIZE)).astype(np.float32)
    return boxes, masks


def time_paste(boxes, masks, accurate, repeats):
    """Best wall time over `repeats` runs of pasting every mask, in seconds."""
    best = float('inf')
    for _ in range(repeats):
        start = time.perf_counter()
        for box, mask in zip(boxes, masks):
            paste_mask(box, mask, IMAGE_HW, accurate)
        best = min(best, time.perf_counter() - start)
    return best


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--num-masks', type=int, default=100)
    parser.add_argument('--repeats', type=int, default=5)
    args = parser.parse_args()

    boxes, masks = random_boxes_and_masks(args.num_masks, np.random.RandomState(0))
    rows = []
    for name, accurate in (('accurate (bilinear)', True), ('fast (resize)', False)):
        seconds = time_paste(boxes, masks, accurate, args.repeats)
        rows.append([name, args.num_masks, '{:.1f}'.format(seconds * 1e3),
                     '{:.3f}'.format(seconds * 1e3 / args.num_masks)])
    print('Pasting {} masks of {}x{} into a {}x{} image (best of {} runs)'.format(
        args.num_masks, MASK_SIZE, MASK_SIZE, IMAGE_HW[0], IMAGE_HW[1], args.repeats))
    print(tabulate(rows, headers=['method', 'masks', 'total ms', 'ms / mask']))


if __name__ == '__main__':
    main()
