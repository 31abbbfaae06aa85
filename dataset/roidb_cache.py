"""An on-disk cache of the training roidbs of a COCO-format json: arrays plus offsets, memory-mapped.

Parsing a COCO-train-sized json (460 MB, 860k polygons) takes half a minute and ~3 GB per
process. The cache holds the same roidbs as a handful of flat arrays in one file; loading it
maps the file and makes each roidb's arrays views into the mapping, so the pages are read
once and shared by every process of the host that loads the same file (Horovod ranks,
evaluation), and they do not count as private memory.

Keyed by content: the file name holds a digest of the json's bytes, the image directory and
FORMAT_VERSION, so a changed json (or loader) never meets an old cache; it is made anew
beside it. Writers write a temporary file and rename it into place (atomic on POSIX), so
processes that build it at the same time never see a partial file.

File layout: MAGIC, an 8-byte little-endian header length, a JSON header (categories, the
drop summary, the arrays' dtype / shape / offset), then the arrays, each 64-byte aligned.

Shape shorthand: I images, N instances in all, G polygons in all, T points in all.
"""
import collections.abc
import hashlib
import json
import mmap
import os
import tempfile

import numpy as np

__all__ = ['FORMAT_VERSION', 'json_digest', 'cache_file', 'write_cache', 'read_cache', 'read_header',
           'PolygonLists']

FORMAT_VERSION = 1
MAGIC = b'ROIDBCACHE\n'
_ALIGN = 64


def json_digest(json_path, image_dir, chunk_size=1 << 24):
    """Hex digest identifying the roidbs of `json_path` read with images in `image_dir`."""
    digest = hashlib.sha256('{}\0{}\0'.format(FORMAT_VERSION, image_dir).encode())
    with open(json_path, 'rb') as f:
        for chunk in iter(lambda: f.read(chunk_size), b''):
            digest.update(chunk)
    return digest.hexdigest()


def cache_file(json_path, digest, cache_dir):
    """Path of the cache of `json_path`: in `cache_dir`, which, if relative, is taken from the
    json's directory ('.' is beside the json)."""
    directory = os.path.normpath(os.path.join(os.path.dirname(json_path), os.path.expanduser(cache_dir)))
    return os.path.join(directory, '{}.{}.roidbs'.format(os.path.basename(json_path), digest[:24]))


def _pack(roidbs):
    """The roidbs as flat arrays {name: ndarray} plus the header fields that are not arrays."""
    counts = np.array([len(r['class']) for r in roidbs], dtype=np.int64)
    arrays = {
        'file_names': np.frombuffer('\0'.join(r['file_name'] for r in roidbs).encode('utf-8'), dtype=np.uint8),
        'height': np.array([r['height'] for r in roidbs], dtype=np.int64),
        'width': np.array([r['width'] for r in roidbs], dtype=np.int64),
        'instance_offsets': np.concatenate([[0], np.cumsum(counts)]).astype(np.int64),
        'boxes': np.concatenate([r['boxes'] for r in roidbs] + [np.zeros((0, 4), np.float32)]).astype(np.float32),
        'class': np.concatenate([r['class'] for r in roidbs] + [np.zeros(0, np.int32)]).astype(np.int32),
        'is_crowd': np.concatenate([r['is_crowd'] for r in roidbs] + [np.zeros(0, np.int8)]).astype(np.int8),
    }
    header = {}
    image_ids = [r['image_id'] for r in roidbs]
    if all(type(i) is int for i in image_ids):
        arrays['image_id'] = np.array(image_ids, dtype=np.int64)
    else:   # ids of other types (str) stay exactly what the json had
        header['image_ids'] = image_ids
    has_masks = bool(roidbs) and 'segmentation' in roidbs[0]
    header['has_masks'] = has_masks
    if has_masks:
        instance_polygons = [polygons for r in roidbs for polygons in r['segmentation']]
        polygons = [p for ps in instance_polygons if ps is not None for p in ps]
        arrays['no_polygon'] = np.array([ps is None for ps in instance_polygons], dtype=np.int8)
        arrays['polygon_offsets'] = np.concatenate(
            [[0], np.cumsum([len(ps) if ps is not None else 0 for ps in instance_polygons])]).astype(np.int64)
        arrays['point_offsets'] = np.concatenate([[0], np.cumsum([len(p) for p in polygons])]).astype(np.int64)
        arrays['points'] = np.concatenate(polygons + [np.zeros((0, 2), np.float32)]).astype(np.float32)
    return arrays, header


