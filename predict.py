#!/usr/bin/env python
"""Run a trained model: COCO evaluation, pictures, a throughput benchmark, or export.

    python predict.py --load train_log/maskrcnn --config DATA.BASEDIR=... --evaluate out.json
    python predict.py --load model.npz --predict a.jpg b.jpg --output-dir pictures/
    python predict.py --load model-5000 --output-pb frozen.pb --output-serving saved_model/

`--load` takes a checkpoint prefix, a `checkpoint` file, a log directory (its newest complete
checkpoint) or an `.npz`; it must hold every variable of the inference graph with the graph's
shape (else a ValueError names them and the config key that likely differs). Nothing is ever
overwritten or deleted: pictures and `--evaluate` results that would overwrite an existing
file get a numbered name instead. An image of --predict that cannot be read is reported and
skipped; the exit code is then 1.
"""
import argparse
import itertools
import os
import sys
import time

from utils.tf_compat import (  # must come before tensorpack
    amp_compute_dtype, check_amp_supported, configure_cudnn_autotune, detect_devices, multi_tower_predictor,
    onednn_enabled, session_config)

import cv2
import numpy as np
import tqdm
from tensorpack.predict import OfflinePredictor, PredictConfig
from tensorpack.tfutils.sesscreate import NewSessionCreator
from tensorpack.utils import logger

from config import config as cfg, finalize_configs
from dataset import DatasetRegistry, register_balloon, register_coco, register_shapes
from dataset.dataset import file_label
from utils import tensor_names
from utils.checkpoint_check import CheckedRestore
from utils.checkpoints import resolve_model_path


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--load', required=True, help='checkpoint prefix, checkpoint file, log directory or .npz')
    parser.add_argument('--config', nargs='+', default=[], metavar='KEY=VALUE', help='config overrides')
    what = parser.add_argument_group('what to do (any combination)')
    what.add_argument('--evaluate', metavar='OUT.json',
                      help='evaluate every DATA.VAL split with COCO metrics; writes OUT.json-<split>')
    what.add_argument('--predict', nargs='+', metavar='IMAGE', help='draw predictions for these images')
    what.add_argument('--visualize', action='store_true',
                      help='2x2 pictures of training images: ground truth, best proposals, their scores, results')
    what.add_argument('--benchmark', action='store_true', help='images per second over DATA.VAL[0]')
    what.add_argument('--output-pb', metavar='FILE', help='export a frozen inference graph')
    what.add_argument('--output-serving', metavar='DIR', help='export a TensorFlow SavedModel')
    parser.add_argument('--output-dir', default='.', help='where --predict and --visualize write PNG files')
    parser.add_argument('--num-visualize', type=int, default=20, help='images drawn by --visualize')
    args = parser.parse_args(argv)
    if not any([args.evaluate, args.predict, args.visualize, args.benchmark, args.output_pb, args.output_serving]):
        parser.error('nothing to do: give --evaluate, --predict, --visualize, --benchmark, --output-pb '
                     'or --output-serving')
    return args


def _session_creator():
    """The session of every predictor here; TEST.AMP switches on the mixed-precision rewrite."""
    return NewSessionCreator(config=session_config(amp=cfg.TEST.AMP))


def inference_precision():
    """'float32', or the compute type of TEST.AMP on this device ('bfloat16' / 'float16')."""
    return amp_compute_dtype() if cfg.TEST.AMP else 'float32'


def precision_note_paths(output_pb, output_serving):
    """Where an export records its precision: FILE.precision.json next to a frozen graph, and
    assets.extra/precision.json in a SavedModel (a folder TensorFlow's loaders leave alone)."""
    paths = []
    if output_pb:
        paths.append(output_pb + '.precision.json')
    if output_serving:
        paths.append(os.path.join(output_serving, 'assets.extra', 'precision.json'))
    return paths


def write_precision_note(path):
    import json
    rewrite = {'float32': None, 'bfloat16': 'auto_mixed_precision_onednn_bfloat16',
               'float16': 'auto_mixed_precision'}[inference_precision()]
    note = {
        'TEST.AMP': bool(cfg.TEST.AMP),
        'compute_dtype': inference_precision(),
        'graph_dtype': 'float32',
        'note': ('The exported graph and its constants are float32. ' + (
            'It was made with TEST.AMP=True: run it with the Grappler option '
            'graph_options.rewrite_options.{}=ON in the session config to compute in {}.'.format(
                rewrite, inference_precision()) if rewrite else 'It was made with TEST.AMP=False.')),
    }
    os.makedirs(os.path.dirname(path) or '.', exist_ok=True)
    with open(path, 'x') as f:   # 'x': never overwrite
        json.dump(note, f, indent=1)
    logger.info('Export precision ({}) noted in {}'.format(inference_precision(), path))


