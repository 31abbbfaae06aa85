"""tools/demo_report.py on a tiny run: two 40x40 images, three epochs of stats, one evaluation."""
import json

import cv2
import numpy as np
import pytest

from dataset.coco_eval import coco_from_dict, evaluate_coco
from tools import demo_report

CATEGORIES = [{'id': 1, 'name': 'disc'}, {'id': 2, 'name': 'block'}]


def _square(x, y, size):
    return [[x, y, x + size, y, x + size, y + size, x, y + size]]


def _write_run(tmp_path, with_masks=True):
    """A log directory, a ground-truth json with its images, and an evaluated results json."""
    logdir, image_dir = tmp_path / 'log', tmp_path / 'images'
    logdir.mkdir()
    image_dir.mkdir()
    stats = [{'epoch_num': k, 'global_step': 10 * k, 'total_cost': 3.0 / k, 'wd_cost': 0.1,
              'rpn_losses/label_loss': 1.0 / k, 'rpn_losses/level2/label_loss': 9.0,
              'maskrcnn_loss/maskrcnn_loss': 0.5 / k, 'learning_rate': 0.01 * k} for k in (1, 2, 3)]
    (logdir / 'stats.json').write_text(json.dumps(stats))
    # epoch 3 ran twice (resumed from the checkpoint of epoch 2): its last time counts
    # tensorpack moves the log of the first session aside when the run resumes
    (logdir / 'log.log.1201-100035').write_text('\n'.join([
        '[1201 10:00:00 @train.py:142] Towers: 1, gradient accumulation: 1 step(s)',
        '[1201 10:00:10 @base.py:282] Epoch 1 (global_step 10) finished, time:10 seconds.',
        '[1201 10:00:20 @base.py:282] Epoch 2 (global_step 20) finished, time:1 minute 2.5 seconds.',
        '[1201 10:00:30 @base.py:282] Epoch 3 (global_step 30) finished, time:1 hour 1 second.']) + '\n')
    (logdir / 'log.log').write_text('\n'.join([
        '[1201 10:00:36 @train.py:142] Towers: 1, gradient accumulation: 1 step(s)',
        '[1201 10:00:40 @base.py:282] Epoch 3 (global_step 30) finished, time:27.5 seconds.']) + '\n')
    images = [{'id': k, 'file_name': '{:06d}.jpg'.format(k), 'height': 40, 'width': 40} for k in (1, 2)]
    for img in images:
        cv2.imwrite(str(image_dir / img['file_name']), np.full((40, 40, 3), 90, np.uint8))
    annotations = [{'id': 1, 'image_id': 1, 'category_id': 1, 'bbox': [4, 4, 12, 12],
                    'segmentation': _square(4, 4, 12), 'area': 144.0, 'iscrowd': 0},
                   {'id': 2, 'image_id': 2, 'category_id': 2, 'bbox': [20, 20, 10, 10],
                    'segmentation': _square(20, 20, 10), 'area': 100.0, 'iscrowd': 0}]
    gt = {'images': images, 'annotations': annotations, 'categories': CATEGORIES}
    gt_json = tmp_path / 'gt.json'
    gt_json.write_text(json.dumps(gt))

    from pycocotools import mask as mask_util
    rle = mask_util.merge(mask_util.frPyObjects(_square(4, 4, 12), 40, 40))
    result = {'image_id': 1, 'category_id': 1, 'bbox': [4, 4, 12, 12], 'score': 0.9}
    if with_masks:
        result['segmentation'] = dict(rle, counts=rle['counts'].decode('ascii'))
    results_json = tmp_path / 'eval.json-toy'
    results_json.write_text(json.dumps([result]))
    evaluate_coco(coco_from_dict(json.loads(gt_json.read_text())), [result], output=str(results_json))
    argv = ['--logdir', str(logdir), '--results', str(results_json), '--gt-json', str(gt_json),
            '--image-dir', str(image_dir), '--config', 'MODE_MASK=True', 'TRAIN.AMP=True',
            '--command', 'make demo']
    return logdir, argv


