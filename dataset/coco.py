"""Splits stored in COCO's json format: COCO itself and any dataset written the same way.

Classes are the json's categories sorted by id and numbered 1..K ('BG' is 0), so COCO's
80 categories (ids 1..90 with gaps) come out in the usual order. Results are written back
with the json's own category and image ids.

Shape shorthand: N instances in one image, P points in one polygon, K categories.
"""
import collections
import json
import os

import numpy as np

from utils import logs as logger
from utils.logs import progress

from dataset import roidb_cache
from dataset.coco_eval import clean_result, coco_from_dict, evaluate_coco
from dataset.dataset import DatasetRegistry, DatasetSplit

__all__ = ['COCOFormatSplit', 'COCODetection', 'register_coco', 'parse_explicit_name']

# COCO splits whose images live in a directory of another name.
_COCO_IMAGE_DIRS = {
    'valminusminival2014': 'val2014',
    'minival2014': 'val2014',
    'val2017_100': 'val2017',
}
COCO_SPLITS = ('train2017', 'val2017', 'train2014', 'val2014', 'minival2014', 'valminusminival2014',
               'val2017_100')


def _read_json(path):
    with open(path) as f:
        try:
            return json.load(f)
        except json.JSONDecodeError as err:
            raise ValueError('Annotation file {} is not valid JSON: {} (line {}, column {}). Fix or re-export '
                             'it.'.format(path, err.msg, err.lineno, err.colno)) from None


def sorted_categories(dataset, json_path):
    """The category dicts of a parsed COCO json sorted by id; class k (1..K) is item k - 1."""
    categories = sorted(dataset.get('categories', []), key=lambda c: c['id'])
    ids = [c['id'] for c in categories]
    if not ids:
        raise ValueError("{} has no 'categories'; a COCO-format json must list its categories "
                         "as {{'id': int, 'name': str}}.".format(json_path))
    if len(set(ids)) != len(ids):
        raise ValueError("{} has duplicate category ids: {}".format(json_path, ids))
    return categories


class _DropCounter(collections.Counter):
    _MESSAGES = {
        'empty_box': "boxes that are empty or outside their image",
        'tiny_area': "instances with area <= 1 px",
        'ignored': "instances marked 'ignore'",
        'bad_polygon': "polygons with fewer than 3 points",
        'no_polygon': "instances without a valid polygon",
        'unknown_image': "annotations of images not listed in 'images'",
    }

    def summary(self):
        parts = ['{} {}'.format(self[key], text) for key, text in self._MESSAGES.items() if self[key]]
        return '; dropped ' + ', '.join(parts) if parts else ''


def _checked_bbox(ann, where):
    """An annotation's [x, y, w, h] as 4 finite floats; ValueError saying what is wrong otherwise."""
    bbox = ann.get('bbox')
    if not isinstance(bbox, (list, tuple)) or len(bbox) != 4:
        raise ValueError('{} has bbox {!r}; a COCO bbox is 4 numbers [x, y, width, height].'.format(where, bbox))
    try:
        values = [float(v) for v in bbox]
    except (TypeError, ValueError):
        raise ValueError('{} has a non-numeric bbox {!r}.'.format(where, bbox)) from None
    if not np.all(np.isfinite(values)):
        raise ValueError('{} has a non-finite bbox {!r}; fix or remove the annotation.'.format(where, bbox))
    return values


_DIGESTS = {}   # (json path, image dir, size, mtime) -> digest: hashed once per process


def _digest(json_path, image_dir):
    stat = os.stat(json_path)
    key = (json_path, image_dir, stat.st_size, stat.st_mtime_ns)
    if key not in _DIGESTS:
        _DIGESTS[key] = roidb_cache.json_digest(json_path, image_dir)
    return _DIGESTS[key]


