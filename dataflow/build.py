"""The training and evaluation DataFlows, and the one step that reads their settings from a config.

`TrainDataSettings.from_config(cfg)` is the only place of the dataflow that reads config keys
(after `finalize_configs`); everything else takes the frozen record or plain values.
"""
import collections
import itertools

import numpy as np
from tabulate import tabulate

import utils.tf_compat  # noqa: F401  (configures TensorFlow before tensorpack imports it)
from tensorpack.dataflow import DataFromList, MapData
from tensorpack.utils import logger

from dataflow.anchor_targets import AnchorLabelParams
from dataflow.batching import BatchingParams, add_batching
from dataflow.image_io import exif_orientation, read_image_bgr, recorded_size
from dataflow.mapper import MapperParams, TrainingMapper, derive_seed
from utils import tensor_names
from utils.workers import SpawnMultiProcessMapData

__all__ = ['TrainDataSettings', 'SeededDataFromList', 'class_histogram_table', 'report_exif_orientations',
           'training_mapper', 'get_train_dataflow', 'image_to_float32', 'get_eval_dataflow']


class TrainDataSettings(collections.namedtuple('TrainDataSettings', [
        'splits',              # DATA.TRAIN: names of the registered splits to concatenate
        'class_names',         # DATA.CLASS_NAMES, 'BG' first
        'filter_empty',        # DATA.FILTER_EMPTY_ANNOTATIONS
        'seed',                # DATA.SEED: int, or None for non-reproducible streams
        'num_workers',         # DATA.NUM_WORKERS: 0 maps in this process
        'buffer_per_worker',   # datapoints buffered per worker process
        'mapper',              # MapperParams of the per-image work
        'batching',            # BatchingParams of TRAIN.BATCH_SIZE_PER_GPU > 1, or None (one image per tower)
], defaults=(None,))):
    """Everything the training dataflow reads, as one frozen record."""

    __slots__ = ()

    @classmethod
    def from_config(cls, cfg):
        """The settings of a finalized config `cfg` (its derived values included)."""
        return cls(
            splits=tuple(cfg.derived.train_splits), class_names=list(cfg.DATA.CLASS_NAMES),
            filter_empty=cfg.DATA.FILTER_EMPTY_ANNOTATIONS, seed=cfg.DATA.SEED, num_workers=cfg.DATA.NUM_WORKERS,
            # Horovod runs one dataflow per rank, so each needs a smaller buffer (as in tensorpack).
            buffer_per_worker=10 if cfg.TRAINER == 'horovod' else 20,
            mapper=MapperParams(
                mode_fpn=cfg.MODE_FPN, mode_mask=cfg.MODE_MASK,
                short_edge_size=cfg.derived.train_short_edge_size, max_size=cfg.derived.max_size,
                absolute_coord=cfg.DATA.ABSOLUTE_COORD, num_category=cfg.DATA.NUM_CATEGORY,
                anchor_stride=cfg.RPN.ANCHOR_STRIDE, anchor_sizes=cfg.RPN.ANCHOR_SIZES,
                anchor_ratios=cfg.RPN.ANCHOR_RATIOS, fpn_anchor_strides=cfg.FPN.ANCHOR_STRIDES,
                resolution_requirement=cfg.FPN.RESOLUTION_REQUIREMENT if cfg.MODE_FPN else None,
                apply_exif_orientation=cfg.DATA.EXIF_ORIENTATION == 'apply',
                anchor_params=AnchorLabelParams(
                    batch_per_im=cfg.RPN.BATCH_PER_IM, fg_ratio=cfg.RPN.FG_RATIO,
                    positive_thresh=cfg.RPN.POSITIVE_ANCHOR_THRESH,
                    negative_thresh=cfg.RPN.NEGATIVE_ANCHOR_THRESH,
                    crowd_overlap_thresh=cfg.RPN.CROWD_OVERLAP_THRESH)),
            batching=BatchingParams.from_config(cfg))


