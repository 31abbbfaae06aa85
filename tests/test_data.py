"""The training / evaluation dataflows of data.py, built from the global config (the anchor targets:
tests/dataflow/test_anchor_targets.py)."""
import signal

import cv2
import numpy as np
import pytest

import common
import data
from config import config as cfg, finalize_configs, reset_config
from dataset import DatasetRegistry, DatasetSplit
from utils import tensor_names as names


# the dataflow on a tiny hand-made split ------------------------------------------------------
class _ListSplit(DatasetSplit):
    def __init__(self, roidbs):
        self.roidbs = roidbs

    def training_roidbs(self):
        return [dict(r) for r in self.roidbs]

    def inference_roidbs(self):
        return [{'file_name': r['file_name'], 'image_id': r['image_id']} for r in self.roidbs]


def _rect_polygon(box):
    x1, y1, x2, y2 = box
    return [np.array([[x1, y1], [x2, y1], [x2, y2], [x1, y2]], np.float32)]


def _make_roidb(path, image_id, shape_hw, boxes, classes, is_crowd, mode='color'):
    image = np.full(shape_hw + (3,), 40, np.uint8)
    for (x1, y1, x2, y2), crowd in zip(np.asarray(boxes, int).reshape((-1, 4)), is_crowd):
        if not crowd:   # only training targets are drawn: every bright pixel belongs to a gt box
            image[y1:y2, x1:x2] = 220
    if mode == 'gray':
        image = image[..., 0]
    elif mode == 'rgba':
        image = np.concatenate([image, np.full(shape_hw + (1,), 255, np.uint8)], axis=-1)
    cv2.imwrite(str(path), image)
    boxes = np.asarray(boxes, np.float32).reshape((-1, 4))
    return {'file_name': str(path), 'image_id': image_id, 'height': shape_hw[0], 'width': shape_hw[1],
            'boxes': boxes, 'class': np.asarray(classes, np.int32), 'is_crowd': np.asarray(is_crowd, np.int8),
            'segmentation': [None if crowd else _rect_polygon(box) for box, crowd in zip(boxes, is_crowd)]}


@pytest.fixture
def tiny_split(tmp_path):
    """Registers 'tiny_train': color (2 boxes + a crowd box), grayscale, RGBA and an empty image."""
    roidbs = [
        _make_roidb(tmp_path / 'color.png', 1, (48, 64), [[4, 4, 20, 24], [30, 10, 60, 40], [0, 30, 10, 46]],
                    [1, 2, 1], [0, 0, 1]),
        _make_roidb(tmp_path / 'gray.png', 2, (64, 48), [[10, 10, 30, 50]], [2], [0], mode='gray'),
        _make_roidb(tmp_path / 'rgba.png', 3, (40, 40), [[5, 5, 35, 25]], [1], [0], mode='rgba'),
        _make_roidb(tmp_path / 'empty.png', 4, (48, 48), [], [], []),
    ]
    DatasetRegistry.register('tiny_train', lambda: _ListSplit(roidbs))
    DatasetRegistry.register_metadata('tiny_train', 'class_names', ['BG', 'a', 'b'])
    yield roidbs
    reset_config()


def _configure(*overrides):
    reset_config()
    cfg.update_args(["DATA.TRAIN=('tiny_train',)", "DATA.VAL=('tiny_train',)", 'DATA.NUM_WORKERS=0',
                     'PREPROC.TRAIN_SHORT_EDGE_SIZE=[64,64]', 'PREPROC.MAX_SIZE=128',
                     'RPN.ANCHOR_SIZES=(8,16,32,64,128)', 'RPN.BATCH_PER_IM=32'])
    cfg.update_args(list(overrides))   # a second call: overrides may replace the values above
    finalize_configs(is_training=True)


def _collect(ds, limit=None):
    ds.reset_state()
    out = []
    for datapoint in ds:
        out.append(datapoint)
        if limit is not None and len(out) == limit:
            break
    return out