def build_model():
    from modeling.generalized_rcnn import build_model as build_rcnn
    return build_rcnn(cfg)


def unused_path(directory, stem, suffix='.png'):
    """`directory/stem.png`, or `stem-1.png`, `stem-2.png`, ... if that exists already."""
    os.makedirs(directory or '.', exist_ok=True)
    for k in itertools.count():
        path = os.path.join(directory, stem + ('-{}'.format(k) if k else '') + suffix)
        if not os.path.exists(path):
            return path


def evaluation_output_path(output_file, split):
    """`OUT.json-<split>`, or `OUT.json-<split>-1`, ... if that exists already (never overwritten).
    A split name with a path in it is shortened by `file_label`."""
    wanted = '{}-{}'.format(output_file, file_label(split))
    path = unused_path(os.path.dirname(wanted), os.path.basename(wanted), suffix='')
    if path != wanted:
        logger.warn('{} exists already; writing the detections of {} to {} instead.'.format(wanted, split, path))
    return path


def inference_settings():
    from eval import InferenceSettings
    return InferenceSettings.from_config(cfg)._asdict()


def do_evaluate(pred_config, output_file):
    from data import get_eval_dataflow
    from eval import multithread_predict_dataflow

    num_towers = cfg.derived.num_towers
    if cfg.derived.num_gpus > 0:
        predictors = multi_tower_predictor(pred_config, list(range(num_towers))).get_predictors()
    else:
        predictors = [OfflinePredictor(pred_config)]
    all_scores = {}
    for split in cfg.derived.val_splits:
        logger.info('Evaluating {} ...'.format(split))
        dataflows = [get_eval_dataflow(split, shard=k, num_shards=num_towers,
                                       apply_exif_orientation=cfg.DATA.EXIF_ORIENTATION == 'apply')
                     for k in range(num_towers)]
        results = multithread_predict_dataflow(dataflows, predictors, **inference_settings())
        output = evaluation_output_path(output_file, split)
        scores = DatasetRegistry.get(split).eval_inference_results(results, output)
        all_scores[split] = scores
        print('Results of {} (detections written to {}):'.format(split, output))
        for name, value in scores.items():
            print('  {}: {:.4f}'.format(name, value))
        _print_per_class(output)
    return all_scores


def _print_per_class(output):
    from dataset.coco_eval import per_class_paths
    table_path = per_class_paths(output)[0]
    if os.path.isfile(table_path):   # splits that evaluate with dataset.coco_eval write it
        with open(table_path) as f:
            print('Per-class AP (also in {}):\n{}'.format(table_path, f.read().rstrip()))


def do_predict(predictor, image_paths, output_dir):
    """Draw the predictions of each image; returns [(path, reason)] of those that failed.

    An image that cannot be read (missing, corrupt, truncated) or predicted is logged and
    skipped, and the others are still done.
    """
    from common import read_image_bgr
    from eval import predict_image
    from viz import draw_final_outputs

    failures = []
    for path in image_paths:
        try:
            image = read_image_bgr(path, apply_exif_orientation=cfg.DATA.EXIF_ORIENTATION == 'apply')
            results = predict_image(image, predictor, **inference_settings())
            drawn = draw_final_outputs(image, results, cfg.DATA.CLASS_NAMES, cfg.TEST.RESULT_SCORE_THRESH_VIS)
            out = unused_path(output_dir, os.path.splitext(os.path.basename(path))[0] + '-pred')
            if not cv2.imwrite(out, np.concatenate([image, drawn], axis=1)):
                raise OSError('cannot write {}'.format(out))
        except Exception as err:   # noqa: BLE001 - one bad image must not stop the others
            logger.error('--predict: {} failed: {}'.format(path, err))
            failures.append((path, str(err)))
            continue
        logger.info('{}: {} detection(s) -> {}'.format(path, len(results), out))
    return failures


