"""Reading image files as uint8 BGR arrays, and the errors that name what is wrong with one.

No TensorFlow: dataset code and tools may use it freely.
"""
import os

import cv2
import numpy as np

__all__ = ['UnreadableImageError', 'TruncatedImageError', 'ImageSizeMismatchError', 'jpeg_is_complete',
           'exif_orientation', 'read_image_bgr', 'recorded_size']


class UnreadableImageError(ValueError):
    """An image file exists but OpenCV cannot decode it (corrupt, truncated, not an image)."""


class TruncatedImageError(UnreadableImageError):
    """A JPEG file that ends before its end-of-image marker: libjpeg would decode it with the
    missing part filled in gray, printing only "Premature end of JPEG file"."""


class ImageSizeMismatchError(ValueError):
    """The decoded image does not have the size its annotations were made for."""


_JPEG_STANDALONE = frozenset([0x01, 0xD8] + list(range(0xD0, 0xD8)))   # TEM, SOI, RST0-7: no length


def jpeg_is_complete(data):
    """True if JPEG bytes `data` (starting with SOI) reach their end-of-image marker FF D9.

    Walks the marker segments, skipping each one's payload by its length field (an EXIF
    thumbnail inside APP1 has its own FF D9), and searches the entropy-coded data after each
    start-of-scan for the next marker; there FF is followed by 00 (a stuffed data byte) unless
    it starts a marker, so FF D9 cannot occur otherwise. Bytes after the end-of-image marker
    (camera trailers) are ignored.
    """
    pos, size = 2, len(data)
    while True:
        pos = data.find(b'\xff', pos)
        if pos < 0 or pos + 1 >= size:
            return False
        code = data[pos + 1]
        if code in (0x00, 0xFF):   # a stuffed data byte, or fill before a marker
            pos += 1 + (code == 0x00)
            continue
        pos += 2
        if code == 0xD9:
            return True
        if code in _JPEG_STANDALONE:
            continue
        if pos + 2 > size:
            return False
        pos += (data[pos] << 8) | data[pos + 1]   # the length counts its own 2 bytes
        if pos > size:
            return False


def _exif_orientation_of_tiff(tiff):
    """The Orientation tag (0x0112) of IFD0 of TIFF-structured bytes (an EXIF block), or None."""
    if len(tiff) < 8 or tiff[:2] not in (b'II', b'MM'):
        return None
    order = 'little' if tiff[:2] == b'II' else 'big'
    ifd = int.from_bytes(tiff[4:8], order)
    if ifd + 2 > len(tiff):
        return None
    for k in range(int.from_bytes(tiff[ifd:ifd + 2], order)):
        entry = tiff[ifd + 2 + 12 * k: ifd + 14 + 12 * k]
        if len(entry) < 12:
            return None
        if int.from_bytes(entry[:2], order) == 0x0112:   # a SHORT, stored in the first 2 value bytes
            return int.from_bytes(entry[8:10], order)
    return None


def exif_orientation(path):
    """The EXIF Orientation tag of JPEG file `path` (1 = stored as shown; 2-8 = mirrored and/or
    rotated), or None when it has none (or is no JPEG). Reads only the file's header segments."""
    with open(path, 'rb') as f:
        if f.read(2) != b'\xff\xd8':
            return None
        while True:
            marker = f.read(4)
            if len(marker) < 4 or marker[0] != 0xFF or marker[1] in (0xD9, 0xDA):   # end, or image data
                return None
            length = int.from_bytes(marker[2:4], 'big') - 2
            if marker[1] == 0xE1:   # APP1
                payload = f.read(length)
                if payload[:6] == b'Exif\0\0':
                    return _exif_orientation_of_tiff(payload[6:])
            else:
                f.seek(length, os.SEEK_CUR)


def read_image_bgr(path, expected_hw=None, apply_exif_orientation=True):
    """Read an image file as uint8 [H, W, 3] BGR.

    Grayscale images are repeated to 3 channels, the alpha channel of RGBA
    images is dropped and 16-bit images are scaled to 8 bits (OpenCV's
    IMREAD_COLOR, which also applies the EXIF orientation, as tensorpack does).

    Args:
        path: the image file.
        expected_hw: optional (height, width) the image must have, e.g. the size recorded in
            the annotations; None skips the check.
        apply_exif_orientation: True (DATA.EXIF_ORIENTATION='apply'): a JPEG's EXIF orientation
            rotates/mirrors the pixels, as OpenCV, detectron2 and image viewers do; False
            ('ignore'): the pixels as stored.
    Raises:
        FileNotFoundError: `path` does not exist.
        UnreadableImageError: the file cannot be decoded as an image;
            TruncatedImageError (a subclass) if it is a JPEG cut short.
        ImageSizeMismatchError: the decoded size differs from `expected_hw`.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError("Image file not found: {}".format(path))
    data = np.fromfile(path, dtype=np.uint8)
    if data[:3].tobytes() == b'\xff\xd8\xff' and not jpeg_is_complete(data.tobytes()):
        raise TruncatedImageError("Image file {} is truncated: its JPEG data ends before the end-of-image "
                                  "marker ({} bytes); copy or download it again".format(path, data.size))
    flags = cv2.IMREAD_COLOR if apply_exif_orientation else cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION
    image = cv2.imdecode(data, flags) if data.size else None
    if image is None or image.size == 0:
        raise UnreadableImageError("Cannot decode image file {} (corrupt or not an image)".format(path))
    assert image.ndim == 3 and image.shape[2] == 3 and image.dtype == np.uint8, (path, image.shape, image.dtype)
    if expected_hw is not None and tuple(image.shape[:2]) != tuple(expected_hw):
        height, width = expected_hw
        hint = (' (width and height swapped: the file probably has an EXIF orientation, which '
                "DATA.EXIF_ORIENTATION='apply' applies; 'ignore' reads the pixels as stored)"
                if tuple(image.shape[:2]) == (width, height) else '')
        raise ImageSizeMismatchError(
            "Image file {} is {}x{} (width x height) but its annotations say {}x{}{}; their boxes and masks "
            "would not fit the image. Fix the width/height (and the coordinates) in the annotations, or the "
            "image.".format(path, image.shape[1], image.shape[0], width, height, hint))
    return image


def recorded_size(roidb):
    """(height, width) a roidb records for its image, or None if it records none."""
    if roidb.get('height') is None or roidb.get('width') is None:
        return None
    return int(roidb['height']), int(roidb['width'])