class COCOFormatSplit(DatasetSplit):
    """A split given by a COCO-format json and the directory its `file_name`s are relative to.

    Args:
        json_path: the annotation json (images, annotations, categories).
        image_dir: directory of the images.
        name: name used in log messages (defaults to the json's file name).
        prepare: optional zero-argument callable run before the json is first read, e.g. to
            create the data on demand.
        roidb_cache: '' or None to parse the json every time; else the directory of the
            on-disk roidb cache (dataset/roidb_cache.py), relative to the json's directory
            ('.' is beside the json). The training roidbs and the class names are then read
            from the cache, which is made on first use and whenever the json changes.

    Bad input, checked when roidbs are loaded: a missing json or image file raises
    FileNotFoundError; a json that does not parse, an image without a positive width/height,
    a category id missing from 'categories', a bbox that is not 4 finite numbers and a polygon
    with a non-finite coordinate raise ValueError naming the file, the annotation id and the
    image. Boxes that are empty after clipping to the image (or have area <= 1), polygons with
    < 3 points and, when the json has masks, non-crowd instances left without a polygon are
    dropped and counted in one log line. The json's width/height are checked against the
    decoded image where it is read (data.py): a difference is an error, since the boxes were
    clipped to the json's size.
    """

    def __init__(self, json_path, image_dir, name=None, prepare=None, roidb_cache=None):
        self.json_path = os.path.abspath(os.path.expanduser(json_path))
        self.image_dir = os.path.abspath(os.path.expanduser(image_dir))
        self.name = name or os.path.basename(self.json_path)
        self.roidb_cache = roidb_cache or None
        self._prepare = prepare
        self._categories = None
        self._drop_summary = ''

    def _check_json(self):
        if self._prepare is not None:
            self._prepare()
            self._prepare = None
        if not os.path.isfile(self.json_path):
            raise FileNotFoundError(
                "Annotation file {} of dataset '{}' does not exist. Expected a COCO-format layout: "
                "BASEDIR/annotations/instances_<split>.json with the images in BASEDIR/<split>/ "
                "(set DATA.BASEDIR to BASEDIR).".format(self.json_path, self.name))

    def _load_json(self):
        self._check_json()
        logger.info("Loading annotations of '{}' from {} ...".format(self.name, self.json_path))
        dataset = _read_json(self.json_path)
        self._categories = sorted_categories(dataset, self.json_path)
        return dataset

    def _load_categories(self):
        if not self.roidb_cache:
            self._load_json()
            return
        path = self._cache_file()
        try:
            self._categories = roidb_cache.read_header(path)['categories']
        except (OSError, ValueError, KeyError):
            # no cache yet (or a bad one): make it now, so that the json is parsed once, not
            # once for the class names and again for the roidbs
            self._cached_training_roidbs()

    def category_ids(self):
        """list[int]: the json's category ids; class k (1..K) has id `category_ids()[k - 1]`."""
        if self._categories is None:
            self._load_categories()
        return [c['id'] for c in self._categories]

    def class_names(self):
        """list[str]: ['BG'] followed by the category names in class order (1..K)."""
        if self._categories is None:
            self._load_categories()
        return ['BG'] + [c['name'] for c in self._categories]

    def training_roidbs(self):
        if self.roidb_cache:
            return self._cached_training_roidbs()
        return self._load_roidbs(add_gt=True)

    def _cache_file(self):
        self._check_json()
        return roidb_cache.cache_file(self.json_path, _digest(self.json_path, self.image_dir), self.roidb_cache)

    def _cached_training_roidbs(self):
        """The training roidbs from the cache file of this json, made first if there is none
        (or if it cannot be read)."""
        path = self._cache_file()
        if os.path.isfile(path):
            try:
                return self._read_cache(path)
            except (OSError, ValueError, KeyError) as err:
                logger.warn('Cannot read the roidb cache {} ({}); making it again.'.format(path, err))
        roidbs = self._load_roidbs(add_gt=True)
        try:
            roidb_cache.write_cache(path, roidbs, self._categories, self._drop_summary)
        except OSError as err:
            logger.warn("Cannot write the roidb cache {} ({}); continuing without it. Set DATA.ROIDB_CACHE "
                        "to a writable directory, or to '' to turn the cache off.".format(path, err))
            return roidbs
        logger.info("Roidbs of '{}' cached in {}.".format(self.name, path))
        del roidbs   # served from the mapped file like every later start
        return self._read_cache(path)

    def _read_cache(self, path):
        roidbs, header = roidb_cache.read_cache(path)
        self._categories = header['categories']
        self._check_files_exist(roidbs)
        logger.info("Loaded {} images and {} instances of '{}'{} (from the roidb cache {}).".format(
            len(roidbs), sum(len(r['class']) for r in roidbs), self.name, header['summary'], path))
        return roidbs

    def inference_roidbs(self):
        return self._load_roidbs(add_gt=False)

    def _load_roidbs(self, add_gt):
        dataset = self._load_json()
        images = sorted(dataset.get('images', []), key=lambda img: img['id'])
        roidbs = [self._image_entry(img) for img in images]
        self._check_files_exist(roidbs)
        if not add_gt:
            # The boxes are the ground truth of evaluation: bad values are errors here too.
            file_of_image = {roidb['image_id']: roidb['file_name'] for roidb in roidbs}
            for ann in dataset.get('annotations', []):
                _checked_bbox(ann, self._where(ann, ann.get('image_id'), file_of_image.get(ann.get('image_id'))))
            return roidbs

        known = {roidb['image_id'] for roidb in roidbs}
        drops = _DropCounter()
        annotations_by_image = collections.defaultdict(list)
        for ann in dataset.get('annotations', []):
            if ann['image_id'] in known:
                annotations_by_image[ann['image_id']].append(ann)
            else:
                drops['unknown_image'] += 1
        # Masks are loaded when the json has any polygon; box-only jsons give box-only roidbs.
        has_masks = any(isinstance(ann.get('segmentation'), list) and ann['segmentation']
                        for anns in annotations_by_image.values() for ann in anns)
        class_of_id = {category_id: k + 1 for k, category_id in enumerate(self.category_ids())}
        num_instances = 0
        for roidb in progress(roidbs, desc='Reading ' + self.name, disable=len(roidbs) < 1000):
            self._add_instances(roidb, annotations_by_image[roidb['image_id']], class_of_id, has_masks, drops)
            num_instances += len(roidb['class'])
        self._drop_summary = drops.summary()
        logger.info("Loaded {} images and {} instances of '{}'{}.".format(
            len(roidbs), num_instances, self.name, self._drop_summary))
        return roidbs

    def _image_entry(self, img):
        for key in ('id', 'file_name', 'height', 'width'):
            if key not in img:
                raise ValueError("An image in {} has no '{}': {!r}".format(self.json_path, key, img))
        sizes = (img['height'], img['width'])
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and v >= 1 and v == int(v)
                   for v in sizes):
            raise ValueError("Image {} ({}) in {} has height/width {!r}; they must be positive whole numbers of "
                             "pixels.".format(img['id'], img['file_name'], self.json_path, list(sizes)))
        return {'file_name': os.path.join(self.image_dir, img['file_name']), 'image_id': img['id'],
                'height': int(img['height']), 'width': int(img['width'])}

    def _where(self, ann, image_id, file_name):
        return "Annotation {} of image {} ({}) in {}".format(ann.get('id'), image_id, file_name, self.json_path)

    def _check_files_exist(self, roidbs):
        missing = [r['file_name'] for r in roidbs if not os.path.isfile(r['file_name'])]
        if missing:
            raise FileNotFoundError(
                "{} of the {} images listed in {} are missing, e.g. {}. The images of dataset '{}' must be "
                "in {}/.".format(len(missing), len(roidbs), self.json_path, missing[0], self.name, self.image_dir))

    def _add_instances(self, roidb, annotations, class_of_id, has_masks, drops):
        """Fill boxes / class / is_crowd (/ segmentation) of one image, dropping unusable instances."""
        height, width = roidb['height'], roidb['width']
        boxes, classes, crowds, segmentations = [], [], [], []
        for ann in annotations:
            if ann.get('ignore', 0) == 1:
                drops['ignored'] += 1
                continue
            if ann['category_id'] not in class_of_id:
                raise ValueError(
                    "Annotation {} of image {} ({}) has category_id {}, which is not among the categories "
                    "of {}: {}".format(ann.get('id'), roidb['image_id'], roidb['file_name'], ann['category_id'],
                                       self.json_path, sorted(class_of_id)))
            where = self._where(ann, roidb['image_id'], roidb['file_name'])
            x, y, w, h = _checked_bbox(ann, where)
            # [x, y, w, h] -> x1y1x2y2 with (0, 0) the top-left corner of the first pixel
            x1, x2 = min(max(x, 0.), width), min(max(x + w, 0.), width)
            y1, y2 = min(max(y, 0.), height), min(max(y + h, 0.), height)
            if x2 <= x1 or y2 <= y1:
                drops['empty_box'] += 1
                continue
            if 'area' in ann and ann['area'] <= 1:
                drops['tiny_area'] += 1
                continue
            is_crowd = int(ann.get('iscrowd', 0))
            if has_masks:
                polygons = self._polygons(ann, drops, where)
                if polygons is None and not is_crowd:
                    drops['no_polygon'] += 1
                    continue
                segmentations.append(polygons)
            boxes.append([x1, y1, x2, y2])
            classes.append(class_of_id[ann['category_id']])
            crowds.append(is_crowd)
        roidb['boxes'] = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
        roidb['class'] = np.asarray(classes, dtype=np.int32)
        roidb['is_crowd'] = np.asarray(crowds, dtype=np.int8)
        if has_masks:
            roidb['segmentation'] = segmentations

    @staticmethod
    def _polygons(ann, drops, where):
        """The valid polygons of an annotation as float32 [P, 2] arrays, or None if it has none
        (including RLE segmentations, which only crowd regions may use)."""
        segmentation = ann.get('segmentation')
        if not isinstance(segmentation, list):
            return None
        polygons = []
        for flat in segmentation:
            if len(flat) < 6 or len(flat) % 2 != 0:
                drops['bad_polygon'] += 1
                continue
            try:
                polygon = np.asarray(flat, dtype=np.float32).reshape(-1, 2)
            except (TypeError, ValueError):
                polygon = None
            if polygon is None or not np.all(np.isfinite(polygon)):
                raise ValueError('{} has a polygon with a non-numeric or non-finite coordinate: {!r}. Fix or '
                                 'remove the annotation.'.format(where, flat))
            polygons.append(polygon)
        return polygons or None

    def eval_inference_results(self, results, output=None):
        """See DatasetSplit. Category ids are mapped back to the json's ids before evaluation."""
        category_ids = self.category_ids()
        mapped = []
        for result in results:
            result = clean_result(result)
            k = result['category_id']
            if not 1 <= k <= len(category_ids):
                raise ValueError("Result category_id {} is out of range: '{}' has classes 1..{}.".format(
                    k, self.name, len(category_ids)))
            result['category_id'] = category_ids[k - 1]
            mapped.append(result)
        if output is not None:
            with open(output, 'w') as f:
                json.dump(mapped, f)
            logger.info("{} results of '{}' written to {}.".format(len(mapped), self.name, output))
        return evaluate_coco(coco_from_dict(self._load_json()), mapped, output)


