#!/usr/bin/env python
"""Run a trained model: COCO evaluation, pictures, a throughput benchmark, or export.

    python predict.py --load train_log/maskrcnn --config DATA.BASEDIR=... --evaluate out.json
    python predict.py --load model.npz --predict a.jpg b.jpg --output-dir pictures/
    python predict.py --load model-5000 --output-pb frozen.pb --output-serving saved_model/

`--load` takes a checkpoint prefix, a `checkpoint` file, a log directory (its newest complete
checkpoint) or an `.npz`. Nothing is ever deleted: pictures that would overwrite an existing
file get a numbered name instead.
"""
import argparse
import itertools
import os
import time

from utils.tf_compat import multi_tower_predictor, session_config  # must come before tensorpack

import cv2
import numpy as np
import tqdm
from tensorpack.predict import OfflinePredictor, PredictConfig
from tensorpack.tfutils import SmartInit
from tensorpack.tfutils.sesscreate import NewSessionCreator
from tensorpack.utils import logger

from config import config as cfg, finalize_configs
from dataset import DatasetRegistry, register_balloon, register_coco, register_shapes
from utils import tensor_names
from utils.training import resolve_model_path


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
    return NewSessionCreator(config=session_config())


def build_model():
    from modeling.generalized_rcnn import ResNetC4Model, ResNetFPNModel
    return ResNetFPNModel() if cfg.MODE_FPN else ResNetC4Model()


def unused_path(directory, stem, suffix='.png'):
    """`directory/stem.png`, or `stem-1.png`, `stem-2.png`, ... if that exists already."""
    os.makedirs(directory, exist_ok=True)
    for k in itertools.count():
        path = os.path.join(directory, stem + ('-{}'.format(k) if k else '') + suffix)
        if not os.path.exists(path):
            return path


def inference_settings():
    return dict(short_edge_size=cfg.PREPROC.TEST_SHORT_EDGE_SIZE, max_size=cfg.PREPROC.MAX_SIZE,
                accurate_paste=cfg.MRCNN.ACCURATE_PASTE)


def do_evaluate(pred_config, output_file):
    from data import get_eval_dataflow
    from eval import multithread_predict_dataflow

    num_towers = max(cfg.TRAIN.NUM_GPUS, 1)
    if cfg.TRAIN.NUM_GPUS > 0:
        predictors = multi_tower_predictor(pred_config, list(range(num_towers))).get_predictors()
    else:
        predictors = [OfflinePredictor(pred_config)]
    all_scores = {}
    for split in cfg.DATA.VAL:
        logger.info('Evaluating {} ...'.format(split))
        dataflows = [get_eval_dataflow(split, shard=k, num_shards=num_towers) for k in range(num_towers)]
        results = multithread_predict_dataflow(dataflows, predictors, **inference_settings())
        output = '{}-{}'.format(output_file, split)
        scores = DatasetRegistry.get(split).eval_inference_results(results, output)
        all_scores[split] = scores
        print('Results of {} (detections written to {}):'.format(split, output))
        for name, value in scores.items():
            print('  {}: {:.4f}'.format(name, value))
    return all_scores


def do_predict(predictor, image_paths, output_dir):
    from common import read_image_bgr
    from eval import predict_image
    from viz import draw_final_outputs

    for path in image_paths:
        image = read_image_bgr(path)
        if image is None:
            raise FileNotFoundError('--predict: cannot read image {}'.format(path))
        results = predict_image(image, predictor, **inference_settings())
        drawn = draw_final_outputs(image, results, cfg.DATA.CLASS_NAMES, cfg.TEST.RESULT_SCORE_THRESH_VIS)
        side_by_side = np.concatenate([image, drawn], axis=1)
        out = unused_path(output_dir, os.path.splitext(os.path.basename(path))[0] + '-pred')
        cv2.imwrite(out, side_by_side)
        logger.info('{}: {} detection(s) -> {}'.format(path, len(results), out))


def do_visualize(model, model_path, output_dir, count):
    from data import get_train_dataflow
    from viz import draw_visualization_grid

    out_names = list(tensor_names.proposal_tensor_names(cfg.MODE_FPN)) + [tensor_names.FASTRCNN_ALL_SCORES] + \
        list(tensor_names.OUTPUT_NAMES)
    predictor = OfflinePredictor(PredictConfig(
        model=model, session_init=SmartInit(model_path), session_creator=_session_creator(),
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

    split = cfg.DATA.VAL[0]
    dataflow = get_eval_dataflow(split)
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
    exporter = ModelExporter(pred_config)
    if output_pb:
        exporter.export_compact(output_pb, optimize=False)
    if output_serving:
        exporter.export_serving(output_serving)


def main(argv=None):
    args = parse_args(argv)
    cfg.update_args(args.config)
    register_coco(cfg.DATA.BASEDIR)
    register_balloon(cfg.DATA.BASEDIR)
    register_shapes(cfg.DATA.BASEDIR)
    finalize_configs(is_training=False)

    model_path = resolve_model_path(args.load)
    model = build_model()
    if args.visualize:
        do_visualize(model, model_path, args.output_dir, args.num_visualize)
        model = build_model()
    pred_config = PredictConfig(
        model=model, session_init=SmartInit(model_path), session_creator=_session_creator(),
        input_names=model.get_inference_tensor_names()[0],
        output_names=model.get_inference_tensor_names()[1])
    if args.output_pb or args.output_serving:
        do_export(pred_config, args.output_pb, args.output_serving)
    if args.evaluate:
        do_evaluate(pred_config, args.evaluate)
    if args.predict or args.benchmark:
        predictor = OfflinePredictor(pred_config)
        if args.predict:
            do_predict(predictor, args.predict, args.output_dir)
        if args.benchmark:
            do_benchmark(predictor)


if __name__ == '__main__':
    main()
