"""Seconds per image of the whole inference graph, its FLOP rate, and what dominates, on this CPU.

    .venv/bin/python bench/bench_inference.py [--size 800 1216] [--runs 3] [--config KEY=VALUE ...]

Default config: R50-FPN Mask R-CNN with COCO's 81 classes, random weights (so the score
threshold is set to 0 by default to keep RESULTS_PER_IM detections flowing through the
mask head, the realistic worst case; pass --config TEST.RESULT_SCORE_THRESH=0.05 to change).
The graph runs in a session made by utils.tf_compat.session_config(), as the predictors do.
Prints: the median time of `--runs` runs after a warm-up run; the graph's FLOPs counted by
TF's profiler from one traced run (float_operation); the measured float32 matmul peak of this
machine in the same process; the achieved fraction of it; and the op types and name scopes
taking most time. The profile comes from a run traced with one op at a time
(inter_op_parallelism_threads=1): ops then do not overlap, so each op's time is its own and the
table adds up to about the wall time (`--trace-parallel` traces the timed session instead).
"""
import argparse
import collections
import os
import re
import time

import benchlib  # noqa: F401  (the project root on sys.path)

import numpy as np

from utils.tf_compat import onednn_status, session_config, tf

from tensorpack.tfutils.tower import PredictTowerContext

from config import config as cfg, finalize_configs
from dataset import DatasetRegistry
from utils import tensor_names as names

BENCH_SPLIT = 'bench_coco_like'


def configure(overrides):
    DatasetRegistry.register_metadata(BENCH_SPLIT, 'class_names', ['BG'] + ['class{}'.format(i) for i in range(80)])
    cfg.update_args(['DATA.TRAIN=("{}",)'.format(BENCH_SPLIT), 'DATA.VAL=("{}",)'.format(BENCH_SPLIT),
                     'TEST.RESULT_SCORE_THRESH=0.0'])
    cfg.update_args(list(overrides))   # a second call: --config may replace the values above
    finalize_configs(is_training=False)


def matmul_peak_gflops(size=2048, runs=5):
    """Best GFLOP/s of a size x size float32 matmul."""
    with tf.Graph().as_default():
        a = tf.Variable(tf.random.normal([size, size]))
        b = tf.Variable(tf.random.normal([size, size]))
        product = tf.reduce_sum(tf.matmul(a, b))   # reduce: don't time copying the result out
        with tf.Session() as sess:
            sess.run(tf.global_variables_initializer())
            sess.run(product)
            best = float('inf')
            for _ in range(runs):
                start = time.perf_counter()
                sess.run(product)
                best = min(best, time.perf_counter() - start)
    return 2.0 * size ** 3 / best / 1e9


def _node_micros(run_metadata):
    """(node name, op type, micros) of every op execution in a traced run."""
    for device in run_metadata.step_stats.dev_stats:
        for node in device.node_stats:
            op_type = node.timeline_label.split('(')[0].split('=')[-1].strip() or '?'
            yield node.node_name, op_type, node.op_end_rel_micros


def time_table(run_metadata, key, top=12):
    """[(key, seconds, fraction)] summed over the nodes of a traced run (all threads)."""
    totals = collections.Counter()
    for name, op_type, micros in _node_micros(run_metadata):
        totals[key(name, op_type)] += micros
    total = sum(totals.values()) or 1
    return [(k, micros / 1e6, micros / total) for k, micros in totals.most_common(top)]


def annotate_shapes(graph, run_metadata):
    """Give every tensor the shape it had in the traced run, so the profiler can count FLOPs of
    ops whose static shapes are unknown (ROI counts, image size)."""
    for device in run_metadata.step_stats.dev_stats:
        for node in device.node_stats:
            try:
                op = graph.get_operation_by_name(node.node_name)
            except KeyError:
                continue   # nodes added by the runtime
            for output in node.output:
                shape = [dim.size for dim in output.tensor_description.shape.dim]
                if output.slot < len(op.outputs):
                    try:
                        op.outputs[output.slot].set_shape(shape)
                    except ValueError:
                        pass


def count_flops(graph):
    """FLOPs of the graph's ops per TF's profiler (float_operation), with the annotated shapes."""
    opts = tf.profiler.ProfileOptionBuilder.float_operation()
    opts['output'] = 'none'
    return tf.profiler.profile(graph, cmd='op', options=opts).total_float_ops


def traced_run(sess, outputs, feed):
    run_metadata = tf.RunMetadata()
    sess.run(outputs, feed, options=tf.RunOptions(trace_level=tf.RunOptions.FULL_TRACE), run_metadata=run_metadata)
    return run_metadata