class COCODetection(COCOFormatSplit):
    """A split in COCO's directory layout.

        basedir/annotations/instances_{split}.json
        basedir/{split}/*.jpg   (val2014 for minival2014 / valminusminival2014)
    """

    def __init__(self, basedir, split, roidb_cache=None):
        basedir = os.path.expanduser(basedir)
        super().__init__(os.path.join(basedir, 'annotations', 'instances_{}.json'.format(split)),
                         os.path.join(basedir, _COCO_IMAGE_DIRS.get(split, split)), name='coco_' + split,
                         roidb_cache=roidb_cache)


# The explicit form of a split name: a json and an image directory anywhere.
EXPLICIT_PREFIX = 'coco:'
EXPLICIT_FORM = 'coco:<json>:<image_dir>'


def _register_split(name, make_split):
    DatasetRegistry.register(name, make_split)
    DatasetRegistry.register_lazy_metadata(name, 'class_names', lambda: make_split().class_names())


def parse_explicit_name(name, basedir):
    """(json path, image dir) of a name of the form 'coco:<json>:<image_dir>'; relative paths
    are taken from `basedir`. ValueError if the name does not have that form."""
    parts = name[len(EXPLICIT_PREFIX):].split(':') if name.startswith(EXPLICIT_PREFIX) else []
    if len(parts) != 2 or not all(parts):
        raise ValueError("Dataset name {!r} is not of the form '{}' (a COCO-format json and the directory "
                         "its file_names are relative to, separated by ':'; the paths themselves may not "
                         "contain ':'), e.g. 'coco:annotations/train.json:train_images'.".format(
                             name, EXPLICIT_FORM))
    return tuple(os.path.join(basedir, os.path.expanduser(part)) for part in parts)


