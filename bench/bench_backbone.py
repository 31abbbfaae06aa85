"""Seconds per image of the ResNet-FPN backbone in inference, on this machine's CPU.

    .venv/bin/python bench/bench_backbone.py [--depth 50] [--size 800 1088] [--norm FreezeBN]

Random weights; the first run (graph optimization, allocation) is excluded from the timing.
"""
import argparse
import time

import benchlib  # noqa: F401  (the project root on sys.path)

import numpy as np

from utils.tf_compat import onednn_status, tf

from tensorpack.tfutils.tower import TowerContext

from modeling.backbone import image_preprocess, resnet_fpn_backbone

NUM_BLOCKS = {50: [3, 4, 6, 3], 101: [3, 4, 23, 3]}


def main():
    print(onednn_status())
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--depth', type=int, default=50, choices=sorted(NUM_BLOCKS))
    parser.add_argument('--size', type=int, nargs=2, default=[800, 1088], metavar=('H', 'W'))
    parser.add_argument('--norm', default='FreezeBN')
    parser.add_argument('--data-format', default='NHWC')
    parser.add_argument('--runs', type=int, default=5)
    args = parser.parse_args()

    with tf.Graph().as_default():
        image = tf.placeholder(tf.float32, [None, None, 3], name='image')
        with TowerContext('', is_training=False):
            features = image_preprocess(image, [123.675, 116.28, 103.53], [58.395, 57.12, 57.375],
                                        args.data_format)
            outputs = resnet_fpn_backbone(
                features, NUM_BLOCKS[args.depth], norm=args.norm, freeze_at=2, freeze_affine=False,
                tf_pad_mode=False, stride_1x1=False, data_format=args.data_format)
        feed = {image: np.random.RandomState(0).uniform(0, 255, args.size + [3]).astype(np.float32)}
        with tf.Session() as sess:
            sess.run(tf.global_variables_initializer())
            sess.run(outputs, feed)
            times = []
            for _ in range(args.runs):
                start = time.perf_counter()
                sess.run(outputs, feed)
                times.append(time.perf_counter() - start)
    print('R{} backbone {}x{} {} {}: {:.3f} s/image (median of {}, min {:.3f})'.format(
        args.depth, args.size[0], args.size[1], args.data_format, args.norm,
        float(np.median(times)), args.runs, min(times)))


if __name__ == '__main__':
    main()
