"""Roidbs of a COCO-train-sized json: wall time and memory per process, json loader against the cache.

Each case runs in fresh processes that load `DatasetRegistry.get('coco_<split>')` 's training
roidbs and class names (what train.py does before the first step), then report:
  wall:  seconds from the start of the loading to roidbs in hand (imports excluded);
  USS:   private memory of the process (its own pages only);
  PSS:   USS plus its share of the pages it shares (the mapped cache file);
  RSS, peak RSS: resident memory, and its maximum over the process's life;
  base:  USS of the same process before loading (the interpreter and its imports).
Cases:
  json         DATA.ROIDB_CACHE='' : the json parsed, as without the cache;
  cold         the cache enabled and absent: parsed, written, read back;
  warm         the cache present: only mapped;
  warm x N     N processes at once, measured while all N hold their roidbs.

Make the json first: .venv/bin/python bench/make_coco_sized_json.py BASEDIR
Run: heavy .venv/bin/python bench/bench_roidb_cache.py BASEDIR [--split train2017] [--processes 8]
     [--cache-dir DIR] [--skip-json]
"""
import argparse
import glob
import json
import os
import resource
import subprocess
import sys
import time

import psutil

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MIB = 1024.0 ** 2


def _memory(pid):
    info = psutil.Process(pid).memory_full_info()
    return {'uss': info.uss / MIB, 'pss': info.pss / MIB, 'rss': info.rss / MIB}


def child(basedir, split, cache):
    """Load the roidbs, print one json line, wait for a line on stdin, exit."""
    sys.path.insert(0, ROOT)
    from dataset import DatasetRegistry, register_coco
    base = _memory(os.getpid())['uss']
    start = time.time()
    register_coco(basedir, cache)
    name = 'coco_' + split
    class_names = DatasetRegistry.get_metadata(name, 'class_names')
    roidbs = DatasetRegistry.get(name).training_roidbs()
    wall = time.time() - start
    report = dict(_memory(os.getpid()), wall=wall, base=base, images=len(roidbs), classes=len(class_names) - 1,
                  instances=int(sum(len(r['class']) for r in roidbs)),
                  peak=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0)
    print('REPORT ' + json.dumps(report), flush=True)
    sys.stdin.readline()


def run(args, cache, count=1):
    """Start `count` children at once; each one's report, with USS/PSS/RSS measured again by
    this process once all of them hold their roidbs."""
    command = [sys.executable, os.path.abspath(__file__), args.basedir, '--split', args.split, '--child',
               '--cache-dir', cache]
    procs = [subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                              text=True)
             for _ in range(count)]
    reports = []
    for proc in procs:
        for line in proc.stdout:   # the loader's log lines, then the report
            if line.startswith('REPORT '):
                reports.append(json.loads(line[len('REPORT '):]))
                break
        else:
            raise SystemExit('A loading process failed (exit code {}).'.format(proc.wait()))
    for proc, report in zip(procs, reports):
        report.update(_memory(proc.pid))   # all alive: shared pages are split between them
    for proc in procs:
        proc.communicate('exit\n')
    return reports


def print_row(case, reports):
    worst = lambda key: max(r[key] for r in reports)   # noqa: E731
    mean = lambda key: sum(r[key] for r in reports) / len(reports)   # noqa: E731
    print('{:10s} {:>7.1f} {:>7.1f} {:>8.0f} {:>8.0f} {:>8.0f} {:>8.0f} {:>8.0f}'.format(
        case, mean('wall'), worst('wall'), worst('uss'), worst('pss'), worst('rss'), worst('peak'), worst('base')))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('basedir')
    parser.add_argument('--split', default='train2017')
    parser.add_argument('--processes', type=int, default=8)
    parser.add_argument('--cache-dir', default='.', help="DATA.ROIDB_CACHE for the cached cases ('.': beside the json)")
    parser.add_argument('--skip-json', action='store_true', help='skip the (slow) json-only case')
    parser.add_argument('--child', action='store_true', help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args.basedir, args.split, args.cache_dir)

    json_path = os.path.join(args.basedir, 'annotations', 'instances_{}.json'.format(args.split))
    print('{} ({:.0f} MB); load average {}; {} CPUs'.format(
        json_path, os.path.getsize(json_path) / 1e6, ' '.join('{:.1f}'.format(v) for v in os.getloadavg()),
        os.cpu_count()))
    pattern = os.path.join(os.path.normpath(os.path.join(os.path.dirname(json_path), args.cache_dir)),
                           os.path.basename(json_path) + '.*.roidbs')
    for path in glob.glob(pattern):
        os.remove(path)   # a cold start
    rows = []
    if not args.skip_json:
        rows.append(('json', run(args, '')))
    rows.append(('cold', run(args, args.cache_dir)))
    cache_files = glob.glob(pattern)
    rows.append(('warm', run(args, args.cache_dir)))
    rows.append(('warm x{}'.format(args.processes), run(args, args.cache_dir, args.processes)))
    first = rows[0][1][0]
    print('{} images, {} instances, {} classes; cache file {} ({:.0f} MB)'.format(
        first['images'], first['instances'], first['classes'], cache_files[0] if cache_files else '-',
        os.path.getsize(cache_files[0]) / 1e6 if cache_files else 0))
    print('{:10s} {:>7s} {:>7s} {:>8s} {:>8s} {:>8s} {:>8s} {:>8s}'.format(
        'case', 'wall s', 'max s', 'USS MiB', 'PSS MiB', 'RSS MiB', 'peak MiB', 'base MiB'))
    for case, reports in rows:
        print_row(case, reports)
    print('(wall: mean and max over the processes; memory: the largest of the processes)')
    return 0


if __name__ == '__main__':
    sys.exit(main())
