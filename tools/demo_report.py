#!/usr/bin/env python
"""The report of a finished training run: summary.md, curves.png and predictions.png.

    python -m tools.demo_report --logdir train_log/demo --results train_log/demo/eval.json-shapes_val \\
        --gt-json data/shapes/annotations/instances_shapes_val.json --image-dir data/shapes/shapes_val

It reads what training and `predict.py --evaluate` left behind and runs no model:
  - the log directory: tensorpack's stats.json (one entry of scalars per epoch) and log.log
    with the copies it moved aside on resuming (the time of each epoch, the number of towers);
  - the results json of an evaluation and the details written beside it (dataset.coco_eval:
    the twelve COCO numbers and the per-class AP);
  - the COCO-format ground truth and its images, for the pictures.
It ends by printing a compact table of the main figures and the paths of the files. A file that
exists already is kept: the new one gets a numbered name (summary-1.md, ...).
"""
import argparse
import glob
import itertools
import json
import os
import re
import time

import cv2
import numpy as np

from dataset.coco_eval import PER_CLASS_FIELDS, STAT_NAMES, per_class_paths
from viz import DetectionResult, draw_annotation, draw_final_outputs, stack_grid

__all__ = ['read_stats', 'read_training_times', 'plot_curves', 'draw_prediction_grid', 'write_summary',
           'onednn_setting', 'amp_setting', 'unused_path', 'main']

STAT_MEANINGS = {
    'AP': 'AP, IoU 0.50:0.95', 'AP50': 'AP, IoU 0.50', 'AP75': 'AP, IoU 0.75',
    'APs': 'AP, small (< 32^2 px)', 'APm': 'AP, medium', 'APl': 'AP, large (> 96^2 px)',
    'AR1': 'AR, 1 detection per image', 'AR10': 'AR, 10 detections per image',
    'AR100': 'AR, 100 detections per image', 'ARs': 'AR, small', 'ARm': 'AR, medium', 'ARl': 'AR, large'}
# tensorpack writes epoch times as humanize_time_delta does: '58.1 seconds', '1 minute 2 seconds'
_EPOCH_LINE = re.compile(r'Epoch (\d+) \(global_step (\d+)\) finished, time:\s*(.*?)\.?\s*$')
_TIME_PART = re.compile(r'([0-9.]+)\s*(day|hour|minute|second)s?')
_TOWERS_LINE = re.compile(r'Towers: (\d+)')
_UNIT_SECONDS = {'second': 1., 'minute': 60., 'hour': 3600., 'day': 86400.}
PICTURE_SCALE = 2   # 256 px images are drawn at twice their size so that labels stay readable


def unused_path(directory, name):
    """`directory/name`, or `stem-1.ext`, `stem-2.ext`, ... when that exists already."""
    stem, ext = os.path.splitext(name)
    for k in itertools.count():
        path = os.path.join(directory, stem + ('-{}'.format(k) if k else '') + ext)
        if not os.path.exists(path):
            return path


def _read_json(path, what):
    if not os.path.isfile(path):
        raise FileNotFoundError("{} {} does not exist; {}".format(what, path, {
            'stats': 'give the --logdir of a training run (tensorpack writes stats.json there).',
            'details': 'evaluate with predict.py --evaluate, which writes it beside the results json.',
        }.get(what, 'check the path.')))
    with open(path) as f:
        return json.load(f)


# training figures ------------------------------------------------------------------------
def read_stats(logdir):
    """tensorpack's stats.json of `logdir`: a list of {scalar name: value} with 'global_step'."""
    stats = _read_json(os.path.join(logdir, 'stats.json'), 'stats')
    return [entry for entry in stats if 'global_step' in entry]


def _log_files(logdir):
    """log.log and the copies tensorpack moved aside when the run resumed (log.log.<MMDD-HHMMSS>),
    oldest first."""
    rotated = sorted(glob.glob(os.path.join(logdir, 'log.log.*')))
    current = os.path.join(logdir, 'log.log')
    return rotated + ([current] if os.path.isfile(current) else [])


def read_training_times(logdir):
    """(training seconds, last global step, towers) from the logs of `logdir`.

    A resumed run's earlier epochs are in the log.log.<time> files tensorpack moved aside; an
    epoch that ran twice (resumed from an earlier checkpoint) counts once, with its last time.
    Returns (None, None, 1) without a log.
    """
    epoch_seconds, last_step, towers = {}, None, 1
    for path in _log_files(logdir):
        with open(path, errors='replace') as f:
            for line in f:
                match = _EPOCH_LINE.search(line)
                if match:
                    epoch, step, duration = match.groups()
                    epoch_seconds[int(epoch)] = sum(float(value) * _UNIT_SECONDS[unit]
                                                    for value, unit in _TIME_PART.findall(duration))
                    last_step = max(int(step), last_step or 0)
                match = _TOWERS_LINE.search(line)
                if match:
                    towers = int(match.group(1))
    if not epoch_seconds:
        return None, last_step, towers
    return sum(epoch_seconds.values()), last_step, towers