def _expected_keys(fpn, mask):
    if fpn:
        keys = {names.fpn_anchor_labels(k) for k in names.FPN_LEVELS} | {names.fpn_anchor_boxes(k)
                                                                          for k in names.FPN_LEVELS}
    else:
        keys = {names.C4_ANCHOR_LABELS, names.C4_ANCHOR_BOXES}
    keys |= {names.IMAGE, names.GT_BOXES, names.GT_LABELS}
    return keys | {names.GT_MASKS_PACKED} if mask else keys


@pytest.mark.parametrize('fpn,mask', [(False, False), (False, True), (True, False), (True, True)])
def test_train_dataflow_keys_dtypes_shapes(tiny_split, fpn, mask):
    _configure('MODE_FPN={}'.format(fpn), 'MODE_MASK={}'.format(mask))
    datapoints = _collect(data.get_train_dataflow())
    assert len(datapoints) == 3   # the empty image is filtered
    num_boxes = sorted(len(dp[names.GT_BOXES]) for dp in datapoints)
    assert num_boxes == [1, 1, 2]   # the crowd box of color.png is not a training target
    for dp in datapoints:
        assert set(dp) == _expected_keys(fpn, mask)
        image = dp[names.IMAGE]
        height, width = image.shape[:2]
        assert image.dtype == np.float32 and image.shape[2] == 3 and min(height, width) == 64
        # Rounded to uint8 in the mapper (the resize interpolates), float32 again for the model.
        assert np.array_equal(image, np.clip(np.round(image), 0, 255))
        num = len(dp[names.GT_BOXES])
        assert dp[names.GT_BOXES].dtype == np.float32 and dp[names.GT_BOXES].shape == (num, 4)
        assert dp[names.GT_LABELS].dtype == np.int64 and dp[names.GT_LABELS].shape == (num,)
        # Anchor targets cover the image's own feature maps. Resized sides are 64 or 85 (48 * 64 / 36).
        if fpn:   # FPN pads 85 to 96 (a multiple of 32): strides 4..32 divide it, p6 has ceil(3 / 2) cells
            sides = {64: (16, 8, 4, 2, 1), 85: (24, 12, 6, 3, 2)}
            for i, level in enumerate(names.FPN_LEVELS):
                cells = (sides[height][i], sides[width][i])
                assert dp[names.fpn_anchor_labels(level)].shape == cells + (3,)
                assert dp[names.fpn_anchor_labels(level)].dtype == np.int32
                assert dp[names.fpn_anchor_boxes(level)].shape == cells + (3, 4)
                assert dp[names.fpn_anchor_boxes(level)].dtype == np.float32
            labels = np.concatenate([dp[names.fpn_anchor_labels(k)].ravel() for k in names.FPN_LEVELS])
        else:     # C4: floor(64 / 16) = 4, floor(85 / 16) = 5 cells; 5 sizes x 3 ratios
            cells = (height // 16, width // 16)
            assert {height, width} <= {64, 85} and cells in [(4, 4), (4, 5), (5, 4)]
            assert dp[names.C4_ANCHOR_LABELS].shape == cells + (15,)
            assert dp[names.C4_ANCHOR_LABELS].dtype == np.int32
            assert dp[names.C4_ANCHOR_BOXES].shape == cells + (15, 4)
            assert dp[names.C4_ANCHOR_BOXES].dtype == np.float32
            labels = dp[names.C4_ANCHOR_LABELS].ravel()
        assert (labels == 1).sum() > 0 and (labels >= 0).sum() <= 32
        if mask:
            packed = dp[names.GT_MASKS_PACKED]
            assert packed.dtype == np.uint8 and packed.shape == (num, height, (width + 7) // 8)
            masks = np.unpackbits(packed, axis=-1)[:, :, :width]
            for box, instance_mask in zip(dp[names.GT_BOXES], masks):   # rectangles: mask fills its box
                ys, xs = np.where(instance_mask)
                np.testing.assert_allclose([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], box, atol=1)
        # the bright drawn rectangles lie under the gt boxes after resize / flip
        inside = np.zeros((height, width), bool)
        for x1, y1, x2, y2 in dp[names.GT_BOXES]:
            inside[int(np.floor(y1)):int(np.ceil(y2)), int(np.floor(x1)):int(np.ceil(x2))] = True
        assert np.all(inside[image[..., 1] > 200]) and (image[..., 1] > 200).any()


def test_filter_empty_annotations_off_keeps_all_negative_images(tiny_split):
    _configure('DATA.FILTER_EMPTY_ANNOTATIONS=False', 'MODE_FPN=False', 'MODE_MASK=True')
    datapoints = _collect(data.get_train_dataflow())
    assert len(datapoints) == 4
    empty = [dp for dp in datapoints if len(dp[names.GT_BOXES]) == 0]
    assert len(empty) == 1
    labels = empty[0][names.C4_ANCHOR_LABELS]
    assert set(np.unique(labels)) <= {-1, 0} and (labels == 0).sum() == 32
    assert empty[0][names.GT_MASKS_PACKED].shape == (0, 64, 8)
    assert empty[0][names.GT_LABELS].dtype == np.int64


def test_seed_determinism_with_scale_augmentation(tiny_split):
    def run(seed):
        _configure('DATA.SEED={}'.format(seed), 'PREPROC.TRAIN_SHORT_EDGE_SIZE=[40,90]', 'MODE_MASK=True')
        return _collect(data.get_train_dataflow())

    first, again, other = run(1), run(1), run(2)

    def same(a, b):
        return len(a) == len(b) and all(set(x) == set(y) and all(np.array_equal(x[k], y[k]) for k in x)
                                        for x, y in zip(a, b))

    assert same(first, again)
    assert not same(first, other)


def test_corrupt_image_is_skipped_and_counted(tiny_split, tmp_path):
    corrupt = tmp_path / 'corrupt.jpg'
    corrupt.write_bytes(b'\xff\xd8 definitely not a jpeg')
    bad = dict(tiny_split[0], file_name=str(corrupt), image_id=99)
    DatasetRegistry.register('tiny_train', lambda: _ListSplit(tiny_split + [bad]))
    _configure()
    ds = data.get_train_dataflow()
    assert len(_collect(ds)) == 3
    assert ds.func.num_skipped == 1 and ds.func.skip_reasons == {'UnreadableImageError': 1}

    mapper = data.training_mapper(data.TrainDataSettings.from_config(cfg), rank=0)   # a fresh one: no skips yet
    mapper.max_consecutive_skips = 2
    assert mapper(bad) is None
    with pytest.raises(RuntimeError, match='2 training images in a row'):   # never an endless loop
        mapper(bad)
    # in a worker, an unexpected error comes back as a record for the parent to raise
    worker = mapper.for_worker(0)
    failure = worker(dict(tiny_split[0], **{'class': np.array([1, 7, 1], np.int32)}))
    assert 'DATA.NUM_CATEGORY' in failure[common.WORKER_FAILURE_KEY]


def _truncated_copy(roidb, path):
    """`roidb` with its image re-encoded as a JPEG cut in the middle of its data."""
    data = cv2.imencode('.jpg', cv2.imread(roidb['file_name']))[1].tobytes()
    path.write_bytes(data[:len(data) // 2])
    return dict(roidb, file_name=str(path))


def test_truncated_image_is_skipped_and_counted_in_training(tiny_split, tmp_path):
    truncated = _truncated_copy(tiny_split[0], tmp_path / 'truncated.jpg')
    DatasetRegistry.register('tiny_train', lambda: _ListSplit(tiny_split + [truncated]))
    _configure()
    ds = data.get_train_dataflow()
    assert len(_collect(ds)) == 3
    assert ds.func.num_skipped == 1 and ds.func.skip_reasons == {'TruncatedImageError': 1}


def test_image_size_differing_from_the_annotations_is_an_error(tiny_split, tmp_path):
    wrong = dict(tiny_split[0], height=24, width=32)   # the file is 48 x 64
    _configure()
    mapper = data.training_mapper(data.TrainDataSettings.from_config(cfg), rank=0)
    with pytest.raises(common.ImageSizeMismatchError, match='color.png is 64x48 .* say 32x24'):
        mapper(wrong)
    split = _ListSplit([wrong])
    split.inference_roidbs = split.training_roidbs   # with height and width, as COCO-format splits give
    DatasetRegistry.register('tiny_train', lambda: split)
    with pytest.raises(common.ImageSizeMismatchError, match='color.png'):
        _collect(data.get_eval_dataflow('tiny_train'))


def test_truncated_image_is_an_error_in_evaluation(tiny_split, tmp_path):
    truncated = _truncated_copy(tiny_split[0], tmp_path / 'truncated.jpg')
    DatasetRegistry.register('tiny_train', lambda: _ListSplit([tiny_split[1], truncated]))
    _configure()
    with pytest.raises(common.TruncatedImageError, match='truncated.jpg'):
        _collect(data.get_eval_dataflow('tiny_train'))


def test_relative_coordinates_match_absolute(tiny_split):
    _configure('MODE_MASK=True')
    absolute = data.get_train_dataflow().func
    _configure('MODE_MASK=True', 'DATA.ABSOLUTE_COORD=False')
    relative = data.get_train_dataflow().func
    roidb = tiny_split[0]
    scale = np.array([roidb['width'], roidb['height']], np.float32)
    rel_roidb = dict(roidb, boxes=roidb['boxes'] / np.tile(scale, 2),
                     segmentation=[None if p is None else [q / scale for q in p] for p in roidb['segmentation']])
    a, b = absolute(roidb), relative(rel_roidb)   # same seed: same resize and flip
    np.testing.assert_allclose(a[names.GT_BOXES], b[names.GT_BOXES], atol=1e-3)
    np.testing.assert_array_equal(a[names.GT_MASKS_PACKED], b[names.GT_MASKS_PACKED])


def test_spawned_workers_see_config_overrides(tiny_split):
    _configure('DATA.NUM_WORKERS=2', 'PREPROC.TRAIN_SHORT_EDGE_SIZE=[40,40]', 'RPN.BATCH_PER_IM=12',
               'MODE_MASK=True')
    ds = data.get_train_dataflow()
    previous = signal.signal(signal.SIGALRM, lambda *_: (_ for _ in ()).throw(TimeoutError('dataflow hung')))
    signal.alarm(150)
    try:
        datapoints = _collect(ds, limit=6)
        assert [type(proc._popen).__module__ for proc in ds._procs] == ['multiprocessing.popen_spawn_posix'] * 2
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
        ds.close()
    for dp in datapoints:
        assert min(dp[names.IMAGE].shape[:2]) == 40 and dp[names.IMAGE].dtype == np.float32   # uint8 in transit
        labels = np.concatenate([dp[names.fpn_anchor_labels(k)].ravel() for k in names.FPN_LEVELS])
        assert (labels >= 0).sum() <= 12


def test_eval_dataflow_shards_and_errors(tiny_split, tmp_path):
    _configure()
    shards = [_collect(data.get_eval_dataflow('tiny_train', shard, 3)) for shard in range(3)]
    assert [[image_id for _, image_id in shard] for shard in shards] == [[1], [2], [3, 4]]
    for shard in shards:
        for image, _ in shard:
            assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3
    assert shards[0][0][0].shape == (48, 64, 3)   # not resized
    with pytest.raises(ValueError, match='shard'):
        data.get_eval_dataflow('tiny_train', 3, 3)

    (tmp_path / 'bad.jpg').write_bytes(b'garbage')
    bad = dict(tiny_split[0], file_name=str(tmp_path / 'bad.jpg'))
    DatasetRegistry.register('tiny_train', lambda: _ListSplit([bad]))
    with pytest.raises(ValueError, match='bad.jpg'):
        _collect(data.get_eval_dataflow('tiny_train'))


def test_class_histogram_table(tiny_split):
    table = data.class_histogram_table(tiny_split, ['BG', 'a', 'b'])
    # non-crowd instances: a = 2 (color, rgba), b = 2 (color, gray); the crowd "a" is not counted
    rows = [[cell.strip() for cell in line.strip('|').split('|')] for line in table.splitlines()[2:]]
    assert rows == [['a', '2', 'b', '2', 'total', '4']]
