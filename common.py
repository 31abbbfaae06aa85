"""Image reading, resizing, the small geometric helpers and the dataflow plumbing of data.py.

Shape shorthand: N boxes, P polygon points, H x W image.
Box model: continuous x1y1x2y2 floats, pixel i covers [i, i + 1) (see utils/np_box_ops.py).
"""
import multiprocessing
import os
import signal
import threading

import cv2
import numpy as np
import zmq

import utils.tf_compat  # noqa: F401  (configures TensorFlow before tensorpack imports it)
from tensorpack.dataflow import DataFromList, DataFlowTerminated, MultiProcessMapDataZMQ, imgaug
from tensorpack.utils.serialize import dumps_once, loads_once

from utils.workers import describe_exitcode, die_with_parent

__all__ = ['UnreadableImageError', 'TruncatedImageError', 'ImageSizeMismatchError', 'jpeg_is_complete',
           'read_image_bgr', 'CustomResize', 'box_to_point4', 'point4_to_box',
           'polygons_to_mask', 'filter_boxes_inside_shape', 'SeededDataFromList', 'WORKER_FAILURE_KEY',
           'SpawnMultiProcessMapData']


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


def read_image_bgr(path, expected_hw=None):
    """Read an image file as uint8 [H, W, 3] BGR.

    Grayscale images are repeated to 3 channels, the alpha channel of RGBA
    images is dropped and 16-bit images are scaled to 8 bits (OpenCV's
    IMREAD_COLOR, which also applies the EXIF orientation, as tensorpack does).

    Args:
        path: the image file.
        expected_hw: optional (height, width) the image must have, e.g. the size recorded in
            the annotations; None skips the check.
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
    image = cv2.imdecode(data, cv2.IMREAD_COLOR) if data.size else None
    if image is None or image.size == 0:
        raise UnreadableImageError("Cannot decode image file {} (corrupt or not an image)".format(path))
    assert image.ndim == 3 and image.shape[2] == 3 and image.dtype == np.uint8, (path, image.shape, image.dtype)
    if expected_hw is not None and tuple(image.shape[:2]) != tuple(expected_hw):
        height, width = expected_hw
        hint = (' (width and height swapped: the file probably has an EXIF orientation, which OpenCV applies)'
                if tuple(image.shape[:2]) == (width, height) else '')
        raise ImageSizeMismatchError(
            "Image file {} is {}x{} (width x height) but its annotations say {}x{}{}; their boxes and masks "
            "would not fit the image. Fix the width/height (and the coordinates) in the annotations, or the "
            "image.".format(path, image.shape[1], image.shape[0], width, height, hint))
    return image


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


def box_to_point4(boxes):
    """The 4 corners of each box: float [N, 4] x1y1x2y2 -> [4N, 2] (x, y).

    Corners of box n are rows 4n..4n+3: (x1, y1), (x2, y2), (x1, y2), (x2, y1).
    """
    boxes = np.asarray(boxes)
    return boxes[:, [0, 1, 2, 3, 0, 3, 2, 1]].reshape((-1, 2))


def point4_to_box(points):
    """Inverse of `box_to_point4` for any point transform: [4N, 2] -> the enclosing boxes [N, 4]."""
    corners = np.asarray(points).reshape((-1, 4, 2))
    return np.concatenate([corners.min(axis=1), corners.max(axis=1)], axis=1)


def polygons_to_mask(polys, height, width):
    """Rasterize the union of polygons into a binary mask.

    Args:
        polys: list of float [P, 2] (x, y) arrays, P >= 3, pixel coordinates.
        height, width: int, mask size.
    Returns:
        uint8 [height, width], values in {0, 1}.
    """
    import pycocotools.mask as cocomask  # imported late: only the mask dataflow needs it

    if len(polys) == 0:
        raise ValueError("polygons_to_mask needs at least one polygon")
    flat = []
    for poly in polys:
        poly = np.asarray(poly, dtype=np.float64).reshape((-1, 2))
        if len(poly) < 3:
            # pycocotools would read a 2-point (4-number) list as a bbox
            raise ValueError("A polygon needs at least 3 points, got {}".format(len(poly)))
        flat.append(poly.ravel().tolist())
    rles = cocomask.frPyObjects(flat, height, width)
    return cocomask.decode(cocomask.merge(rles)).astype(np.uint8)


def filter_boxes_inside_shape(boxes, shape_hw):
    """Boxes that lie entirely inside the image [0, w] x [0, h].

    Args:
        boxes: float [N, 4] x1y1x2y2.
        shape_hw: (h, w).
    Returns:
        (indices int [K], boxes[indices] [K, 4]).
    """
    h, w = shape_hw
    inside = (boxes[:, 0] >= 0) & (boxes[:, 1] >= 0) & (boxes[:, 2] <= w) & (boxes[:, 3] <= h)
    indices = np.where(inside)[0]
    return indices, boxes[indices]


class SeededDataFromList(DataFromList):
    """`DataFromList` whose shuffling order is reproducible from `seed` (None: a random seed)."""

    def __init__(self, lst, shuffle=True, seed=None):
        super().__init__(lst, shuffle=shuffle)
        self._seed = seed

    def reset_state(self):
        super().reset_state()
        if self._seed is not None:
            self.rng = np.random.RandomState(self._seed)


# A map function running in a worker returns {WORKER_FAILURE_KEY: traceback text} instead of raising.
WORKER_FAILURE_KEY = '__data_worker_failure__'


class SpawnMultiProcessMapData(MultiProcessMapDataZMQ):
    """tensorpack's MultiProcessMapData whose workers are started with 'spawn', never 'fork'.

    Spawned workers start from a fresh interpreter: `map_func` must be picklable and carry
    everything it needs. If it has `for_worker(index)`, worker `index` runs that copy instead
    (e.g. to get its own random stream).

    Failures surface here, in the process that iterates, as RuntimeError: a datapoint
    {WORKER_FAILURE_KEY: text} coming back from a worker (where tensorpack would leave the
    parent waiting forever for a worker that died of an exception), and a worker process that
    is gone (killed, out of memory), noticed within `poll_seconds` while waiting for data, where
    tensorpack would go on with fewer workers or, with none left, wait forever. `worker_failure()`
    lets others ask at any time.

    Workers die with this process, also when it is killed with SIGKILL (utils/workers.py), and
    ignore SIGTERM and SIGINT: a scheduler's SIGTERM to the whole process group must leave them
    to the trainer, which saves a checkpoint first. `close()` kills them.
    """

    poll_seconds = 1.0   # how often a waiting parent checks that its workers are alive

    def _create_worker(self, id, pipename, hwm):
        map_func = self.map_func
        if hasattr(map_func, 'for_worker'):
            map_func = map_func.for_worker(int(id))
        return _SpawnedMapWorker(id, map_func, pipename, hwm, parent_pid=os.getpid())

    def reset_state(self):
        # Set before the workers start: reset_state() already sends the first datapoints.
        self._closing = False
        self._socket_lock = threading.Lock()   # the socket is used by one thread at a time
        super().reset_state()

    def _send(self, dp):
        with self._socket_lock:
            self._wait_for(zmq.POLLOUT)
            super()._send(dp)

    def _recv(self):
        with self._socket_lock:
            self._wait_for(zmq.POLLIN)
            return super()._recv()

    def _wait_for(self, event):
        """Block until the socket is ready for `event`, checking the workers meanwhile."""
        while True:
            self._check_workers()
            if self.socket.poll(int(self.poll_seconds * 1000), event):
                return

    def _check_workers(self):
        if self._closing:
            raise DataFlowTerminated()
        failure = self.worker_failure()
        if failure is not None:
            raise failure

    def worker_failure(self):
        """A RuntimeError naming the first worker process that is gone, or None while all run.

        Cheap (one non-blocking wait per worker): a trainer may ask after every step, which
        catches a dead worker even while the input queue is full and nobody iterates.
        """
        if self._closing:
            return None
        for index, proc in enumerate(self._procs):
            if proc.exitcode is not None:
                return RuntimeError(
                    "Data worker {} of {} (pid {}) died: {}. Training stops rather than go on with fewer "
                    "workers. A kill by SIGKILL without anyone sending it is often the out-of-memory killer "
                    "(see `dmesg`): lower DATA.NUM_WORKERS.".format(
                        index, len(self._procs), proc.pid, describe_exitcode(proc.exitcode)))
        return None

    def __iter__(self):
        for datapoint in super().__iter__():
            if isinstance(datapoint, dict) and WORKER_FAILURE_KEY in datapoint:
                raise RuntimeError("A data worker failed:\n" + datapoint[WORKER_FAILURE_KEY])
            yield datapoint

    def close(self, timeout=5.):
        """Kill the workers and close the socket (also done when this object is collected, or at exit).

        Safe while another thread iterates: that thread gets DataFlowTerminated.
        """
        if not getattr(self, '_reset_done', False) or self._closing:
            return
        self._closing = True
        started = [proc for proc in self._procs if proc.pid is not None]   # reset_state may have failed
        for proc in started:
            if proc.exitcode is None:
                proc.kill()
        for proc in started:
            proc.join(timeout)
        # An iterating thread lets go of the socket within poll_seconds once _closing is set.
        if hasattr(self, 'socket') and self._socket_lock.acquire(timeout=timeout):
            try:
                self.socket.close(linger=0)
                self.context.term()
            finally:
                self._socket_lock.release()

    def __del__(self):
        try:
            self.close()
        except Exception:   # noqa: BLE001 - nothing to do about it at collection or exit
            pass


class _SpawnedMapWorker(MultiProcessMapDataZMQ._Worker):
    """tensorpack's map worker process, started with the 'spawn' method whatever the default is."""

    _start_method = 'spawn'

    def __init__(self, identity, map_func, pipename, hwm, parent_pid):
        super().__init__(identity, map_func, pipename, hwm)
        self.parent_pid = parent_pid

    @staticmethod
    def _Popen(process_obj):
        return multiprocessing.get_context('spawn').Process._Popen(process_obj)

    @staticmethod
    def _after_fork():
        pass

    def run(self):
        # tensorpack's loop, with our parent-death handling instead of its python-prctl one
        die_with_parent(self.parent_pid)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        context = zmq.Context()
        socket = context.socket(zmq.REP)
        socket.setsockopt(zmq.IDENTITY, self.identity)
        socket.set_hwm(self.hwm)
        socket.connect(self.pipename)
        while True:
            request = loads_once(socket.recv(copy=False))
            socket.send(dumps_once(self.map_func(request)), copy=False)