def _loss_names(stats):
    names = sorted({k for entry in stats for k in entry})
    losses = [k for k in names if (k.endswith('loss') or k.endswith('cost')) and '/level' not in k
              and k != 'total_cost']
    return ['total_cost'] * ('total_cost' in names) + losses


def plot_curves(stats, path):
    """Total loss, each loss and the learning rate over the steps, one panel each, to `path`."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    panels = _loss_names(stats) + ['learning_rate'] * any('learning_rate' in e for e in stats)
    if not panels:
        raise ValueError("stats.json has no loss or learning_rate scalars to plot.")
    num_cols = 3
    num_rows = -(-len(panels) // num_cols)
    fig, axes = plt.subplots(num_rows, num_cols, figsize=(4.2 * num_cols, 3.0 * num_rows), squeeze=False)
    for ax, name in zip(axes.ravel(), panels):
        points = [(e['global_step'], e[name]) for e in stats if name in e]
        steps, values = zip(*points)
        ax.plot(steps, values, marker='.', color='tab:red' if name == 'learning_rate' else 'tab:blue')
        ax.set_title(name, fontsize=10)
        ax.set_xlabel('step')
        ax.grid(alpha=0.3)
        if name != 'learning_rate' and min(values) > 0:
            ax.set_yscale('log')
    for ax in axes.ravel()[len(panels):]:
        ax.axis('off')
    fig.suptitle('Training curves (one point per epoch, moving averages)')
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


# pictures ---------------------------------------------------------------------------------
def _polygon_mask(polygons, height, width, scale):
    mask = np.zeros((height * scale, width * scale), dtype=np.uint8)
    points = [np.round(np.asarray(p, dtype=np.float64).reshape(-1, 2) * scale * 16).astype(np.int32)
              for p in polygons]
    cv2.fillPoly(mask, points, 1, shift=4)
    return mask


def _ground_truth_mask(segmentation, height, width, scale):
    from pycocotools import mask as mask_util
    if isinstance(segmentation, list):
        return _polygon_mask(segmentation, height, width, scale)
    rle = segmentation
    if isinstance(rle.get('counts'), list):   # uncompressed RLE (crowd regions)
        rle = mask_util.frPyObjects(rle, height, width)
    return _resize_mask(mask_util.decode(rle), scale)


def _resize_mask(mask, scale):
    return cv2.resize(mask.astype(np.uint8), None, fx=scale, fy=scale, interpolation=cv2.INTER_NEAREST)


def _xywh_to_xyxy(bbox, scale):
    x, y, w, h = bbox
    return np.array([x, y, x + w, y + h], dtype=np.float64) * scale


def pick_images(coco_gt, count):
    """Ids of the first `count` images (by id) that have ground truth; others if there are too few."""
    with_objects = {ann['image_id'] for ann in coco_gt['annotations']}
    ids = sorted(img['id'] for img in coco_gt['images'])
    return ([i for i in ids if i in with_objects] + [i for i in ids if i not in with_objects])[:count]


def draw_prediction_grid(coco_gt, results, image_dir, image_ids, score_thresh, scale=PICTURE_SCALE):
    """Ground truth beside predictions for each image, two pairs per row; BGR uint8.

    coco_gt: COCO-format dict (images, annotations, categories). results: result dicts in its
    ids, with RLE 'segmentation' when the model has masks. Detections under score_thresh are not drawn.
    """
    from pycocotools import mask as mask_util
    category_ids = sorted(cat['id'] for cat in coco_gt['categories'])
    class_of_id = {cat_id: k + 1 for k, cat_id in enumerate(category_ids)}
    names_by_id = {cat['id']: cat['name'] for cat in coco_gt['categories']}
    class_names = ['BG'] + [names_by_id[i] for i in category_ids]
    images = {img['id']: img for img in coco_gt['images']}
    cells, titles = [], []
    for image_id in image_ids:
        info = images[image_id]
        path = os.path.join(image_dir, info['file_name'])
        image = cv2.imread(path, cv2.IMREAD_COLOR)
        if image is None:
            raise FileNotFoundError("Cannot read image {} of the ground truth; check --image-dir.".format(path))
        height, width = image.shape[:2]
        image = cv2.resize(image, (width * scale, height * scale), interpolation=cv2.INTER_LINEAR)
        anns = [a for a in coco_gt['annotations'] if a['image_id'] == image_id]
        gt_masks = [_ground_truth_mask(a['segmentation'], height, width, scale) for a in anns
                    if a.get('segmentation')]
        gt = draw_annotation(image, [_xywh_to_xyxy(a['bbox'], scale) for a in anns],
                             [class_of_id[a['category_id']] for a in anns], class_names,
                             masks=gt_masks if len(gt_masks) == len(anns) else None)
        detections = []
        for r in results:
            if r['image_id'] != image_id or r['score'] < score_thresh:
                continue
            mask = None
            if r.get('segmentation') is not None:
                mask = _resize_mask(mask_util.decode(dict(r['segmentation'])), scale)
            detections.append(DetectionResult(_xywh_to_xyxy(r['bbox'], scale), r['score'],
                                              class_of_id[r['category_id']], mask))
        predicted = draw_final_outputs(image, detections, class_names, score_thresh)
        name = os.path.splitext(os.path.basename(info['file_name']))[0]
        cells += [gt, predicted]
        titles += ['{} ground truth ({})'.format(name, len(anns)),
                   '{} predicted, score >= {:g} ({})'.format(name, score_thresh, len(detections))]
    return stack_grid(cells, titles, num_cols=4)


# settings -----------------------------------------------------------------------------------
def onednn_setting(environ=os.environ):
    value = environ.get('TF_ENABLE_ONEDNN_OPTS')
    if value is None:
        return ("TensorFlow's default for this CPU (TF_ENABLE_ONEDNN_OPTS unset): on with AVX512_VNNI, "
                "AVX512_BF16, AVX_VNNI or AMX; train.py logs which ('Training precision: ...')")
    return '{} (TF_ENABLE_ONEDNN_OPTS={})'.format('on' if value.strip().lower() in ('1', 'true') else 'off', value)


def amp_setting(config_overrides):
    """The mixed-precision overrides among `config_overrides` (KEY=VALUE strings), or float32."""
    amp = [item for item in config_overrides if item.split('=')[0].rsplit('.', 1)[-1] == 'AMP']
    return ', '.join(amp) if amp else 'off (float32; no *.AMP override)'


# summary ------------------------------------------------------------------------------------
def _fmt(value):
    # pycocotools reports -1 for an area range without ground truth
    return '-' if value is None or value < 0 else '{:.3f}'.format(value)


def _figures(details, train_seconds, steps, towers, wall_seconds):
    figures = {'steps': steps, 'towers': towers, 'train_seconds': train_seconds, 'wall_seconds': wall_seconds}
    if train_seconds and steps:
        figures['images_per_second'] = steps * towers / train_seconds
        figures['seconds_per_step'] = train_seconds / steps
    for iou_type, d in details.items():
        figures[iou_type] = d['stats']
    return figures


def write_summary(path, details, figures, settings, command, files):
    iou_types = list(details)
    lines = ['# Demo report', '',
             '## COCO metrics on {}'.format(settings['split']), '',
             '| metric | meaning | ' + ' | '.join(iou_types) + ' |', '| --- | --- |' + ' --- |' * len(iou_types)]
    for name in STAT_NAMES:
        lines.append('| {} | {} | '.format(name, STAT_MEANINGS[name]) +
                     ' | '.join(_fmt(details[t]['stats'].get(name)) for t in iou_types) + ' |')
    lines += ['', '## Per-class AP', '',
              '| class | ' + ' | '.join('{} {}'.format(t, f) for t in iou_types for f in PER_CLASS_FIELDS) + ' |',
              '| --- |' + ' --- |' * (len(iou_types) * len(PER_CLASS_FIELDS))]
    for name in details[iou_types[0]]['per_class']:
        lines.append('| {} | '.format(name) + ' | '.join(
            _fmt(details[t]['per_class'][name][f]) for t in iou_types for f in PER_CLASS_FIELDS) + ' |')
    lines += ['', '## Training', '']
    if figures.get('train_seconds'):
        lines += ['- {} steps of {} image(s) in {:.1f} min: {:.2f} images/second ({:.3f} s/step)'.format(
            figures['steps'], figures['towers'], figures['train_seconds'] / 60, figures['images_per_second'],
            figures['seconds_per_step'])]
    else:
        lines += ['- no epoch times found in log.log']
    if figures.get('wall_seconds'):
        lines += ['- wall time of the whole run (data, training, evaluation, report): {:.1f} min'.format(
            figures['wall_seconds'] / 60)]
    lines += ['- oneDNN: ' + settings['onednn'], '- mixed precision: ' + settings['amp'], '',
              '## Reproduce', '', '```', command] + settings.get('train_command', []) + ['```', '', '## Files', '']
    lines += ['- {}: {}'.format(what, file) for what, file in files]
    with open(path, 'w') as f:
        f.write('\n'.join(lines) + '\n')


def _terminal_table(figures, details, files):
    rows = []
    for iou_type in details:
        s = details[iou_type]['stats']
        rows.append(('{} mAP@[.5:.95]'.format(iou_type),
                     '{:.3f}  (AP50 {:.3f}, AP75 {:.3f})'.format(s['AP'], s['AP50'], s['AP75'])))
    for iou_type in details:
        rows.append(('{} AP per class'.format(iou_type), '  '.join(
            '{} {}'.format(name, _fmt(v['AP'])) for name, v in details[iou_type]['per_class'].items())))
    if figures.get('train_seconds'):
        rows.append(('training', '{} steps, {:.1f} min, {:.2f} images/s'.format(
            figures['steps'], figures['train_seconds'] / 60, figures['images_per_second'])))
    if figures.get('wall_seconds'):
        rows.append(('wall time', '{:.1f} min'.format(figures['wall_seconds'] / 60)))
    rows += files
    width = max(len(k) for k, _ in rows)
    return '\n'.join('  {:<{w}}  {}'.format(k, v, w=width) for k, v in rows)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--logdir', required=True, help='log directory of the training run')
    parser.add_argument('--results', required=True, metavar='JSON',
                        help='results json of predict.py --evaluate (OUT.json-<split>)')
    parser.add_argument('--gt-json', required=True, help='COCO-format ground truth of the evaluated split')
    parser.add_argument('--image-dir', required=True, help="directory of the split's images")
    parser.add_argument('--output-dir', help='where to write the report (default: --logdir)')
    parser.add_argument('--num-images', type=int, default=8, help='images in predictions.png')
    parser.add_argument('--score-thresh', type=float, default=0.5, help='detections drawn score at least this')
    parser.add_argument('--command', default='make demo', help='the command that reproduces the run')
    parser.add_argument('--config', nargs='*', default=[], metavar='KEY=VALUE',
                        help='the config overrides of the run (for the mixed-precision setting)')
    parser.add_argument('--started', type=float, help='Unix time the whole run started (for its wall time)')
    parser.add_argument('--min-bbox-ap', type=float, default=0., metavar='AP',
                        help='exit with an error after the report if the box mAP@[.5:.95] is below AP')
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    output_dir = args.output_dir or args.logdir
    os.makedirs(output_dir, exist_ok=True)
    details = _read_json(per_class_paths(args.results)[1], 'details')
    if not details:
        raise ValueError("{} holds no evaluation.".format(per_class_paths(args.results)[1]))
    results = _read_json(args.results, 'results')
    coco_gt = _read_json(args.gt_json, 'ground truth')
    stats = read_stats(args.logdir)
    train_seconds, steps, towers = read_training_times(args.logdir)
    if steps is None and stats:
        steps = stats[-1]['global_step']

    curves = unused_path(output_dir, 'curves.png')
    plot_curves(stats, curves)
    pictures = unused_path(output_dir, 'predictions.png')
    grid = draw_prediction_grid(coco_gt, results, args.image_dir, pick_images(coco_gt, args.num_images),
                                args.score_thresh)
    cv2.imwrite(pictures, grid)
    summary = unused_path(output_dir, 'summary.md')
    wall = time.time() - args.started if args.started else None
    figures = _figures(details, train_seconds, steps, towers, wall)
    settings = {'split': os.path.basename(args.results).rsplit('.json-', 1)[-1],
                'onednn': onednn_setting(), 'amp': amp_setting(args.config)}
    if args.config:
        settings['train_command'] = ['# which trains with', 'python train.py --logdir {} --config {}'.format(
            args.logdir, ' '.join(args.config))]
    files = [('summary', summary), ('curves', curves), ('predictions', pictures),
             ('per-class AP', per_class_paths(args.results)[0]), ('detections', args.results)]
    write_summary(summary, details, figures, settings, args.command, files)
    with open(unused_path(output_dir, 'figures.json'), 'w') as f:
        json.dump(dict(figures, settings=settings), f, indent=1)
    print('\nReport of {}:\n{}'.format(args.logdir, _terminal_table(figures, details, files)))
    box_ap = details.get('bbox', {}).get('stats', {}).get('AP')
    if args.min_bbox_ap > 0 and (box_ap is None or box_ap < args.min_bbox_ap):
        raise SystemExit('demo_report: box mAP {} of {} is below --min-bbox-ap {}: the run did not learn '
                         'what it should (see {}).'.format(_fmt(box_ap), args.results, args.min_bbox_ap, summary))
    return figures


if __name__ == '__main__':
    main()