def write_cache(path, roidbs, categories, summary):
    """Write `roidbs` (training roidbs of one json) with the json's `categories` and the loader's
    drop `summary` to `path`, through a temporary file renamed into place."""
    arrays, header = _pack(roidbs)
    header.update(version=FORMAT_VERSION, categories=categories, summary=summary, num_images=len(roidbs), arrays={})
    offset = 0
    for name, array in arrays.items():
        header['arrays'][name] = {'dtype': array.dtype.str, 'shape': list(array.shape), 'offset': offset}
        offset += -(-array.nbytes // _ALIGN) * _ALIGN
    header_bytes = json.dumps(header).encode('utf-8')
    start = -(-(len(MAGIC) + 8 + len(header_bytes)) // _ALIGN) * _ALIGN
    directory = os.path.dirname(path)
    os.makedirs(directory, exist_ok=True)
    fd, tmp_path = tempfile.mkstemp(dir=directory, prefix=os.path.basename(path) + '.tmp-')
    try:
        with os.fdopen(fd, 'wb') as f:
            f.write(MAGIC + len(header_bytes).to_bytes(8, 'little') + header_bytes)
            for name, array in arrays.items():
                f.seek(start + header['arrays'][name]['offset'])
                f.write(np.ascontiguousarray(array).tobytes())
            f.truncate(start + offset)
        os.chmod(tmp_path, 0o644)
        os.replace(tmp_path, path)
    except BaseException:
        if os.path.exists(tmp_path):
            os.remove(tmp_path)
        raise


def _open(path):
    with open(path, 'rb') as f:
        buffer = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    if buffer[:len(MAGIC)] != MAGIC:
        raise ValueError('{} is not a roidb cache file (remove it; it is made again).'.format(path))
    length = int.from_bytes(buffer[len(MAGIC):len(MAGIC) + 8], 'little')
    header_end = len(MAGIC) + 8 + length
    header = json.loads(buffer[len(MAGIC) + 8:header_end].decode('utf-8'))
    return buffer, header, -(-header_end // _ALIGN) * _ALIGN


class _PolygonStore:
    """The polygon arrays of a cache file (T points, G polygons, N instances)."""

    def __init__(self, points, point_offsets, polygon_offsets, no_polygon):
        self.points = points                     # float32 [T, 2]
        self.point_offsets = point_offsets       # int64 [G + 1]
        self.polygon_offsets = polygon_offsets   # int64 [N + 1]
        self.no_polygon = no_polygon             # int8 [N]: 1 for an RLE-only crowd region (None)

    def instance(self, i):
        if self.no_polygon[i]:
            return None
        bounds = self.point_offsets[self.polygon_offsets[i]:self.polygon_offsets[i + 1] + 1].tolist()
        return [self.points[a:b] for a, b in zip(bounds[:-1], bounds[1:])]


class PolygonLists(collections.abc.Sequence):
    """The 'segmentation' of one roidb read from the cache: a read-only sequence whose item i is
    what the json loader's list holds, instance i's polygons (float32 [P, 2], views into the
    mapped file) or None. Made on access, so that a million polygons cost no Python objects
    until an image is used; equal to a list with the same items, and pickled as that list."""

    __slots__ = ('_store', '_start', '_stop')

    def __init__(self, store, start, stop):
        self._store, self._start, self._stop = store, start, stop

    def __len__(self):
        return self._stop - self._start

    def __getitem__(self, index):
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError('instance {} of an image with {}'.format(index, len(self)))
        return self._store.instance(self._start + index)

    def __eq__(self, other):
        if not isinstance(other, (list, PolygonLists)) or len(other) != len(self):
            return False
        return all((a is None and b is None) or (a is not None and b is not None and len(a) == len(b) and
                                                all(np.array_equal(p, q) for p, q in zip(a, b)))
                   for a, b in zip(self, other))

    __hash__ = None

    def __reduce__(self):
        return list, (list(self),)

    def __repr__(self):
        return 'PolygonLists({})'.format(list(self))


def read_header(path):
    """The header of a cache file: categories, summary, num_images, ..."""
    buffer, header, _ = _open(path)
    buffer.close()
    return header


def read_cache(path):
    """(roidbs, header) from a cache file: roidbs equal to the ones written, their arrays
    read-only views into the memory-mapped file; 'segmentation' is a `PolygonLists`."""
    buffer, header, start = _open(path)
    arrays = {}
    for name, spec in header['arrays'].items():
        dtype = np.dtype(spec['dtype'])
        count = int(np.prod(spec['shape'], dtype=np.int64))
        arrays[name] = np.frombuffer(buffer, dtype=dtype, count=count,
                                     offset=start + spec['offset']).reshape(spec['shape'])
    num_images = header['num_images']
    file_names = arrays['file_names'].tobytes().decode('utf-8').split('\0') if num_images else []
    image_ids = arrays['image_id'].tolist() if 'image_id' in arrays else header['image_ids']
    heights, widths = arrays['height'].tolist(), arrays['width'].tolist()
    bounds = arrays['instance_offsets'].tolist()
    boxes, classes, crowds = arrays['boxes'], arrays['class'], arrays['is_crowd']
    roidbs = []
    for k in range(num_images):
        a, b = bounds[k], bounds[k + 1]
        roidbs.append({'file_name': file_names[k], 'image_id': image_ids[k], 'height': heights[k],
                       'width': widths[k], 'boxes': boxes[a:b], 'class': classes[a:b], 'is_crowd': crowds[a:b]})
    if header['has_masks']:
        store = _PolygonStore(arrays['points'], arrays['point_offsets'], arrays['polygon_offsets'],
                              arrays['no_polygon'])
        for k, roidb in enumerate(roidbs):
            roidb['segmentation'] = PolygonLists(store, bounds[k], bounds[k + 1])
    return roidbs, header
