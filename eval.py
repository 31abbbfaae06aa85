"""Inference on whole images and datasets, and evaluation during training.

`predict_image` -> [DetectionResult] -> `predict_dataflow` -> COCO-style dicts -> the dataset
split's `eval_inference_results`; `EvalCallback` runs that during training. This module is the
face of the inference/ package, which holds the pieces:

    inference/detections.py  DetectionResult, detection_to_coco
    inference/paste.py       paste_mask
    inference/run.py         InferenceSettings, predict_image, predict_dataflow, multithread_predict_dataflow
    inference/callback.py    EvalSettings, EvalCallback
"""
from inference.callback import EvalCallback, EvalSettings, epochs_to_evaluate, variables_read_by
from inference.detections import DetectionResult, detection_to_coco
from inference.paste import paste_mask
from inference.run import InferenceSettings, multithread_predict_dataflow, predict_dataflow, predict_image

__all__ = ['DetectionResult', 'detection_to_coco', 'paste_mask', 'InferenceSettings', 'predict_image',
           'predict_dataflow', 'multithread_predict_dataflow', 'EvalSettings', 'epochs_to_evaluate',
           'variables_read_by', 'EvalCallback']
