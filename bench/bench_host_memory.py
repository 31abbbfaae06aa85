"""Host memory of a training run over time: RSS / USS / PSS of the trainer and of each worker.

Trains the Makefile's DEMO_CONFIG (the shapes demo) with DATA.NUM_WORKERS=2 for --steps steps
through the real train.py, samples every process of the run with psutil every --interval
seconds, and prints a table per sampled epoch end plus the growth of each process between
step --from-step and the end. The LR schedule is the demo's, scaled to end at --steps.

    USS: memory only this process maps (what it alone costs the host);
    PSS: USS plus its share of pages shared with other processes;
    RSS: everything resident, shared pages counted in full.

Run: heavy .venv/bin/python bench/bench_host_memory.py --steps 800 [--interval 2]
     [--workdir DIR] [--csv OUT.csv]
     .venv/bin/python bench/bench_host_memory.py --report OUT.csv   (the report of that run again)
"""
import argparse
import collections
import csv
import os
import re
import subprocess
import sys
import tempfile
import time

import psutil

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS_PER_EPOCH = 50
_EPOCH_LINE = re.compile(r'global_step (\d+)')


def demo_config(data_dir):
    """DEMO_CONFIG of the Makefile as a list of KEY=VALUE strings, with $(DATA_DIR) substituted."""
    with open(os.path.join(ROOT, 'Makefile')) as f:
        text = f.read().replace('\\\n', ' ')
    match = re.search(r'^DEMO_CONFIG := (.*)$', text, re.MULTILINE)
    if match is None:
        raise ValueError('No DEMO_CONFIG in {}/Makefile'.format(ROOT))
    return match.group(1).replace('$(DATA_DIR)', data_dir).split()


def scaled_schedule(config, steps):
    """The demo's TRAIN.LR_SCHEDULE (steps for a batch of 8) scaled so that training ends at `steps`."""
    old = [item for item in config if item.startswith('TRAIN.LR_SCHEDULE=')]
    decays = [int(v) for v in old[0].split('=', 1)[1].strip('[]').split(',')]
    last = steps / 8.0
    new = [max(1, int(round(d * last / decays[-1]))) for d in decays[:-1]] + [last]
    new = [int(v) if float(v).is_integer() else v for v in new]
    return override(config, ['TRAIN.LR_SCHEDULE={}'.format(new).replace(' ', '')])


def override(config, items):
    """`config` with the KEY=VALUE `items` replacing the same keys (train.py takes each key once)."""
    keys = {item.split('=', 1)[0] for item in items}
    return [item for item in config if item.split('=', 1)[0] not in keys] + list(items)


def sample(trainer):
    """{pid: (role, rss, uss, pss)} in bytes, for the trainer and its descendants."""
    rows = {}
    try:
        procs = [trainer] + trainer.children(recursive=True)
    except psutil.NoSuchProcess:
        return rows
    for proc in procs:
        try:
            info = proc.memory_full_info()
            cmdline = ' '.join(proc.cmdline())
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        if proc.pid == trainer.pid:
            role = 'trainer'
        elif 'resource_tracker' in cmdline:
            role = 'resource_tracker'
        else:
            role = 'worker'
        rows[proc.pid] = (role, info.rss, info.uss, getattr(info, 'pss', 0))
    return rows


def report(samples, from_step):
    """Print the memory at each epoch end and each process's growth from `from_step` on."""
    mib = 1024.0 ** 2
    print('\nAt each epoch end (MiB; trainer, then each worker: RSS/USS/PSS):')
    printed = set()
    for seconds, step, rows in samples:
        if step in printed:
            continue
        printed.add(step)
        cells = ['{} {:.0f}/{:.0f}/{:.0f}'.format(role[0], rss / mib, uss / mib, pss / mib)
                 for _, (role, rss, uss, pss) in sorted(rows.items()) if role != 'resource_tracker']
        print('step {:5d} {:6.0f} s  {}'.format(step, seconds, '  '.join(cells)))

    first = next(s for s in samples if s[1] >= from_step)
    print('\nGrowth of each process from step {} (t={:.0f} s) to its last sample (the workers end with '
          'training, before the trainer), and its largest value after step {}:'.format(
              first[1], first[0], from_step))
    for pid, (role, rss0, uss0, pss0) in sorted(first[2].items()):
        if role == 'resource_tracker':
            continue
        later = [(seconds, step, rows[pid]) for seconds, step, rows in samples if pid in rows and seconds >= first[0]]
        seconds, step, (_, rss, uss, pss) = later[-1]
        peak = max(row[1] for _, _, row in later)
        print('  {:8s} pid {:7d} to step {} (t={:.0f} s): RSS {:6.0f} -> {:6.0f} MiB ({:+.1f}%, largest {:.0f})  '
              'USS {:6.0f} -> {:6.0f} MiB ({:+.1f}%)  PSS {:6.0f} -> {:6.0f} MiB ({:+.1f}%)'.format(
                  role, pid, step, seconds, rss0 / mib, rss / mib, 100.0 * (rss - rss0) / rss0, peak / mib,
                  uss0 / mib, uss / mib, 100.0 * (uss - uss0) / uss0, pss0 / mib, pss / mib,
                  100.0 * (pss - pss0) / max(pss0, 1)))