def do_visualize(model, model_path, output_dir, count):
    from data import get_train_dataflow
    from viz import draw_visualization_grid

    out_names = list(tensor_names.proposal_tensor_names(cfg.MODE_FPN)) + [tensor_names.FASTRCNN_ALL_SCORES] + \
        list(tensor_names.OUTPUT_NAMES)
    predictor = OfflinePredictor(PredictConfig(
        model=model, session_init=CheckedRestore(model_path), session_creator=_session_creator(),
        input_names=[tensor_names.IMAGE], output_names=out_names))
    dataflow = get_train_dataflow()   # resized and flipped like training images, with their gt boxes
    dataflow.reset_state()
    for idx, sample in enumerate(tqdm.tqdm(itertools.islice(dataflow, count), total=count, desc='visualize')):
        outputs = predictor(sample[tensor_names.IMAGE])
        grid = draw_visualization_grid(sample, dict(zip(out_names, outputs)), cfg.DATA.CLASS_NAMES)
        cv2.imwrite(unused_path(os.path.join(output_dir, 'visualize'), '{:04d}'.format(idx)), grid)


def do_benchmark(predictor):
    from data import get_eval_dataflow
    from eval import predict_image

    split = cfg.derived.val_splits[0]
    dataflow = get_eval_dataflow(split, apply_exif_orientation=cfg.DATA.EXIF_ORIENTATION == 'apply')
    dataflow.reset_state()
    images = 0
    start = None
    for image, _ in tqdm.tqdm(dataflow, total=len(dataflow), desc='benchmark ' + split):
        predict_image(image, predictor, **inference_settings())
        images += 1
        if images == 1:
            start = time.perf_counter()   # the first image includes graph warm-up
    if images > 1:
        rate = (images - 1) / (time.perf_counter() - start)
        print('{}: {:.3f} images/second ({:.3f} s/image) over {} images'.format(split, rate, 1 / rate, images - 1))


def do_export(pred_config, output_pb, output_serving):
    from tensorpack.tfutils.export import ModelExporter
    for path in precision_note_paths(output_pb, output_serving):
        if os.path.exists(path):
            raise ValueError('{} exists already; choose another export path (nothing is overwritten).'
                                  .format(path))
    exporter = ModelExporter(pred_config)
    if output_pb:
        exporter.export_compact(output_pb, optimize=False)
    if output_serving:
        exporter.export_serving(output_serving)
    for path in precision_note_paths(output_pb, output_serving):
        write_precision_note(path)


def main(argv=None):
    """Returns the exit code: 0, or 1 if some --predict images failed (errors raise)."""
    args = parse_args(argv)
    cfg.update_args(args.config)
    basedir = os.path.expanduser(cfg.DATA.BASEDIR)
    register_coco(basedir, cfg.DATA.ROIDB_CACHE)
    register_balloon(basedir)
    register_shapes(basedir)
    finalize_configs(is_training=False, devices=detect_devices(cfg.TRAINER, setup_horovod=False))
    configure_cudnn_autotune(False, cfg.derived.train_short_edge_size)
    if cfg.TEST.AMP:
        check_amp_supported('TEST.AMP')
    logger.info('Inference precision: {} (TEST.AMP={}); oneDNN {}.'.format(
        inference_precision(), cfg.TEST.AMP, 'on' if onednn_enabled() else 'off'))

    model_path = resolve_model_path(args.load)
    model = build_model()
    if args.visualize:
        do_visualize(model, model_path, args.output_dir, args.num_visualize)
        model = build_model()
    pred_config = PredictConfig(
        model=model, session_init=CheckedRestore(model_path), session_creator=_session_creator(),
        input_names=model.get_inference_tensor_names()[0],
        output_names=model.get_inference_tensor_names()[1])
    if args.output_pb or args.output_serving:
        do_export(pred_config, args.output_pb, args.output_serving)
    if args.evaluate:
        do_evaluate(pred_config, args.evaluate)
    failures = []
    if args.predict or args.benchmark:
        predictor = OfflinePredictor(pred_config)
        if args.predict:
            failures = do_predict(predictor, args.predict, args.output_dir)
        if args.benchmark:
            do_benchmark(predictor)
    if failures:
        sys.stdout.flush()
        print('predict.py: {} of {} --predict image(s) failed: {}'.format(
            len(failures), len(args.predict), '; '.join('{} ({})'.format(*f) for f in failures)), file=sys.stderr)
        return 1
    return 0


if __name__ == '__main__':
    try:
        exit_code = main()
    finally:
        sys.stdout.flush()   # the logs come first: an error's traceback and message are the last lines
    sys.exit(exit_code)