def main():
    print(onednn_status())
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--size', type=int, nargs=2, default=[800, 1216], metavar=('H', 'W'))
    parser.add_argument('--runs', type=int, default=3)
    parser.add_argument('--config', nargs='*', default=[], metavar='KEY=VALUE')
    parser.add_argument('--trace-parallel', action='store_true',
                        help='profile the timed session (ops overlap) instead of a one-op-at-a-time one')
    parser.add_argument('--top', type=int, default=15, help='rows of the profile tables')
    args = parser.parse_args()
    configure(args.config)

    from modeling.generalized_rcnn import build_model
    model = build_model(cfg)
    graph = tf.Graph()
    with graph.as_default():
        placeholders = {spec.name: tf.placeholder(spec.dtype, spec.shape, name=spec.name) for spec in model.inputs()}
        with PredictTowerContext(''):
            model.build_graph(*[placeholders[name] for name in model.input_names])
        output_names = model.get_inference_tensor_names()[1]
        outputs = [graph.get_tensor_by_name(name + ':0') for name in output_names]
        image = np.random.RandomState(0).uniform(0, 255, args.size + [3]).astype(np.float32)
        feed = {placeholders[names.IMAGE]: image}
        with tf.Session(config=session_config()) as sess:
            sess.run(tf.global_variables_initializer())
            start = time.perf_counter()
            results = sess.run(outputs, feed)
            warmup = time.perf_counter() - start
            times = []
            for _ in range(args.runs):
                start = time.perf_counter()
                sess.run(outputs, feed)
                times.append(time.perf_counter() - start)
            if args.trace_parallel:
                run_metadata = traced_run(sess, outputs, feed)
        if not args.trace_parallel:
            sequential = session_config()
            sequential.inter_op_parallelism_threads = 1
            with tf.Session(config=sequential) as sess:
                sess.run(tf.global_variables_initializer())
                sess.run(outputs, feed)
                run_metadata = traced_run(sess, outputs, feed)
        # Counting needs every node's run-time shape; grappler's fused nodes would hide them,
        # so trace once more with graph rewriting off and annotate the graph from that run.
        plain = tf.ConfigProto()
        plain.graph_options.rewrite_options.disable_meta_optimizer = True
        with tf.Session(config=plain) as sess:
            sess.run(tf.global_variables_initializer())
            annotate_shapes(graph, traced_run(sess, outputs, feed))
        flops = count_flops(graph)

    seconds = float(np.median(times))
    peak = matmul_peak_gflops()
    achieved = flops / seconds / 1e9
    print('{} {}x{}, {} detections: {:.2f} s/image (median of {}, min {:.2f}; first run {:.1f} s)'.format(
        'R{}-{}{}'.format(50 if list(cfg.BACKBONE.RESNET_NUM_BLOCKS) == [3, 4, 6, 3] else 'X',
                          'FPN' if cfg.MODE_FPN else 'C4', ' Mask R-CNN' if cfg.MODE_MASK else ''),
        args.size[0], args.size[1], len(results[0]), seconds, args.runs, min(times), warmup))
    print('graph: {:.1f} GFLOP -> {:.1f} GFLOP/s; float32 matmul peak {:.1f} GFLOP/s; ratio {:.0%}'.format(
        flops / 1e9, achieved, peak, achieved / peak))
    if os.environ.get('TF_ENABLE_ONEDNN_OPTS') == '1':
        print('note: oneDNN ops have no FLOP statistics; the count above is low. Count with TF_ENABLE_ONEDNN_OPTS=0.')
    if args.trace_parallel:
        print('profile of the timed session (ops overlap, so small ops running beside big ones look slow)')
    else:
        print('profile of one traced run with one op at a time ({:.2f} s of op time in all)'.format(
            sum(micros for _, _, micros in _node_micros(run_metadata)) / 1e6))
    conv_seconds = sum(micros for _, op_type, micros in _node_micros(run_metadata) if _is_conv(op_type)) / 1e6
    print('  convolutions and matmuls: {:.3f} s; everything else: {:.3f} s'.format(
        conv_seconds, sum(micros for _, _, micros in _node_micros(run_metadata)) / 1e6 - conv_seconds))
    print('time by op type:')
    for op, op_seconds, fraction in time_table(run_metadata, lambda name, op_type: op_type, args.top):
        print('  {:<40s} {:7.3f} s  {:5.1%}'.format(op, op_seconds, fraction))
    print('time by name scope, convolutions and matmuls apart from the rest:')
    for scope, op_seconds, fraction in time_table(run_metadata, _scope_and_kind, args.top):
        print('  {:<40s} {:7.3f} s  {:5.1%}'.format(scope, op_seconds, fraction))


def _is_conv(op_type):
    return 'Conv2D' in op_type or 'MatMul' in op_type


def _scope_of(name, _):
    parts = name.split('/')
    if parts[0].startswith('group') or parts[0] == 'conv0':
        return 'backbone (conv0, group0-3)'
    # Scopes repeated per level (rpn, rpn_1, ..., FPN_slice_lvl2, ...) are summed.
    return re.sub(r'lvl\d$', 'lvl*', re.sub(r'_\d+$', '', parts[0]))


def _scope_and_kind(name, op_type):
    return '{} [{}]'.format(_scope_of(name, op_type), 'conv' if _is_conv(op_type) else 'other')


if __name__ == '__main__':
    main()
