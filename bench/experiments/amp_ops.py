"""Which ops of a TRAIN.AMP / TEST.AMP step compute in the low precision, by op type and scope.

    TF_ENABLE_ONEDNN_OPTS=1 .venv/bin/python bench/experiments/amp_ops.py [--model demo] [--inference]
        [--grep gn] [--ops TopKV2]

A study (docs/amp-study.md), not a benchmark. Builds the model as bench/bench_amp.py does (one
shapes datapoint, random weights), runs one step in an AMP session with the partition graphs
returned (the graph after Grappler's rewrite), and prints, per op type, how many nodes compute in
bfloat16/float16 and how many in float32; --grep also lists the names of the nodes (low precision
or not) whose name contains a string.
"""
import argparse
import collections
import logging
import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))   # bench/, for benchlib

from benchlib import Runner, configure, first_datapoint, inference_datapoint, model_overrides  # noqa: E402
from utils.tf_compat import amp_unsupported_reason, onednn_status, tf  # noqa: E402

TYPE_ATTRS = ('T', 'DstT', 'dtype')


def node_dtypes(run_metadata):
    """[(node name, op type, set of its type attributes' dtypes)] over the step's partition graphs."""
    rows = []
    for graph in run_metadata.partition_graphs:
        for node in graph.node:
            types = {tf.as_dtype(node.attr[key].type).name for key in TYPE_ATTRS
                     if key in node.attr and node.attr[key].type}
            rows.append((node.name, node.op, types))
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--model', choices=['demo', 'r50-fpn-800'], default='demo')
    parser.add_argument('--inference', action='store_true', help='the TEST.AMP inference graph, not a training step')
    parser.add_argument('--grep', nargs='*', default=[], help='list the nodes whose names contain these strings')
    parser.add_argument('--ops', nargs='*', default=[], help='list the low-precision nodes of these op types')
    args = parser.parse_args()
    logging.getLogger('tensorpack').setLevel(logging.WARNING)
    reason = amp_unsupported_reason()
    if reason is not None:
        raise ValueError('AMP cannot run here: {}.'.format(reason))
    print(onednn_status())
    training = not args.inference
    with tempfile.TemporaryDirectory(prefix='amp_ops_') as basedir:
        overrides = model_overrides(args.model, basedir)
        configure(overrides, basedir, is_training=training)
        datapoint = first_datapoint() if training else inference_datapoint(overrides, basedir)
        runner = Runner(training, True, datapoint)
        metadata = tf.RunMetadata()
        runner.sess.run(runner.fetches, runner.feed, options=tf.RunOptions(output_partition_graphs=True),
                        run_metadata=metadata)
    rows = node_dtypes(metadata)
    low = {'bfloat16', 'float16'}
    counts = collections.defaultdict(lambda: [0, 0])
    for _, op, types in rows:
        if types & low:
            counts[op][0] += 1
        elif 'float32' in types:
            counts[op][1] += 1
    print('{:<36s} {:>8s} {:>8s}'.format('op type', 'low', 'float32'))
    for op, (n_low, n_fp32) in sorted(counts.items(), key=lambda item: (-item[1][0], item[0])):
        print('{:<36s} {:8d} {:8d}'.format(op, n_low, n_fp32))
    for text in args.grep:
        print('\nnodes whose name contains {!r}:'.format(text))
        for name, op, types in rows:
            if text in name:
                print('  {:<10s} {:<28s} {}'.format('/'.join(sorted(types)) or '-', op, name))
    for wanted in args.ops:
        print('\nlow-precision {} nodes:'.format(wanted))
        for name, op, types in rows:
            if op == wanted and types & low:
                print('  ' + name)


if __name__ == '__main__':
    main()