class SeededDataFromList(DataFromList):
    """`DataFromList` whose shuffling order is reproducible from `seed` (None: a random seed)."""

    def __init__(self, lst, shuffle=True, seed=None):
        super().__init__(lst, shuffle=shuffle)
        self._seed = seed

    def reset_state(self):
        super().reset_state()
        if self._seed is not None:
            self.rng = np.random.RandomState(self._seed)


def class_histogram_table(roidbs, class_names):
    """A table (str) of non-crowd instances per class; class_names[0] is the background."""
    counts = np.zeros((len(class_names),), dtype=np.int64)
    for roidb in roidbs:
        labels = np.asarray(roidb['class'], dtype=np.int64)[np.asarray(roidb['is_crowd']) == 0]
        counts += np.bincount(labels, minlength=len(class_names))[:len(class_names)]
    cells = list(itertools.chain.from_iterable((name, int(n)) for name, n in zip(class_names[1:], counts[1:])))
    cells += ['total', int(counts[1:].sum())]
    columns = min(6, len(cells))
    cells += [None] * ((-len(cells)) % columns)
    rows = [cells[i:i + columns] for i in range(0, len(cells), columns)]
    return tabulate(rows, headers=['class', '#box'] * (columns // 2), tablefmt='pipe',
                    stralign='center', numalign='left')


_EXIF_REPORTED = set()   # split names whose EXIF orientations this process has reported


def report_exif_orientations(name, file_names, apply_exif_orientation):
    """Log once per split (and process) how many of its JPEGs carry an EXIF orientation other than
    1 and which convention applies to them; returns that count. Only their header segments are read."""
    if name in _EXIF_REPORTED:
        return None
    _EXIF_REPORTED.add(name)
    rotated = sum(1 for file_name in file_names if exif_orientation(file_name) not in (None, 1))
    if rotated:
        logger.warn(
            "{}: {} of {} images carry an EXIF orientation tag other than 1 (rotated or mirrored). With "
            "DATA.EXIF_ORIENTATION='{}' {}. Check one image against its boxes (viz.py) to see which fits.".format(
                name, rotated, len(file_names), 'apply' if apply_exif_orientation else 'ignore',
                "they are read turned as the tag says, as OpenCV and detectron2 do: their annotations must be of "
                "the turned image; set 'ignore' if they are of the pixels as stored" if apply_exif_orientation else
                "they are read as stored, the tag ignored: their annotations must be of the stored pixels; set "
                "'apply' if they are of the image as viewers show it"))
    return rotated


def training_mapper(settings, rank):
    """The TrainingMapper of Horovod rank `rank` (0 otherwise): its streams derive from settings.seed and rank."""
    seed = None if settings.seed is None else derive_seed(settings.seed, rank)
    return TrainingMapper(seed=seed, **settings.mapper._asdict())


def get_train_dataflow(settings, rank=0):
    """The training DataFlow over the concatenated splits of `settings` (a TrainDataSettings).

    Args:
        settings: TrainDataSettings, e.g. `TrainDataSettings.from_config(cfg)`.
        rank: this process's rank under Horovod (0 otherwise); ranks read different
            shuffling and augmentation streams derived from settings.seed.
    Returns:
        a DataFlow of dicts (data.py's docstring). Without workers one pass is one epoch in an
        order fixed by the seed; with workers it is endless and its order varies.
    """
    from dataset import DatasetRegistry

    per_split = [DatasetRegistry.get(name).training_roidbs() for name in settings.splits]
    for name, split_roidbs in zip(settings.splits, per_split):
        report_exif_orientations(name, [roidb['file_name'] for roidb in split_roidbs],
                                 settings.mapper.apply_exif_orientation)
    roidbs = list(itertools.chain.from_iterable(per_split))
    logger.info("Ground-truth instances per class:\n" + class_histogram_table(roidbs, settings.class_names))
    num_images = len(roidbs)
    if settings.filter_empty:
        roidbs = [roidb for roidb in roidbs if np.any(np.asarray(roidb['is_crowd']) == 0)]
    logger.info("Filtered {} images which contain no non-crowd groundtruth boxes. Total #images for training: {}"
                .format(num_images - len(roidbs), len(roidbs)))
    if not roidbs:
        raise ValueError("No training images left in DATA.TRAIN={} (DATA.FILTER_EMPTY_ANNOTATIONS={})".format(
            settings.splits, settings.filter_empty))

    shuffle_seed = None if settings.seed is None else derive_seed(settings.seed, rank, 1 << 20)
    ds = SeededDataFromList(roidbs, shuffle=True, seed=shuffle_seed)
    mapper = training_mapper(settings, rank)
    num_workers = settings.num_workers
    if num_workers < 0:
        raise ValueError("DATA.NUM_WORKERS={} must be >= 0".format(num_workers))
    if num_workers == 0:
        ds = _MapInProcess(ds, mapper)
    else:
        ds = _MapInWorkers(ds, num_workers, mapper, buffer_size=num_workers * settings.buffer_per_worker)
    return add_batching(ds, settings.batching)   # several images per tower: dataflow/batching.py


def image_to_float32(datapoint):
    """The mapper sends the image as uint8 (a quarter of the bytes); the model's input is float32."""
    datapoint[tensor_names.IMAGE] = datapoint[tensor_names.IMAGE].astype(np.float32)
    return datapoint


class _Float32Images:
    """Mixin of a map step: its datapoints leave with float32 images, converted in this process.

    The map step itself stays what get_train_dataflow returns, so its `.ds` is still the roidb
    source (train.py logs it under Horovod) and `.func` the mapper.
    """

    def __iter__(self):
        return map(image_to_float32, super().__iter__())


class _MapInProcess(_Float32Images, MapData):
    pass


class _MapInWorkers(_Float32Images, SpawnMultiProcessMapData):
    pass


def _shard_range(num_items, shard, num_shards):
    """[begin, end) of contiguous shard `shard`; the last shard takes the remainder."""
    if not 0 <= shard < num_shards:
        raise ValueError("shard={} must be in [0, num_shards={})".format(shard, num_shards))
    per_shard = num_items // num_shards
    end = (shard + 1) * per_shard if shard + 1 < num_shards else num_items
    return shard * per_shard, end


def get_eval_dataflow(name, shard=0, num_shards=1, apply_exif_orientation=True):
    """A DataFlow of [image uint8 [H, W, 3] BGR, image_id] over a contiguous shard of split `name`.

    apply_exif_orientation: DATA.EXIF_ORIENTATION == 'apply' (see dataflow/image_io.read_image_bgr).

    Images are not resized. An unreadable or truncated image raises FileNotFoundError /
    UnreadableImageError naming the file, and one whose size differs from the roidb's
    height/width raises ImageSizeMismatchError: an evaluation must not silently drop images.
    """
    from dataset import DatasetRegistry

    roidbs = DatasetRegistry.get(name).inference_roidbs()
    report_exif_orientations(name, [roidb['file_name'] for roidb in roidbs], apply_exif_orientation)
    begin, end = _shard_range(len(roidbs), shard, num_shards)
    logger.info("Found {} images for inference in {}; shard {}/{} has images [{}, {}).".format(
        len(roidbs), name, shard, num_shards, begin, end))
    ds = SeededDataFromList([[roidb['file_name'], roidb['image_id'], recorded_size(roidb), apply_exif_orientation]
                             for roidb in roidbs[begin:end]], shuffle=False)
    return MapData(ds, _read_eval_image)


def _read_eval_image(datapoint):
    file_name, image_id, size_hw, apply_exif_orientation = datapoint
    return [read_image_bgr(file_name, expected_hw=size_hw, apply_exif_orientation=apply_exif_orientation), image_id]
