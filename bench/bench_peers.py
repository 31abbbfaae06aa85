"""This project and torchvision's maskrcnn_resnet50_fpn on the same image, side by side in one run.

    make bench-peers                        # installs torch/torchvision into .venv-peers first
    .venv/bin/python bench/bench_peers.py --peers-python .venv-peers/bin/python [--repeats 7]

Both sides time the whole way from an original image to pasted masks: resize to a short edge of
800 px (600x766 -> 800x1021), the network, post-processing and the accurate (bilinear) paste of
100 masks into the original image. Weights are random, so both are forced to 100 detections
(score threshold 0). Each side runs in its own process and virtual environment (torch never
enters the project's venv); the parent sends them one image at a time, alternating which goes
first, so load from other jobs on the machine falls on both alike. torchvision uses
torch.set_num_threads(--threads); TensorFlow uses as many threads as there are cores.

Prints the median and best seconds per image of each side, their ratio, and whether oneDNN is on
in the project's process. If the config declares TEST.AMP, the project is also timed with it, in
a session made by predict.py's own session creator (the one of --evaluate/--predict/--benchmark);
the count of bfloat16/float16 nodes in the graph that session runs shows whether the
mixed-precision rewrite happened. For the project the time of the graph alone (the predictor
call) is also given; the rest is resize, post-processing and paste. --no-peers leaves torchvision
out (no .venv-peers needed); ratios are then to the project's float32 time.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ORIGINAL_HW = (600, 766)          # resized by both to 800 x 1021
SHORT_EDGE, MAX_SIZE = 800, 1333  # torchvision's defaults; also this project's test resize with MAX_SIZE 1333
NUM_DETECTIONS = 100


def make_image():
    """The benchmark image, uint8 [H, W, 3]: smooth random blobs (what both sides see)."""
    import numpy as np
    rng = np.random.RandomState(0)
    small = rng.uniform(0, 255, (ORIGINAL_HW[0] // 20, ORIGINAL_HW[1] // 20, 3))
    rows = np.linspace(0, small.shape[0] - 1, ORIGINAL_HW[0]).astype(int)
    cols = np.linspace(0, small.shape[1] - 1, ORIGINAL_HW[1]).astype(int)
    noise = rng.uniform(-20, 20, ORIGINAL_HW + (3,))
    return np.clip(small[rows][:, cols] + noise, 0, 255).astype(np.uint8)


# Workers: one image per line "run" on stdin, one json line per result on stdout -----------------

def _serve(run_once, info, graph_seconds=None):
    """Warm up, say ready, then answer every 'run' line with the seconds of one image.

    `graph_seconds`: a list to which run_once appends the seconds of its graph part, if any."""
    start = time.perf_counter()
    run_once()
    print(json.dumps(dict(info, ready=True, first_seconds=time.perf_counter() - start)), flush=True)
    for line in sys.stdin:
        if line.strip() != 'run':
            break
        start, start_cpu = time.perf_counter(), time.process_time()
        num_detections = run_once()
        answer = {'seconds': time.perf_counter() - start, 'cpu_seconds': time.process_time() - start_cpu,
                  'detections': num_detections}
        if graph_seconds:
            answer['graph_seconds'] = graph_seconds[-1]
        print(json.dumps(answer), flush=True)


def project_worker(overrides):
    import benchlib  # noqa: F401  (the project root on sys.path; not in the torchvision worker)
    # Results go to stdout as json; keep the libraries' chatter on stderr.
    real_stdout = sys.stdout
    sys.stdout = sys.stderr
    from utils.tf_compat import tf  # (before tensorpack)
    from tensorflow.python.util import _pywrap_util_port
    from tensorpack.predict import OfflinePredictor, PredictConfig

    from bench_inference import configure
    from eval import predict_image
    from modeling.generalized_rcnn import build_model
    from config import config as cfg
    from predict import _session_creator

    configure(['PREPROC.MAX_SIZE={}'.format(MAX_SIZE), 'TEST.RESULTS_PER_IM={}'.format(NUM_DETECTIONS)]
              + list(overrides))
    model = build_model(cfg)
    in_names, out_names = model.get_inference_tensor_names()
    # predict.py's session creator: TEST.AMP switches the mixed-precision rewrite on there, as it
    # does for --evaluate/--predict/--benchmark (a session made without it would run float32).
    predictor = OfflinePredictor(PredictConfig(
        model=model, session_creator=_session_creator(), input_names=in_names, output_names=out_names))
    image = make_image()[:, :, ::-1].copy()    # the project reads BGR
    graph_seconds = []

    def timed_predictor(resized):
        start = time.perf_counter()
        outputs = predictor(resized)
        graph_seconds.append(time.perf_counter() - start)
        return outputs

    def run_once():
        results = predict_image(image, timed_predictor, short_edge_size=SHORT_EDGE, max_size=MAX_SIZE,
                                accurate_paste=True)
        return len(results)
    sys.stdout = real_stdout
    _serve(run_once, {'onednn': bool(_pywrap_util_port.IsMklEnabled()), 'tensorflow': tf.__version__,
                      'config': list(overrides), 'test_amp': bool(cfg.TEST.AMP),
                      'low_precision_nodes': _low_precision_nodes(predictor, in_names, out_names)},
           graph_seconds)


def _low_precision_nodes(predictor, in_names, out_names):
    """How many nodes compute in bfloat16/float16 in the graph the predictor's session runs.

    One run of the predictor's fetches with its session's config, on a small dummy image, with
    the partition graphs (the graph after Grappler's rewrites) returned."""
    import numpy as np
    from utils.tf_compat import tf
    low = {tf.bfloat16.as_datatype_enum, tf.float16.as_datatype_enum}
    graph = predictor.sess.graph
    fetches = [graph.get_tensor_by_name(name + ':0') for name in out_names]
    image = graph.get_tensor_by_name(in_names[0] + ':0')
    metadata = tf.RunMetadata()
    predictor.sess.run(fetches, {image: np.zeros((256, 256, 3), np.float32)},
                       options=tf.RunOptions(output_partition_graphs=True), run_metadata=metadata)
    return sum(1 for partition in metadata.partition_graphs for node in partition.node
               if any(node.attr[key].type in low for key in ('T', 'DstT', 'dtype') if key in node.attr))


def torchvision_worker(threads):
    import torch
    import torchvision
    from torchvision.models.detection import maskrcnn_resnet50_fpn

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = maskrcnn_resnet50_fpn(weights=None, weights_backbone=None, num_classes=91,
                                  min_size=SHORT_EDGE, max_size=MAX_SIZE, box_score_thresh=0.0,
                                  box_detections_per_img=NUM_DETECTIONS).eval()
    image = torch.from_numpy(make_image()).permute(2, 0, 1).float().div(255.0)

    def run_once():
        with torch.inference_mode():
            output = model([image])[0]
        # paste_masks_in_image already produced [R, 1, H, W] probabilities; binarize like the project.
        masks = (output['masks'] >= 0.5).to(torch.uint8)
        assert masks.shape[-2:] == image.shape[-2:]
        return int(output['boxes'].shape[0])
    _serve(run_once, {'torch': torch.__version__, 'torchvision': torchvision.__version__,
                      'threads': torch.get_num_threads(), 'mkldnn': bool(torch.backends.mkldnn.is_available())})


# Parent -------------------------------------------------------------------------------------

class Worker:
    """A worker subprocess: `time_one()` sends 'run' and returns its answer."""

    def __init__(self, label, command):
        self.label = label
        self.times = []
        self.cpu_times = []
        self.graph_times = []
        self.detections = set()
        self._proc = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                      cwd=ROOT)
        self.info = self._read()

    def _read(self):
        line = self._proc.stdout.readline()
        if not line:
            raise RuntimeError("benchmark worker '{}' exited with code {} before answering; see its "
                               "output above".format(self.label, self._proc.wait()))
        return json.loads(line)

    def time_one(self):
        self._proc.stdin.write('run\n')
        self._proc.stdin.flush()
        answer = self._read()
        self.times.append(answer['seconds'])
        self.cpu_times.append(answer['cpu_seconds'])
        if 'graph_seconds' in answer:
            self.graph_times.append(answer['graph_seconds'])
        self.detections.add(answer['detections'])

    def close(self):
        try:
            self._proc.stdin.close()
        except BrokenPipeError:
            pass    # the worker is gone already (e.g. it got the same Ctrl-C)
        self._proc.wait()


