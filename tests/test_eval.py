"""eval.py, the face of the inference/ package: each name it offers is the one of its home module
(the tests of each live in tests/inference/), and viz draws the same detection record."""
import importlib

import eval as evaluation
import viz

HOME = {'inference.detections': ['DetectionResult', 'detection_to_coco'],
        'inference.paste': ['paste_mask'],
        'inference.run': ['InferenceSettings', 'predict_image', 'predict_dataflow', 'multithread_predict_dataflow'],
        'inference.callback': ['EvalSettings', 'epochs_to_evaluate', 'variables_read_by', 'EvalCallback']}


def test_eval_offers_each_name_from_its_home_module():
    assert sorted(evaluation.__all__) == sorted(name for names in HOME.values() for name in names)
    for module, names in HOME.items():
        for name in names:
            assert getattr(evaluation, name) is getattr(importlib.import_module(module), name), name


def test_viz_draws_the_one_detection_record():
    assert viz.DetectionResult is evaluation.DetectionResult