def test_report_files_are_written_and_kept(tmp_path, capsys):
    logdir, argv = _write_run(tmp_path)
    figures = demo_report.main(argv)
    assert figures['train_seconds'] == 10 + 62.5 + 27.5 and figures['steps'] == 30
    assert figures['images_per_second'] == pytest.approx(0.3)
    assert figures['bbox']['AP'] == pytest.approx(0.5) and figures['segm']['AP'] == pytest.approx(0.5)

    summary = (logdir / 'summary.md').read_text()
    assert '| disc | 1.000 | 1.000 | 1.000 | 1.000 | 1.000 | 1.000 |' in summary
    assert '| block | 0.000 |' in summary
    assert '| AR100 | AR, 100 detections per image | 0.500 | 0.500 |' in summary
    assert '| APm | AP, medium | - | - |' in summary   # no medium object: pycocotools' -1
    assert '30 steps of 1 image(s) in 1.7 min: 0.30 images/second' in summary
    assert 'mixed precision: TRAIN.AMP=True' in summary and 'make demo' in summary
    curves = cv2.imread(str(logdir / 'curves.png'))
    pictures = cv2.imread(str(logdir / 'predictions.png'))
    assert curves is not None and curves.shape[0] > 200
    # two images, ground truth beside predictions, twice the size, under title bars: one row of four
    assert pictures.shape[1] == 4 * 80 and pictures.shape[0] > 80
    out = capsys.readouterr().out
    assert 'bbox mAP@[.5:.95]' in out and str(logdir / 'predictions.png') in out

    demo_report.main(argv)   # a second report keeps the first one's files
    for name in ('summary', 'curves', 'predictions'):
        assert len(list(logdir.glob(name + '*'))) == 2
    assert (logdir / 'summary.md').read_text() == summary
    assert 'curves-1.png' in (logdir / 'summary-1.md').read_text()


def test_prediction_grid_fills_masks():
    gt = {'images': [{'id': 1, 'file_name': 'a.jpg', 'height': 40, 'width': 40}], 'categories': CATEGORIES,
          'annotations': [{'id': 1, 'image_id': 1, 'category_id': 2, 'bbox': [10, 10, 20, 20],
                           'segmentation': _square(10, 10, 20), 'iscrowd': 0}]}
    import tempfile
    with tempfile.TemporaryDirectory() as image_dir:
        cv2.imwrite(image_dir + '/a.jpg', np.full((40, 40, 3), 90, np.uint8))
        grid = demo_report.draw_prediction_grid(gt, [], image_dir, [1], score_thresh=0.5, scale=2)
    title_bar = grid.shape[0] - 80
    cell = grid[title_bar:, :80].astype(int)
    inside, outside = cell[40, 40], cell[75, 75]   # the centre of the square, and a corner far from it
    assert (np.abs(inside - outside) > 20).any()   # the mask is filled, not only outlined
    assert np.abs(grid[title_bar + 40, 120].astype(int) - 90).max() <= 3   # no prediction drawn


def test_missing_details_name_the_file(tmp_path):
    logdir, argv = _write_run(tmp_path)
    (tmp_path / 'eval.json-toy.per_class.json').unlink()
    with pytest.raises(FileNotFoundError, match='per_class.json'):
        demo_report.main(argv)


def test_settings():
    assert demo_report.onednn_setting({'TF_ENABLE_ONEDNN_OPTS': '0'}).startswith('off')
    assert demo_report.onednn_setting({'TF_ENABLE_ONEDNN_OPTS': '1'}).startswith('on')
    assert 'default' in demo_report.onednn_setting({})
    assert demo_report.amp_setting(['TRAIN.AMP=True', 'MODE_MASK=True']) == 'TRAIN.AMP=True'
    assert demo_report.amp_setting(['MODE_MASK=True']).startswith('off')


def test_min_bbox_ap_fails_the_run_after_writing_the_report(tmp_path):
    logdir, argv = _write_run(tmp_path)
    assert demo_report.main(argv + ['--min-bbox-ap', '0.4'])['bbox']['AP'] == pytest.approx(0.5)
    with pytest.raises(SystemExit, match=r'box mAP 0\.500 of .* is below --min-bbox-ap 0\.6'):
        demo_report.main(argv + ['--min-bbox-ap', '0.6'])
    assert (logdir / 'summary-1.md').exists()
