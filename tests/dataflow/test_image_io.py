"""Reading image files: colour conversions, and errors naming missing, corrupt, truncated or mis-sized ones."""
import cv2
import numpy as np
import pytest

from dataflow import image_io


def test_read_image_bgr_color_gray_rgba(tmp_path):
    bgr = np.zeros((4, 5, 3), np.uint8)
    bgr[..., 0], bgr[..., 1], bgr[..., 2] = 10, 20, 30
    cv2.imwrite(str(tmp_path / 'color.png'), bgr)
    np.testing.assert_array_equal(image_io.read_image_bgr(str(tmp_path / 'color.png')), bgr)

    gray = np.arange(20, dtype=np.uint8).reshape((4, 5)) * 10
    cv2.imwrite(str(tmp_path / 'gray.png'), gray)
    image = image_io.read_image_bgr(str(tmp_path / 'gray.png'))
    assert image.shape == (4, 5, 3) and image.dtype == np.uint8
    for channel in range(3):
        np.testing.assert_array_equal(image[..., channel], gray)

    bgra = np.concatenate([bgr, np.full((4, 5, 1), 128, np.uint8)], axis=-1)   # half-transparent
    cv2.imwrite(str(tmp_path / 'rgba.png'), bgra)
    np.testing.assert_array_equal(image_io.read_image_bgr(str(tmp_path / 'rgba.png')), bgr)


def test_read_image_errors_name_the_file(tmp_path):
    corrupt = tmp_path / 'corrupt.jpg'
    corrupt.write_bytes(b'this is not a jpeg')
    with pytest.raises(image_io.UnreadableImageError, match='corrupt.jpg'):
        image_io.read_image_bgr(str(corrupt))
    with pytest.raises(FileNotFoundError, match='missing.jpg'):
        image_io.read_image_bgr(str(tmp_path / 'missing.jpg'))


def _jpeg_bytes(progressive=False):
    image = np.random.RandomState(0).randint(0, 256, (48, 64, 3)).astype(np.uint8)   # mostly scan data
    flags = [cv2.IMWRITE_JPEG_PROGRESSIVE, 1] if progressive else []
    return cv2.imencode('.jpg', image, flags)[1].tobytes()


@pytest.mark.parametrize('progressive', [False, True])
def test_truncated_jpeg_is_an_error_naming_the_file(tmp_path, progressive):
    data = _jpeg_bytes(progressive)
    complete = tmp_path / 'complete.jpg'
    complete.write_bytes(data + b'\x00\x00 camera trailer')   # bytes after the end marker are fine
    assert image_io.read_image_bgr(str(complete)).shape == (48, 64, 3)
    for cut in (len(data) // 2, len(data) - 2, len(data) - 1):
        truncated = tmp_path / 'cut{}.jpg'.format(cut)
        truncated.write_bytes(data[:cut])
        assert cv2.imread(str(truncated)) is not None   # what OpenCV alone does: a gray-filled image
        with pytest.raises(image_io.TruncatedImageError, match='cut{}.jpg is truncated'.format(cut)):
            image_io.read_image_bgr(str(truncated))


def test_an_end_marker_inside_a_segment_does_not_hide_truncation(tmp_path):
    # An APP15 segment whose payload holds FF D9, as an EXIF thumbnail does, then a cut scan.
    data = _jpeg_bytes()
    payload = b'thumb\xff\xd9'
    app15 = b'\xff\xef' + (len(payload) + 2).to_bytes(2, 'big') + payload
    with_segment = data[:2] + app15 + data[2:]
    assert image_io.jpeg_is_complete(with_segment)
    assert not image_io.jpeg_is_complete(with_segment[:len(with_segment) // 2])
    path = tmp_path / 'thumb.jpg'
    path.write_bytes(with_segment[:-10])
    with pytest.raises(image_io.TruncatedImageError, match='thumb.jpg'):
        image_io.read_image_bgr(str(path))


def test_image_size_must_match_the_annotations(tmp_path):
    path = tmp_path / 'image.png'
    cv2.imwrite(str(path), np.zeros((4, 6, 3), np.uint8))
    assert image_io.read_image_bgr(str(path), expected_hw=(4, 6)).shape == (4, 6, 3)
    with pytest.raises(image_io.ImageSizeMismatchError, match=r'image.png is 6x4 .* annotations say 5x3;'):
        image_io.read_image_bgr(str(path), expected_hw=(3, 5))
    with pytest.raises(image_io.ImageSizeMismatchError, match='swapped'):
        image_io.read_image_bgr(str(path), expected_hw=(6, 4))


def write_jpeg_with_orientation(path, image, orientation):
    """`image` as a JPEG whose EXIF block (APP1, little-endian TIFF) holds only the Orientation tag."""
    ok, encoded = cv2.imencode('.jpg', image, [cv2.IMWRITE_JPEG_QUALITY, 100])
    assert ok
    tiff = (b'II*\x00' + (8).to_bytes(4, 'little') + (1).to_bytes(2, 'little') +
            (0x0112).to_bytes(2, 'little') + (3).to_bytes(2, 'little') + (1).to_bytes(4, 'little') +
            orientation.to_bytes(2, 'little') + b'\x00\x00' + (0).to_bytes(4, 'little'))
    payload = b'Exif\x00\x00' + tiff
    app1 = b'\xff\xe1' + (len(payload) + 2).to_bytes(2, 'big') + payload
    data = encoded.tobytes()
    with open(path, 'wb') as f:
        f.write(data[:2] + app1 + data[2:])


def test_exif_orientation_is_applied_or_ignored_as_asked(tmp_path):
    # 8 high, 16 wide: the left half dark, the right half bright. Orientation 6 says "turn 90 degrees
    # clockwise to show": shown 16 high and 8 wide, the bright half at the bottom.
    image = np.zeros((8, 16, 3), np.uint8)
    image[:, 8:] = 255
    path = str(tmp_path / 'phone.jpg')
    write_jpeg_with_orientation(path, image, 6)
    assert image_io.exif_orientation(path) == 6
    shown = image_io.read_image_bgr(path)   # DATA.EXIF_ORIENTATION='apply', the default: as before
    assert shown.shape == (16, 8, 3) and shown[12].mean() > 200 and shown[3].mean() < 50
    stored = image_io.read_image_bgr(path, apply_exif_orientation=False)
    assert stored.shape == (8, 16, 3) and stored[:, 12].mean() > 200
    with pytest.raises(image_io.ImageSizeMismatchError, match="DATA.EXIF_ORIENTATION='apply' applies"):
        image_io.read_image_bgr(path, expected_hw=(8, 16))
    plain = str(tmp_path / 'plain.jpg')
    cv2.imwrite(plain, image)
    assert image_io.exif_orientation(plain) is None and image_io.exif_orientation(str(tmp_path / 'phone.jpg')) == 6
    write_jpeg_with_orientation(plain, image, 1)
    assert image_io.exif_orientation(plain) == 1
