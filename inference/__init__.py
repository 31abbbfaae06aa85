"""Inference on images and datasets; `eval.py` is its face.

    detections  DetectionResult, the one record of a detection, and its COCO result dict
    paste       mask probabilities of a box -> binary mask of the whole image
    run         predict_image / predict_dataflow: resize, run the graph, map results back
    callback    EvalCallback: evaluation during training, from settings passed in
"""
