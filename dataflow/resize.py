"""The short-edge resize of training (sampled edge, with the boxes) and inference (fixed edge)."""
import cv2
import numpy as np

import utils.tf_compat  # noqa: F401  (configures TensorFlow before tensorpack imports it)
from tensorpack.dataflow import imgaug

__all__ = ['resized_shape', 'CustomResize']


def resized_shape(height, width, short_edge, max_size):
    """(new_h, new_w) with the short side `short_edge`, unless the long side would exceed `max_size`.

    Sizes are rounded half-up to ints, as in tensorpack's example.
    """
    scale = short_edge * 1.0 / min(height, width)
    if height < width:
        new_h, new_w = short_edge, scale * width
    else:
        new_h, new_w = scale * height, short_edge
    if max(new_h, new_w) > max_size:
        scale = max_size * 1.0 / max(new_h, new_w)
        new_h, new_w = new_h * scale, new_w * scale
    return int(new_h + 0.5), int(new_w + 0.5)


class CustomResize(imgaug.ImageAugmentor):
    """Resize so the short edge is `short_edge_length` (or sampled from it), capped by `max_size`.

    Box and polygon coordinates are scaled with the image by the returned
    transform's `apply_coords` (continuous coordinates scale exactly by
    new_size / size, which matches OpenCV's pixel-centre-aligned resize).
    """

    def __init__(self, short_edge_length, max_size, interp=cv2.INTER_LINEAR):
        """
        Args:
            short_edge_length: int, or [min, max] ints: the short edge is drawn
                uniformly from the closed interval.
            max_size: int, the longest edge is never larger than this.
        """
        super().__init__()
        if isinstance(short_edge_length, (int, np.integer)):
            short_edge_length = (int(short_edge_length), int(short_edge_length))
        short_edge_length = tuple(int(x) for x in short_edge_length)
        if len(short_edge_length) != 2 or not 0 < short_edge_length[0] <= short_edge_length[1]:
            raise ValueError("short_edge_length must be a positive int or an increasing [min, max] pair, "
                             "got {}".format(short_edge_length))
        self._init(locals())

    def get_transform(self, img):
        height, width = img.shape[:2]
        size = self.rng.randint(self.short_edge_length[0], self.short_edge_length[1] + 1)
        new_h, new_w = resized_shape(height, width, size, self.max_size)
        return imgaug.ResizeTransform(height, width, new_h, new_w, self.interp)