def _config_has_test_amp():
    import benchlib  # noqa: F401  (the project root on sys.path; not in the torchvision worker)
    from config import config as cfg
    return 'AMP' in cfg.TEST.to_dict()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--peers-python', default=os.path.join(ROOT, '.venv-peers', 'bin', 'python'),
                        help="the python of the venv with torch and torchvision (made by `make bench-peers`)")
    parser.add_argument('--repeats', type=int, default=7, help='timed images per side (after one warm-up)')
    parser.add_argument('--threads', type=int, default=2, help='torch.set_num_threads for torchvision')
    parser.add_argument('--config', nargs='*', default=[], metavar='KEY=VALUE',
                        help='config overrides for this project')
    parser.add_argument('--no-amp', action='store_true', help='skip the TEST.AMP column even if the key exists')
    parser.add_argument('--no-peers', action='store_true',
                        help='time this project only (no torchvision, no .venv-peers); ratios to its float32 time')
    parser.add_argument('--worker', choices=['project', 'torchvision'], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker == 'project':
        return project_worker(args.config)
    if args.worker == 'torchvision':
        return torchvision_worker(args.threads)

    if not args.no_peers and not os.path.exists(args.peers_python):
        raise FileNotFoundError("{} does not exist: run `make bench-peers` (it installs torch and torchvision "
                                "into .venv-peers) or pass --peers-python".format(args.peers_python))
    script = os.path.abspath(__file__)
    project_cmd = [sys.executable, script, '--worker', 'project', '--config']
    variants = [('this project (float32)', project_cmd + list(args.config))]
    if not args.no_amp and _config_has_test_amp():
        variants.append(('this project (TEST.AMP)', project_cmd + list(args.config) + ['TEST.AMP=True']))
    if not args.no_peers:
        variants.append(('torchvision maskrcnn_resnet50_fpn',
                         [args.peers_python, script, '--worker', 'torchvision', '--threads', str(args.threads)]))
    # Start them one after the other so their set-up and warm-up do not overlap.
    workers = [Worker(label, command) for label, command in variants]
    load_before = os.getloadavg()[0]
    try:
        for repeat in range(args.repeats):
            order = workers if repeat % 2 == 0 else workers[::-1]
            for worker in order:
                worker.time_one()
            print('repeat {}/{}: '.format(repeat + 1, args.repeats)
                  + ', '.join('{} {:.2f} s'.format(w.label.split(' ')[0] + ('+amp' if 'AMP' in w.label else ''),
                                                    w.times[-1]) for w in workers), flush=True)
    except KeyboardInterrupt:
        # On a slow machine a partial run is still worth a summary: keep the complete repeats.
        complete = min(len(w.times) for w in workers)
        if complete == 0:
            raise
        print('interrupted: summarizing the {} complete repeats'.format(complete))
        for worker in workers:
            del worker.times[complete:], worker.cpu_times[complete:], worker.graph_times[complete:]
    for worker in workers:
        worker.close()

    load_after = os.getloadavg()[0]
    project = workers[0].info
    print()
    print('image {}x{} resized to 800x1021, {} detections, random weights, end to end (resize, network, '
          'post-processing, accurate mask paste)'.format(ORIGINAL_HW[0], ORIGINAL_HW[1], NUM_DETECTIONS))
    print('project: TensorFlow {}, oneDNN {} (TF_ENABLE_ONEDNN_OPTS={}){}'.format(
        project['tensorflow'], 'on' if project['onednn'] else 'off', os.environ.get('TF_ENABLE_ONEDNN_OPTS', 'unset'),
        '' if args.no_peers else '; torch {torch}, torchvision {torchvision}, {threads} threads'.format(
            **workers[-1].info)))
    print('load average (1 min) {:.1f} before the timed repeats, {:.1f} after, on {} cores{}'.format(
        load_before, load_after, os.cpu_count(),
        '' if max(load_before, load_after) < 1.5 * os.cpu_count() else
        ': a busy machine; wall times are inflated' + ('' if args.no_peers else
                                                        ', torch\'s OpenMP threads more than most')))
    reference_worker = workers[0] if args.no_peers else workers[-1]
    reference = statistics.median(reference_worker.times)
    reference_cpu = statistics.median(reference_worker.cpu_times)
    print('{:<36s} {:>8s} {:>7s} {:>8s} {:>7s} {:>6s} {:>6s} {:>7s} {:>14s} {:>8s}'.format(
        'implementation', 'median s', 'best s', 'cpu s', 'graph s', 'first', 'dets', 'lowp', 'vs ' + (
            'float32' if args.no_peers else 'torchvision'), '(cpu s)'))
    for worker in workers:
        median = statistics.median(worker.times)
        median_cpu = statistics.median(worker.cpu_times)
        graph = '{:7.2f}'.format(statistics.median(worker.graph_times)) if worker.graph_times else '      -'
        lowp = worker.info.get('low_precision_nodes')
        print('{:<36s} {:8.2f} {:7.2f} {:8.2f} {} {:6.1f} {:>6s} {:>7s} {:13.2f}x {:7.2f}x'.format(
            worker.label, median, min(worker.times), median_cpu, graph, worker.info['first_seconds'],
            ','.join(str(n) for n in sorted(worker.detections)), '-' if lowp is None else str(lowp),
            median / reference, median_cpu / reference_cpu))
    print('(s: wall seconds per image; cpu s: CPU seconds of all the process\'s threads per image; graph s: the '
          'predictor call alone, the rest is resize, post-processing and paste; medians. first: seconds of the '
          'warm-up image. lowp: bfloat16/float16 nodes in the graph the session runs, 0 = float32 throughout)')


if __name__ == '__main__':
    main()
