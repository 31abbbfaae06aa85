"""EvalCallback of inference/callback.py, with its settings, predictors, dataflows and dataset faked."""
import sys
import types

import numpy as np
import pytest

from inference import callback as evaluation
from inference.run import InferenceSettings
from tests.inference.fakes import SETTINGS, FakeModel, ListDataFlow


def _settings(**changes):
    settings = evaluation.EvalSettings(inference=InferenceSettings(**SETTINGS), eval_period=2, num_gpus=0,
                                       horovod=False, test_amp=False, train_amp=False)
    return settings._replace(**changes)


def test_epochs_to_evaluate():
    assert evaluation.epochs_to_evaluate(3, 10) == {3, 6, 9, 10}
    assert evaluation.epochs_to_evaluate(5, 10) == {5, 10}
    with pytest.raises(ValueError, match='EVAL_PERIOD'):
        evaluation.epochs_to_evaluate(0, 10)


def test_eval_callback_puts_scores_into_monitors(monkeypatch, tmp_path):
    """The replicated path of `_eval`, with predictors, dataflows and the dataset faked."""
    seen = {}

    class FakeSplit:
        def eval_inference_results(self, results, output=None):
            seen['results'], seen['output'] = results, output
            return {'mAP(bbox)/IoU=0.5:0.95': 0.25}

    fake_dataset = types.ModuleType('dataset')
    fake_dataset.DatasetRegistry = types.SimpleNamespace(get=lambda name: FakeSplit())
    fake_dataset.file_label = lambda name: name
    monkeypatch.setitem(sys.modules, 'dataset', fake_dataset)

    scalars = {}
    trainer = types.SimpleNamespace(
        epoch_num=2, global_step=40, max_epoch=4,
        monitors=types.SimpleNamespace(put_scalar=lambda name, value: scalars.update({name: value})))
    callback = evaluation.EvalCallback('toy_val', ['image'], ['output/boxes'], str(tmp_path), _settings())
    callback.trainer = trainer
    callback._predictors = [FakeModel(False)]
    callback._dataflows = [ListDataFlow([(np.zeros((60, 80, 3), np.uint8), 5)])]
    callback._before_train()
    callback._trigger_epoch()
    assert scalars == {'toy_val-mAP(bbox)/IoU=0.5:0.95': 0.25}
    assert len(seen['results']) == 2 and seen['output'].startswith(str(tmp_path))


@pytest.mark.parametrize('num_gpus, devices', [(0, [-1]), (2, [0, 1, 0, 1])])
def test_eval_callback_builds_one_predictor_per_shard(monkeypatch, num_gpus, devices):
    from dataflow import build

    shards = []
    monkeypatch.setattr(build, 'get_eval_dataflow',
                        lambda name, shard, num_shards, apply_exif_orientation:
                        shards.append((name, shard, num_shards, apply_exif_orientation)) or shard)
    built = []
    trainer = types.SimpleNamespace(
        max_epoch=7, get_predictor=lambda in_names, out_names, device: built.append(device) or device)
    callback = evaluation.EvalCallback('toy_val', ['image'], ['output/boxes'], '/nonexistent',
                                       _settings(num_gpus=num_gpus, eval_period=3))
    callback.trainer = trainer
    callback._setup_graph()
    callback._before_train()
    assert built == devices
    assert shards == [('toy_val', k, len(devices), True) for k in range(len(devices))]   # EXIF: 'apply'
    assert callback._epochs_to_eval == {3, 6, 7}


def test_eval_settings_from_config_read_their_keys():
    from config import Devices, finalize_configs, new_config
    from dataset import DatasetRegistry

    DatasetRegistry.register('evalsettings_split', lambda: None)
    DatasetRegistry.register_metadata('evalsettings_split', 'class_names', ['BG', 'thing'])
    cfg = new_config()   # the global config stays untouched
    cfg.update_args(['TRAIN.EVAL_PERIOD=4', 'PREPROC.TEST_SHORT_EDGE_SIZE=96', 'MRCNN.ACCURATE_PASTE=False',
                     'TEST.AMP=True', 'TRAINER=horovod', 'DATA.TRAIN=evalsettings_split',
                     'DATA.VAL=evalsettings_split', 'PREPROC.MAX_SIZE=1333'])
    finalize_configs(is_training=False, devices=Devices(3, None, 'NHWC'), cfg=cfg)
    settings = evaluation.EvalSettings.from_config(cfg)
    # FPN rounds the long-edge cap up to a multiple of 32; the towers are the devices found
    assert settings.inference == InferenceSettings(short_edge_size=96, max_size=1344., accurate_paste=False)
    assert (settings.eval_period, settings.horovod) == (4, True)
    assert (settings.test_amp, settings.train_amp) == (True, False)
    assert settings.num_gpus == 3