def register_coco(basedir, roidb_cache=''):
    """Make COCO-format splits resolvable by name under `basedir`, without reading any file:

      coco_<split>              basedir/annotations/instances_<split>.json, images in
                                basedir/<split>/ (any split name; for COCO's own splits
                                minival2014 etc. the images are in the directory COCO uses);
      coco:<json>:<image_dir>   any json and image directory; relative paths are taken
                                from `basedir`.

    COCO's own splits (coco_train2017, coco_val2017, ...) are also listed by name. The
    'class_names' metadata of a split is read from its json when first asked for.
    `roidb_cache`: see COCOFormatSplit (DATA.ROIDB_CACHE).
    """
    basedir = os.path.expanduser(basedir)
    for split in COCO_SPLITS:
        _register_split('coco_' + split, lambda split=split: COCODetection(basedir, split, roidb_cache))

    def resolve_split(name):
        split = name[len('coco_'):]
        _register_split(name, lambda: COCODetection(basedir, split, roidb_cache))

    def resolve_explicit(name):
        json_path, image_dir = parse_explicit_name(name, basedir)
        _register_split(name, lambda: COCOFormatSplit(json_path, image_dir, name=name, roidb_cache=roidb_cache))

    DatasetRegistry.register_prefix('coco_', resolve_split, 'coco_<split>')
    DatasetRegistry.register_prefix(EXPLICIT_PREFIX, resolve_explicit, EXPLICIT_FORM)
