"""End to end through the real scripts: train.py and predict.py on a small shapes set.

One tiny model is trained once per session (module fixture) and shared by the tests below:
evaluation beats an untrained model, --predict draws, exports agree with the predictor,
resuming skips a truncated checkpoint, and a non-finite loss stops training with a clear message.
"""
import json
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest

from config import combine_overrides

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PYTHON = sys.executable

# Small and fast on two CPU cores, but a real FPN Mask R-CNN with all its parts.
TINY_MODEL = [
    'MODE_FPN=True', 'MODE_MASK=True', 'DATA.TRAIN=shapes_train', 'DATA.VAL=shapes_val', 'DATA.NUM_WORKERS=0',
    'BACKBONE.RESNET_NUM_BLOCKS=[1,1,1,1]', 'BACKBONE.NORM=GN', 'BACKBONE.FREEZE_AT=0', 'FPN.NORM=GN',
    'FPN.NUM_CHANNEL=64', 'FPN.FRCNN_FC_HEAD_DIM=256', 'MRCNN.HEAD_DIM=64', 'RPN.ANCHOR_SIZES=(16,32,64,128,256)',
    'FRCNN.BATCH_PER_IM=128', 'RPN.TRAIN_PER_LEVEL_NMS_TOPK=500', 'RPN.TEST_PER_LEVEL_NMS_TOPK=300',
    'PREPROC.TRAIN_SHORT_EDGE_SIZE=[160,160]', 'PREPROC.TEST_SHORT_EDGE_SIZE=160', 'PREPROC.MAX_SIZE=160',
    'TRAIN.ACCUMULATE_STEPS=1', 'TRAIN.WARMUP=50', 'TRAIN.WARMUP_INIT_LR=0.01', 'TRAIN.EVAL_PERIOD=0',
]
STEPS_PER_EPOCH = 50
TRAIN_EPOCHS = 8          # 400 steps of one image
# LR_SCHEDULE counts steps of a total batch of 8: one tower runs 8x as many.
TRAINING = TINY_MODEL + ['TRAIN.BASE_LR=0.08', 'TRAIN.STEPS_PER_EPOCH={}'.format(STEPS_PER_EPOCH),
                         'TRAIN.CHECKPOINT_PERIOD=2',
                         'TRAIN.LR_SCHEDULE=[{0},{0},{1}]'.format(35, TRAIN_EPOCHS * STEPS_PER_EPOCH // 8)]

# Measured on a 2-core CPU: the untrained model scores AP50 = 0.000, the trained one ~0.3.
UNTRAINED_AP50_AT_MOST = 0.02
TRAINED_AP50_AT_LEAST = 0.10


def run_script(args, timeout=900, check=True, env=None):
    """Run one of the project's scripts; return the CompletedProcess (stdout + stderr merged).

    env: variables to set on top of this process's environment.
    """
    proc = subprocess.run([PYTHON] + args, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, timeout=timeout, env=dict(os.environ, **(env or {})))
    if check and proc.returncode != 0:
        raise AssertionError('{} failed with {}:\n{}'.format(' '.join(args), proc.returncode, proc.stdout[-6000:]))
    return proc


def ap_scores(output):
    """'  mAP(bbox)/IoU=0.5: 0.1234' lines -> {name: value}."""
    return {m.group(1): float(m.group(2)) for m in re.finditer(r'^\s+(mAP\([a-z]+\)/\S+): (-?[\d.]+)$',
                                                               output, re.M)}


@pytest.fixture(scope='module')
def shapes_dir(tmp_path_factory):
    basedir = str(tmp_path_factory.mktemp('shapes'))
    run_script(['-m', 'dataset.shapes', basedir, '--num-train', '300', '--num-val', '30', '--size', '160'])
    return basedir


@pytest.fixture(scope='module')
def trained(shapes_dir, tmp_path_factory):
    logdir = str(tmp_path_factory.mktemp('logs') / 'tiny')
    config = TRAINING + ['DATA.BASEDIR=' + shapes_dir]
    proc = run_script(['train.py', '--logdir', logdir, '--config'] + config)
    return dict(logdir=logdir, config=config, log=proc.stdout)


def test_training_saves_checkpoints_and_statistics(trained):
    files = os.listdir(trained['logdir'])
    assert 'checkpoint' in files and 'stats.json' in files
    steps = sorted(int(m.group(1)) for m in map(re.compile(r'model-(\d+)\.index$').match, files) if m)
    assert steps[-1] == TRAIN_EPOCHS * STEPS_PER_EPOCH
    with open(os.path.join(trained['logdir'], 'stats.json')) as f:
        stats = json.load(f)
    assert len(stats) == TRAIN_EPOCHS
    # total_cost is a moving average over single-image steps, noisy at this size: one late epoch
    # above the first was seen once; a run that learns has its late epochs below the first.
    late = [epoch['total_cost'] for epoch in stats[TRAIN_EPOCHS // 2:]]
    assert min(late) < stats[0]['total_cost'], [epoch['total_cost'] for epoch in stats]


def test_evaluation_beats_an_untrained_model(trained, shapes_dir, tmp_path):
    # An "untrained" run: same model, learning rate ~0 (0 is refused), one epoch -> the initial weights.
    untrained_dir = str(tmp_path / 'untrained')
    untrained_config = [c for c in TINY_MODEL if not c.startswith('TRAIN.WARMUP_INIT_LR=')] + [
        'DATA.BASEDIR=' + shapes_dir, 'TRAIN.BASE_LR=1e-30', 'TRAIN.WARMUP_INIT_LR=0.',
        'TRAIN.STEPS_PER_EPOCH=8', 'TRAIN.LR_SCHEDULE=[1,1,1]']
    run_script(['train.py', '--logdir', untrained_dir, '--config'] + untrained_config)

    scores = {}
    for name, logdir in (('trained', trained['logdir']), ('untrained', untrained_dir)):
        out = str(tmp_path / (name + '.json'))
        proc = run_script(['predict.py', '--load', logdir, '--evaluate', out, '--config'] + trained['config'])
        scores[name] = ap_scores(proc.stdout)
        assert os.path.isfile(out + '-shapes_val')
        if name == 'trained':   # the per-class AP table is printed and stored beside the json
            assert 'Per-class AP (also in {}-shapes_val.per_class.txt)'.format(out) in proc.stdout
            assert os.path.isfile(out + '-shapes_val.per_class.json')
    print('AP50 trained {:.3f}, untrained {:.3f}'.format(scores['trained']['mAP(bbox)/IoU=0.5'],
                                                         scores['untrained']['mAP(bbox)/IoU=0.5']))
    assert scores['untrained']['mAP(bbox)/IoU=0.5'] <= UNTRAINED_AP50_AT_MOST
    assert scores['trained']['mAP(bbox)/IoU=0.5'] >= TRAINED_AP50_AT_LEAST
    assert scores['trained']['mAP(segm)/IoU=0.5'] > scores['untrained']['mAP(segm)/IoU=0.5']


def test_predict_writes_a_picture_and_never_overwrites(trained, shapes_dir, tmp_path):
    import cv2
    image = os.path.join(shapes_dir, 'shapes_val', '000001.jpg')
    args = ['predict.py', '--load', trained['logdir'], '--predict', image, '--output-dir', str(tmp_path),
            '--config'] + trained['config']
    run_script(args)
    run_script(args)
    first, second = tmp_path / '000001-pred.png', tmp_path / '000001-pred-1.png'
    assert first.is_file() and second.is_file()
    picture = cv2.imread(str(first))
    source = cv2.imread(image)
    assert picture.shape == (source.shape[0], source.shape[1] * 2, 3)   # input | drawn predictions


def test_exported_graphs_match_the_predictor(trained, shapes_dir, tmp_path):
    pb, serving = str(tmp_path / 'model.pb'), str(tmp_path / 'serving')
    run_script(['predict.py', '--load', trained['logdir'], '--output-pb', pb, '--output-serving', serving,
                '--config'] + trained['config'])

    # A resized image, as the exported graphs take it.
    import cv2
    image = cv2.imread(os.path.join(shapes_dir, 'shapes_val', '000002.jpg')).astype(np.float32)
    image_path = str(tmp_path / 'image.npy')
    np.save(image_path, image)

    # Plain TensorFlow, in a fresh interpreter that cannot import this project.
    plain_tf = str(tmp_path / 'plain_tf.npz')
    script = PLAIN_TF_SCRIPT.format(pb=pb, serving=serving, image=image_path, out=plain_tf)
    proc = subprocess.run([PYTHON, '-I', '-c', script], cwd=str(tmp_path), stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-4000:]
    exported = np.load(plain_tf)

    expected = _predictor_outputs(trained, shapes_dir, image)
    assert len(expected[0]) > 0, 'the trained model should detect something on this image'
    for kind in ('pb', 'serving'):
        for name, value in zip(('boxes', 'scores', 'labels', 'masks'), expected):
            np.testing.assert_allclose(exported['{}_{}'.format(kind, name)], value, atol=1e-4,
                                       err_msg='{} {}'.format(kind, name))


PLAIN_TF_SCRIPT = '''
import numpy as np, tensorflow as tf
image = np.load({image!r})
names = ['output/boxes:0', 'output/scores:0', 'output/labels:0', 'output/masks:0']
result = {{}}
graph_def = tf.compat.v1.GraphDef()
with open({pb!r}, 'rb') as f:
    graph_def.ParseFromString(f.read())
with tf.Graph().as_default() as g:
    tf.compat.v1.import_graph_def(graph_def, name='')
    with tf.compat.v1.Session(graph=g) as sess:
        out = sess.run(names, {{'image:0': image}})
for key, value in zip(['boxes', 'scores', 'labels', 'masks'], out):
    result['pb_' + key] = value
with tf.Graph().as_default() as g:
    with tf.compat.v1.Session(graph=g) as sess:
        meta = tf.compat.v1.saved_model.loader.load(sess, ['serve'], {serving!r})
        out = sess.run(names, {{'image:0': image}})
for key, value in zip(['boxes', 'scores', 'labels', 'masks'], out):
    result['serving_' + key] = value
np.savez({out!r}, **result)
'''


def _predictor_outputs(trained, shapes_dir, image):
    from tensorpack.predict import OfflinePredictor, PredictConfig
    from tensorpack.tfutils import SmartInit

    from config import config as cfg, finalize_configs
    from dataset import register_shapes
    from modeling.generalized_rcnn import build_model
    from utils.checkpoints import resolve_model_path

    cfg.update_args(trained['config'])
    register_shapes(shapes_dir)
    finalize_configs(is_training=False)
    model = build_model(cfg)
    in_names, out_names = model.get_inference_tensor_names()
    predictor = OfflinePredictor(PredictConfig(model=model, session_init=SmartInit(resolve_model_path(
        trained['logdir'])), input_names=in_names, output_names=out_names))
    return predictor(image)


def test_resume_skips_a_truncated_checkpoint_and_continues(trained, tmp_path):
    logdir = str(tmp_path / 'resumed')
    shutil.copytree(trained['logdir'], logdir)
    last = TRAIN_EPOCHS * STEPS_PER_EPOCH
    data_file = [f for f in os.listdir(logdir) if f.startswith('model-{}.data'.format(last))][0]
    with open(os.path.join(logdir, data_file), 'r+b') as f:
        f.truncate(64)

    # The same schedule: training must pick up after the newest *complete* checkpoint and redo the rest.
    proc = run_script(['train.py', '--logdir', logdir, '--config'] + trained['config'])
    resumed_step = last - 2 * STEPS_PER_EPOCH     # CHECKPOINT_PERIOD=2: the previous checkpoint
    assert 'Skipping incomplete or unreadable checkpoint' in proc.stdout
    assert 'model-{}'.format(resumed_step) in re.search(r'Resuming from (\S+)', proc.stdout).group(1)
    assert 'continuing with epoch {}'.format(resumed_step // STEPS_PER_EPOCH + 1) in proc.stdout
    assert 'Epoch {} (global_step {}) finished'.format(TRAIN_EPOCHS, last) in proc.stdout

    from utils.checkpoints import checkpoint_global_step, latest_complete_checkpoint
    newest = latest_complete_checkpoint(logdir)
    assert newest.endswith('model-{}'.format(last)) and checkpoint_global_step(newest) == last


def test_non_finite_loss_stops_training_with_a_clear_message(shapes_dir, tmp_path):
    # A zero pixel std divides the image by zero: the very first loss is not finite.
    config = TINY_MODEL + ['DATA.BASEDIR=' + shapes_dir, 'PREPROC.PIXEL_STD=[0.,0.,0.]',
                           'TRAIN.STEPS_PER_EPOCH=20', 'TRAIN.LR_SCHEDULE=[10,10,20]']
    proc = run_script(['train.py', '--logdir', str(tmp_path / 'nan'), '--config'] + config, check=False)
    assert proc.returncode != 0
    match = re.search(r'non-finite loss at step (\d+): (.*)', proc.stdout)
    assert match, proc.stdout[-3000:]
    assert int(match.group(1)) <= 3
    assert 'total_cost=' in match.group(2)


def test_visualize_and_benchmark(trained, tmp_path):
    proc = run_script(['predict.py', '--load', trained['logdir'], '--visualize', '--num-visualize', '2',
                       '--benchmark', '--output-dir', str(tmp_path), '--config'] + trained['config'])
    import cv2
    grids = sorted((tmp_path / 'visualize').iterdir())
    assert [p.name for p in grids] == ['0000.png', '0001.png']
    grid = cv2.imread(str(grids[0]))
    assert grid.shape[0] >= 2 * 160 and grid.shape[1] >= 2 * 160     # 2x2 panels of the 160 px images
    assert re.search(r'shapes_val: [\d.]+ images/second', proc.stdout)


def test_load_skips_and_lists_variables_of_another_class_count(trained, tmp_path):
    # The shapes model (3 classes) fine-tuned on balloons (1 class): class-specific layers differ.
    run_script(['-m', 'dataset.balloon', '--make-demo', str(tmp_path / 'data'), '--num-train', '4',
                '--num-val', '2', '--size', '160'])
    config = [c for c in TINY_MODEL if not c.startswith('DATA.')] + [
        'DATA.BASEDIR={}'.format(tmp_path / 'data' / 'balloon'), 'DATA.TRAIN=balloon_train',
        'DATA.VAL=balloon_val', 'DATA.NUM_WORKERS=0', 'TRAIN.STEPS_PER_EPOCH=4', 'TRAIN.LR_SCHEDULE=[1,1,1]']
    proc = run_script(['train.py', '--load', trained['logdir'], '--logdir', str(tmp_path / 'finetune'),
                       '--config'] + config)
    skipped = set(re.findall(r"Cannot load an array of shape \([^)]*\) into variable '([^']+)'", proc.stdout))
    assert {'fastrcnn/outputs/class/W', 'fastrcnn/outputs/box/W', 'maskrcnn/conv/W'} <= skipped
    assert not any(name.startswith(('group', 'fpn/', 'rpn/')) for name in skipped)
    # the run starts at step 0, not at the loaded checkpoint's step, and trains its 8 steps
    assert (tmp_path / 'finetune' / 'model-8.index').is_file(), sorted(os.listdir(tmp_path / 'finetune'))


@pytest.mark.parametrize('onednn', ['0', '1'])
def test_training_on_images_without_objects(tmp_path, onednn):
    """Half the training images have no annotation and are kept: the mask head and the box head
    then get no foreground rois. oneDNN's convolutions used to crash on that (see NOTES.md), so
    the run is made with oneDNN forced off and forced on, whatever the host's default."""
    basedir = str(tmp_path / 'shapes')
    run_script(['-m', 'dataset.shapes', basedir, '--num-train', '8', '--num-val', '2', '--size', '128'])
    json_path = os.path.join(basedir, 'annotations', 'instances_shapes_train.json')
    with open(json_path) as f:
        coco = json.load(f)
    negatives = {image['id'] for image in coco['images'][::2]}
    coco['annotations'] = [a for a in coco['annotations'] if a['image_id'] not in negatives]
    with open(json_path, 'w') as f:
        json.dump(coco, f)

    logdir = str(tmp_path / 'train_log')
    config = combine_overrides(TINY_MODEL, ['DATA.BASEDIR=' + basedir, 'DATA.FILTER_EMPTY_ANNOTATIONS=False',
                                            'PREPROC.TRAIN_SHORT_EDGE_SIZE=[128,128]', 'PREPROC.MAX_SIZE=128',
                                            'TRAIN.STEPS_PER_EPOCH=12', 'TRAIN.LR_SCHEDULE=[2,2,3]', 'TRAIN.WARMUP=4'])
    proc = run_script(['train.py', '--logdir', logdir, '--config'] + config,
                      env={'TF_ENABLE_ONEDNN_OPTS': onednn})
    assert 'oneDNN: {}'.format('on' if onednn == '1' else 'off') in proc.stdout
    assert 'Filtered 0 images which contain no non-crowd groundtruth boxes. Total #images for training: 8' \
        in proc.stdout
    with open(os.path.join(logdir, 'stats.json')) as f:
        stats = json.load(f)
    assert len(stats) == 2 and all(np.isfinite(epoch['total_cost']) for epoch in stats)


# TRAIN.BATCH_SIZE_PER_GPU=2 with the accumulation it implies: 1 tower x 2 images x 4 steps = 8 images per
# update. The schedule counts 8-image steps: [1, 1, 2] is 2 x 8 / 2 = 8 steps of 2 images, 2 epochs of 4,
# i.e. 2 updates. A checkpoint after each epoch; one evaluation, at the end. With Cascade R-CNN, the batched
# graph with the most per-image steps (plain FPN with N = 2 runs through train.py in tests/test_horovod.py;
# tests/modeling/test_batched_training.py checks its graph).
TWO_PER_TOWER_STEPS_PER_EPOCH = 4
TWO_PER_TOWER = combine_overrides(TINY_MODEL, [
    'TRAIN.BATCH_SIZE_PER_GPU=2', 'TRAIN.ACCUMULATE_STEPS=None', 'PREPROC.TRAIN_SHORT_EDGE_SIZE=[96,128]',
    'PREPROC.MAX_SIZE=128', 'TRAIN.STEPS_PER_EPOCH={}'.format(TWO_PER_TOWER_STEPS_PER_EPOCH),
    'TRAIN.LR_SCHEDULE=[1,1,2]', 'TRAIN.WARMUP=2', 'TRAIN.CHECKPOINT_PERIOD=1', 'TRAIN.EVAL_PERIOD=2',
    'FPN.CASCADE=True'])


@pytest.fixture(scope='module')
def trained_two_per_tower(tmp_path_factory):
    basedir = str(tmp_path_factory.mktemp('shapes_small'))
    run_script(['-m', 'dataset.shapes', basedir, '--num-train', '8', '--num-val', '2', '--size', '128'])
    logdir = str(tmp_path_factory.mktemp('logs') / 'two_per_tower')
    config = TWO_PER_TOWER + ['DATA.BASEDIR=' + basedir]
    proc = run_script(['train.py', '--logdir', logdir, '--config'] + config)
    with open(os.path.join(logdir, 'stats.json')) as f:
        stats = json.load(f)
    return dict(logdir=logdir, config=config, log=proc.stdout, stats=stats)


def _accumulation_counter(prefix):
    """The AccumGrad/counter of checkpoint `prefix`: the steps accumulated since the start."""
    from utils.tf_compat import tf
    return int(tf.train.NewCheckpointReader(prefix).get_tensor('AccumGrad/counter'))


def test_training_with_two_images_per_tower(trained_two_per_tower):
    """TRAIN.BATCH_SIZE_PER_GPU=2 with Cascade R-CNN through train.py: batched steps with finite losses
    (every stage's), 4 accumulated steps per update, and a checkpoint per epoch."""
    log, stats = trained_two_per_tower['log'], trained_two_per_tower['stats']
    assert 'gradient accumulation: 4 step(s), images per tower: 2' in log and 'Max epoch: 2' in log
    assert len(stats) == 2 and all(np.isfinite(epoch['total_cost']) for epoch in stats)
    stage_losses = ['cascade_loss_stage{}/fastrcnn_losses/{}'.format(stage, loss)
                    for stage in (1, 2, 3) for loss in ('label_loss', 'box_loss')]
    assert all(np.isfinite(epoch[key]) for epoch in stats for key in stage_losses)
    assert [epoch['global_step'] for epoch in stats] == [4, 8]
    from utils.checkpoints import latest_complete_checkpoint
    assert _accumulation_counter(latest_complete_checkpoint(trained_two_per_tower['logdir'])) == 8


def test_evaluation_during_training_with_two_images_per_tower(trained_two_per_tower):
    """TRAIN.EVAL_PERIOD=2 of 2 epochs: EvalCallback's predictor (the one-image inference graph of the
    batched model) evaluates once, after the last epoch, and its mAP goes to the statistics."""
    log, stats = trained_two_per_tower['log'], trained_two_per_tower['stats']
    assert log.count('Running evaluation on shapes_val') == 1
    assert 'shapes_val-mAP(bbox)/IoU=0.5' not in stats[0]
    for key in ('shapes_val-mAP(bbox)/IoU=0.5', 'shapes_val-mAP(segm)/IoU=0.5'):
        assert 0. <= stats[1][key] <= 1., stats[1]
    assert os.path.isfile(os.path.join(trained_two_per_tower['logdir'], 'shapes_val-outputs8.json'))


def test_resume_with_two_images_per_tower(trained_two_per_tower, tmp_path):
    """A run stopped after epoch 1 (its checkpoint model-4 and statistics only) resumes from it: epoch 2
    runs steps 5-8 at the learning rate of the uninterrupted run, and the accumulation counter goes on
    from 4 (restored, not restarted), so the update still falls on step 8."""
    logdir = str(tmp_path / 'resumed')
    shutil.copytree(trained_two_per_tower['logdir'], logdir)
    for name in os.listdir(logdir):
        if name.startswith('model-8.'):
            os.remove(os.path.join(logdir, name))
    with open(os.path.join(logdir, 'stats.json'), 'w') as f:
        json.dump(trained_two_per_tower['stats'][:1], f)

    config = combine_overrides(trained_two_per_tower['config'], ['TRAIN.EVAL_PERIOD=0'])   # tested above
    proc = run_script(['train.py', '--logdir', logdir, '--config'] + config)
    assert 'model-4' in re.search(r'Resuming from (\S+)', proc.stdout).group(1)
    assert 'continuing with epoch 2' in proc.stdout
    assert 'Epoch 2 (global_step 8) finished' in proc.stdout

    from utils.checkpoints import checkpoint_global_step, latest_complete_checkpoint
    newest = latest_complete_checkpoint(logdir)
    assert newest.endswith('model-8') and checkpoint_global_step(newest) == 8
    assert _accumulation_counter(newest) == 8
    with open(os.path.join(logdir, 'stats.json')) as f:
        stats = json.load(f)
    assert [epoch['global_step'] for epoch in stats] == [4, 8]
    assert np.isfinite(stats[1]['total_cost'])
    assert stats[1]['learning_rate'] == pytest.approx(trained_two_per_tower['stats'][1]['learning_rate'])
