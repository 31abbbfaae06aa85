"""The table of bench/experiments/amp_seeds.sh's runs: COCO mAP per (precision, seed), mean and spread.

    .venv/bin/python bench/experiments/amp_seeds_table.py LOG_ROOT

Reads LOG_ROOT/runs.txt and each run's eval.log and stats.json. The epoch-1 `mean_gt_box_area`
(a statistic of the images fed, not of the model) is printed to show what DATA.SEED changes: the
same for both precisions of one seed (the same images in the same order), different across seeds.
"""
import argparse
import json
import os
import re
import statistics


def final_map(eval_log, kind):
    with open(eval_log) as f:
        found = re.findall(r'mAP\({}\)/IoU=0\.5:0\.95: ([0-9.]+)'.format(kind), f.read())
    if not found:
        raise ValueError('{} has no mAP({}) line: did the evaluation finish?'.format(eval_log, kind))
    return float(found[-1])


def median_epoch_seconds(train_log):
    """The median of tensorpack's "Epoch N ... finished, time:X seconds" over a training log."""
    with open(train_log) as f:
        times = [float(t) for t in re.findall(r'finished, time:\s*([0-9.]+)\s*seconds', f.read())]
    if not times:
        raise ValueError('{} has no finished epoch'.format(train_log))
    return statistics.median(times)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('log_root')
    args = parser.parse_args()
    runs_file = os.path.join(args.log_root, 'runs.txt')
    if not os.path.exists(runs_file):
        raise FileNotFoundError('{} does not exist: run bench/experiments/amp_seeds.sh first'.format(runs_file))
    rows = []
    with open(runs_file) as f:
        for line in f:
            precision, seed, start, end, *load = line.split()
            run_dir = os.path.join(args.log_root, '{}-seed{}'.format(precision, seed))
            with open(os.path.join(run_dir, 'stats.json')) as stats_file:
                stats = json.load(stats_file)
            rows.append(dict(precision=precision, seed=seed, minutes=(int(end) - int(start)) / 60.0,
                             load=' '.join(load), bbox=final_map(os.path.join(run_dir, 'eval.log'), 'bbox'),
                             segm=final_map(os.path.join(run_dir, 'eval.log'), 'segm'),
                             epoch_s=median_epoch_seconds(run_dir + '.train.log'),
                             gt_area=stats[0]['mean_gt_box_area'], cost1=stats[0]['total_cost'],
                             cost_end=stats[-1]['total_cost']))
    print('| precision | DATA.SEED | bbox mAP | segm mAP | minutes (train + eval) | load at end (1/5/15 min) '
          '| median s/epoch | epoch-1 mean_gt_box_area | total_cost epoch 1 / last |')
    print('| --- | --- | --- | --- | --- | --- | --- | --- | --- |')
    for r in rows:
        print('| {precision} | {seed} | {bbox:.4f} | {segm:.4f} | {minutes:.1f} | {load} | {epoch_s:.1f} '
              '| {gt_area:.1f} | {cost1:.3f} / {cost_end:.3f} |'.format(**r))
    print()
    for precision in sorted({r['precision'] for r in rows}):
        mine = [r for r in rows if r['precision'] == precision]
        for kind in ('bbox', 'segm'):
            values = [r[kind] for r in mine]
            print('{} {}: mean {:.4f} over {} runs, range {:.4f}-{:.4f}{}'.format(
                precision, kind, statistics.mean(values), len(values), min(values), max(values),
                '' if len(values) < 2 else ', sample std {:.4f}'.format(statistics.stdev(values))))


if __name__ == '__main__':
    main()