def read_csv(path):
    """The samples of a --csv file, as `main` collects them."""
    samples = collections.OrderedDict()
    with open(path) as f:
        for row in csv.DictReader(f):
            key = (float(row['seconds']), int(row['step']))
            samples.setdefault(key, {})[int(row['pid'])] = (row['role'], int(row['rss']), int(row['uss']),
                                                            int(row['pss']))
    return [(seconds, step, rows) for (seconds, step), rows in samples.items()]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--steps', type=int, default=600, help='training steps (a multiple of {})'.format(
        STEPS_PER_EPOCH))
    parser.add_argument('--from-step', type=int, default=200, help='growth is reported from this step to the end')
    parser.add_argument('--interval', type=float, default=2.0, help='seconds between samples')
    parser.add_argument('--workdir', help='where the shapes data and the logdir go (default: a new temp dir)')
    parser.add_argument('--csv', help='write every sample to this CSV file')
    parser.add_argument('--report', metavar='CSV', help="only print the report of an earlier run's --csv file")
    args = parser.parse_args()
    if args.report:
        report(read_csv(args.report), args.from_step)
        return 0
    if args.steps % STEPS_PER_EPOCH or args.steps <= args.from_step:
        parser.error('--steps must be a multiple of {} and above --from-step'.format(STEPS_PER_EPOCH))

    workdir = args.workdir or tempfile.mkdtemp(prefix='bench_host_memory_')
    data_dir = os.path.join(workdir, 'data')
    python = sys.executable
    if not os.path.isdir(os.path.join(data_dir, 'shapes')):
        subprocess.check_call([python, '-m', 'dataset.shapes', os.path.join(data_dir, 'shapes')], cwd=ROOT)
    config = override(scaled_schedule(demo_config(data_dir), args.steps),
                      ['DATA.NUM_WORKERS=2', 'TRAIN.STEPS_PER_EPOCH={}'.format(STEPS_PER_EPOCH),
                       'TRAIN.CHECKPOINT_PERIOD=1000'])
    logdir = os.path.join(workdir, 'train_log')
    log_path = os.path.join(workdir, 'train.log')
    command = [python, 'train.py', '--logdir', logdir, '--config'] + config
    print('Command:', ' '.join(command))
    print('Log:', log_path)
    with open(log_path, 'w') as log:
        proc = subprocess.Popen(command, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    trainer = psutil.Process(proc.pid)
    samples = []   # (seconds, step, {pid: (role, rss, uss, pss)})
    step, started = 0, time.time()
    with open(log_path) as log:
        while proc.poll() is None:
            for line in log.readlines():
                if 'finished' in line:
                    match = _EPOCH_LINE.search(line)
                    if match:
                        step = int(match.group(1))
            rows = sample(trainer)
            if rows:
                samples.append((time.time() - started, step, rows))
            time.sleep(args.interval)
    if proc.returncode != 0:
        print('train.py failed with exit code {}; see {}'.format(proc.returncode, log_path))
        return proc.returncode

    if args.csv:
        with open(args.csv, 'w', newline='') as f:
            writer = csv.writer(f)
            writer.writerow(['seconds', 'step', 'pid', 'role', 'rss', 'uss', 'pss'])
            for seconds, step, rows in samples:
                for pid, row in sorted(rows.items()):
                    writer.writerow(['{:.1f}'.format(seconds), step, pid] + list(row))

    report(samples, args.from_step)
    return 0


if __name__ == '__main__':
    sys.exit(main())
