"""The items of tools/gpu_check.py: each takes the run's context and returns one Result (PASS /
FAIL / SKIP with a figure); and the NCHW / NHWC probe that one of them runs as a child process.

The runner (tools/gpu_check.py) gives each item a context with `dry_run`, `sizes` (its FULL or
DRY), `runner` (runs a script with a log file), `workdir`, `data_dir`, `extra_config`, `memory`
(the GPU memory sampler) and fields the items fill in for later ones (`num_gpus`, `horovod_ok`,
`horovod_controllers`, `checkpoint_dir`).
"""
import json
import math
import os
import re
import shutil
import sys
from collections import namedtuple

from utils.logs import monitor_values

Result = namedtuple('Result', ['name', 'status', 'figure'])
PASS, FAIL, SKIP = 'PASS', 'FAIL', 'SKIP'

DRY_TOWERS = 2
# NCHW on the GPU against NHWC on the CPU: float32 with TF32 off, different kernels and summation orders.
TOLERANCE = {'scores': 1e-3, 'boxes': 0.05, 'masks': 1e-3}   # probabilities; pixels of the resized image


def python_cmd(*args):
    return [sys.executable] + list(args)


def last_error_line(output):
    lines = [line for line in output.splitlines() if line.strip() and 'PredictCost' not in line]
    for line in reversed(lines):
        if re.search(r'(Error|error|Exception)\b', line):
            return line.strip()[:200]
    return lines[-1].strip()[:200] if lines else 'no output'


def check_tf_gpus(ctx):
    code = ('import json; from utils.tf_compat import tf; import tensorflow as t; '
            'info = t.sysconfig.get_build_info(); '
            'print("GPUS=" + json.dumps([d.name for d in t.config.list_physical_devices("GPU")])); '
            'print("BUILD=" + json.dumps([info.get("cuda_version"), info.get("cudnn_version")]))')
    returncode, output, _ = ctx.runner.run('tf_gpus', python_cmd('-c', code))
    if returncode != 0:
        return Result('tf-gpus', FAIL, 'TensorFlow did not start: ' + last_error_line(output))
    gpus = json.loads(re.search(r'^GPUS=(.*)$', output, re.M).group(1))
    cuda, cudnn = json.loads(re.search(r'^BUILD=(.*)$', output, re.M).group(1))
    ctx.num_gpus = len(gpus)
    built = 'CUDA {}, cuDNN {}'.format(cuda, cudnn) if cuda else 'no CUDA'
    figure = '{} GPU(s) (TensorFlow built with {})'.format(len(gpus), built)
    if ctx.dry_run:
        return Result('tf-gpus', SKIP, 'GPU-only; dry run hides the GPUs, listing ran: ' + figure)
    if not gpus:
        return Result('tf-gpus', FAIL, figure + ': install tensorflow[and-cuda] of the pinned version '
                      '(requirements.txt or requirements-newest.txt) and check the driver')
    return Result('tf-gpus', PASS, figure)


def parse_check_build(output):
    """`horovodrun --check-build` -> {section title: [checked names]}."""
    sections, current = {}, None
    for line in output.splitlines():
        title = re.match(r'^Available ([\w ]+):\s*$', line.strip())
        if title:
            current = sections.setdefault(title.group(1), [])
            continue
        entry = re.match(r'^\[(X| )\]\s+(\S+)', line.strip())
        if entry and current is not None and entry.group(1) == 'X':
            current.append(entry.group(2))
    return sections


def horovodrun_path():
    path = os.path.join(os.path.dirname(sys.executable), 'horovodrun')
    return path if os.path.isfile(path) else shutil.which('horovodrun')


def check_horovod_build(ctx):
    horovodrun = horovodrun_path()
    if horovodrun is None:
        status = SKIP if ctx.dry_run else FAIL
        return Result('horovod-nccl', status, 'no horovodrun: `make horovod` (GPU build: see README)')
    returncode, output, _ = ctx.runner.run('horovod_check_build', [sys.executable, horovodrun, '--check-build'])
    sections = parse_check_build(output)
    ops = sections.get('Tensor Operations', [])
    ctx.horovod_controllers = sections.get('Controllers', [])
    figure = 'tensor operations: {}; controllers: {}'.format(', '.join(ops) or 'none',
                                                             ', '.join(ctx.horovod_controllers) or 'none')
    if returncode != 0 or 'TensorFlow' not in sections.get('Frameworks', []):
        return Result('horovod-nccl', FAIL, 'no TensorFlow support ({}): rebuild Horovod, see README'.format(figure))
    ctx.horovod_ok = True
    if ctx.dry_run:
        return Result('horovod-nccl', PASS, figure + ' (NCCL only needed on GPUs)')
    if 'NCCL' not in ops:
        return Result('horovod-nccl', FAIL, figure + ': rebuild with HOROVOD_GPU_OPERATIONS=NCCL (README)')
    return Result('horovod-nccl', PASS, figure)


def train_config(ctx, towers, extra=()):
    """Config of one training run of `steps` steps in 2 epochs on `towers` towers."""
    sizes = ctx.sizes
    # LR_SCHEDULE counts steps of 8 images: `towers` towers take 8 / towers as many.
    total_steps = sizes['steps_per_epoch'] * sizes['epochs']
    last = max(int(math.ceil(total_steps * towers / 8.)), 1)
    from config import combine_overrides
    return combine_overrides(
        ['DATA.BASEDIR=' + ctx.data_dir, 'DATA.TRAIN=shapes_train', 'DATA.VAL=shapes_val'] + sizes['config'] +
        ['TRAIN.STEPS_PER_EPOCH={}'.format(sizes['steps_per_epoch']),
         'TRAIN.LR_SCHEDULE=[{0},{0},{0}]'.format(last), 'TRAIN.EVAL_PERIOD=0',
         'TRAIN.CHECKPOINT_PERIOD={}'.format(sizes['epochs'])], extra, ctx.extra_config)


def training_result(name, returncode, output, log_path, steps):
    """PASS with img/s of the last epoch if the run succeeded with finite losses; `steps` planned."""
    if returncode != 0:
        return Result(name, FAIL, 'exit {}: {} (log: {})'.format(returncode, last_error_line(output), log_path))
    rates = monitor_values(output, 'Throughput (samples/sec)')
    losses = monitor_values(output, 'total_cost')
    if not rates or not losses:
        return Result(name, FAIL, 'no throughput or loss in the log ({})'.format(log_path))
    if not all(math.isfinite(v) for v in losses):
        return Result(name, FAIL, 'non-finite total_cost {} ({})'.format(losses, log_path))
    finished = re.findall(r'Epoch \d+ \(global_step (\d+)\) finished', output)
    steps = int(finished[-1]) if finished else steps
    # the last epoch: the first one includes graph optimization and autotuning
    return Result(name, PASS, '{:.2f} img/s over the last epoch, {} steps, total_cost {:.3f}'.format(
        rates[-1], steps, losses[-1]))


def run_replicated(ctx, name, extra=()):
    towers = DRY_TOWERS if ctx.dry_run else ctx.num_gpus
    env = {'FRCNN_CPU_TOWERS': str(DRY_TOWERS) if ctx.dry_run else None}
    logdir = os.path.join(ctx.workdir, name)
    config = train_config(ctx, towers, ['TRAINER=replicated'] + list(extra))
    returncode, output, log_path = ctx.runner.run(name, python_cmd('train.py', '--logdir', logdir, '--config', *config),
                                                  env)
    if returncode == 0 and 'Towers: {},'.format(towers) not in output:
        return Result(name, FAIL, 'did not train on {} towers ({})'.format(towers, log_path)), None
    steps = ctx.sizes['steps_per_epoch'] * ctx.sizes['epochs']
    result = training_result(name, returncode, output, log_path, steps)
    if result.status == PASS and towers > 1:
        result = check_towers_in_step(result, output, towers)
    return result, (logdir if result.status == PASS else None)


def check_towers_in_step(result, output, towers):
    """The towers' variables must be identical before the last epoch-end copy from tower 0: the
    all-reduce gave every tower the same sum (tensorflow#41539: NCCL sometimes did not)."""
    from utils.fingerprints import TOWER_FINGERPRINT_LOG_RE
    prints = {m['tower']: m['fingerprint'] for m in TOWER_FINGERPRINT_LOG_RE.finditer(output)}
    if len(prints) != towers:
        return result._replace(status=FAIL, figure='{} of {} tower fingerprints in the log; '.format(
            len(prints), towers) + result.figure)
    if len(set(prints.values())) != 1:
        return result._replace(status=FAIL, figure='towers drifted apart (variables differ: {}); '.format(
            sorted(prints.items())) + result.figure)
    return result._replace(figure=result.figure + ', {} towers in step'.format(towers))


def check_replicated(ctx):
    if not ctx.dry_run and not ctx.num_gpus:
        return Result('replicated', SKIP, 'TensorFlow sees no GPU')
    result, ctx.checkpoint_dir = run_replicated(ctx, 'replicated')
    if ctx.dry_run and result.status == PASS:
        result = result._replace(figure=result.figure + ' ({} CPU towers)'.format(DRY_TOWERS))
    return result


def check_horovod_training(ctx):
    if not ctx.horovod_ok:
        return Result('horovod', SKIP, 'no usable Horovod (see horovod-nccl)')
    if not ctx.dry_run and not ctx.num_gpus:
        return Result('horovod', SKIP, 'TensorFlow sees no GPU')
    ranks = DRY_TOWERS if ctx.dry_run else ctx.num_gpus
    logdir = os.path.join(ctx.workdir, 'horovod')
    gloo = ['--gloo'] if 'Gloo' in ctx.horovod_controllers else []
    cmd = [sys.executable, horovodrun_path(), '-np', str(ranks), '-H', 'localhost:{}'.format(ranks)] + gloo + \
        python_cmd('train.py', '--logdir', logdir, '--config', *train_config(ctx, ranks, ['TRAINER=horovod']))
    returncode, output, log_path = ctx.runner.run('horovod', cmd, {'FRCNN_CPU_TOWERS': None})
    steps = ctx.sizes['steps_per_epoch'] * ctx.sizes['epochs']
    result = training_result('horovod', returncode, output, log_path, steps)
    return result._replace(figure=result.figure + ' ({} ranks)'.format(ranks)) if result.status == PASS else result


def check_amp(ctx):
    from config import describe_config
    if 'TRAIN.AMP' not in {key for key, _, _ in describe_config()}:
        return Result('amp', SKIP, 'no TRAIN.AMP in this config')
    if not ctx.dry_run and not ctx.num_gpus:
        return Result('amp', SKIP, 'TensorFlow sees no GPU')
    if ctx.dry_run:
        reason = cpu_amp_unsupported_reason(ctx)
        if reason is not None:
            return Result('amp', SKIP, 'the dry run\'s CPU cannot run it: ' + reason)
    return run_replicated(ctx, 'amp', ['TRAIN.AMP=True'])[0]


def cpu_amp_unsupported_reason(ctx):
    """utils.tf_compat.amp_unsupported_reason() as a child process with the dry run's environment
    sees it (e.g. bfloat16 needs oneDNN, off with TF_ENABLE_ONEDNN_OPTS=0); None if AMP can run,
    or if the probe itself fails (then the training run shows the error)."""
    code = 'from utils.tf_compat import amp_unsupported_reason; print("REASON=" + (amp_unsupported_reason() or ""))'
    returncode, output, _ = ctx.runner.run('amp_probe', python_cmd('-c', code))
    match = re.search(r'^REASON=(.*)$', output, re.M)
    if returncode != 0 or match is None:
        return None
    return match.group(1).strip() or None


def check_layouts(ctx):
    if ctx.checkpoint_dir is None:
        return Result('nchw', SKIP, 'needs the checkpoint of the replicated item')
    outputs = {}
    if ctx.dry_run:
        # NCHW on the CPU, where oneDNN has the kernels; stock CPU kernels are NHWC-only.
        runs = [('nhwc_cpu', ['BACKBONE.DATA_FORMAT=NHWC'], {'CUDA_VISIBLE_DEVICES': ''}),
                ('nchw_cpu', ['BACKBONE.DATA_FORMAT=NCHW'], {'CUDA_VISIBLE_DEVICES': ''})]
    else:
        if not ctx.num_gpus:
            return Result('nchw', SKIP, 'TensorFlow sees no GPU')
        runs = [('nhwc_cpu', ['BACKBONE.DATA_FORMAT=NHWC'], {'CUDA_VISIBLE_DEVICES': ''}),
                ('nchw_gpu', ['BACKBONE.DATA_FORMAT=NCHW'], {'CUDA_VISIBLE_DEVICES': None})]
    for name, layout, env in runs:
        out = os.path.join(ctx.workdir, name + '.npz')
        config = train_config(ctx, 1, layout)
        env = dict(env, FRCNN_CPU_TOWERS=None)
        returncode, output, log_path = ctx.runner.run(
            'layout_' + name, python_cmd(os.path.join('tools', 'gpu_check.py'), '--layout-probe',
                                         ctx.checkpoint_dir, out, '--config', *config), env)
        if returncode != 0:
            if ctx.dry_run and 'NO_NCHW_KERNELS' in output:
                return Result('nchw', SKIP, 'this CPU build has no NCHW kernels (TF_ENABLE_ONEDNN_OPTS=0)')
            return Result('nchw', FAIL, '{}: {} (log: {})'.format(name, last_error_line(output), log_path))
        outputs[name] = out
    return compare_layout_outputs(*outputs.values())


def compare_layout_outputs(reference_path, other_path):
    import numpy as np
    reference, other = np.load(reference_path), np.load(other_path)
    diffs = {key: float(np.abs(reference[key] - other[key]).max()) for key in TOLERANCE}
    figure = 'max |NCHW - NHWC| over {} images: '.format(int(reference['num_images'])) + ', '.join(
        '{} {:.2g} (tol {:g})'.format(key, diffs[key], TOLERANCE[key]) for key in TOLERANCE)
    ok = all(diffs[key] <= TOLERANCE[key] for key in TOLERANCE)
    return Result('nchw', PASS if ok else FAIL, figure)


def check_peak_memory(ctx):
    if ctx.dry_run:
        return Result('peak-memory', SKIP, 'GPU-only (nvidia-smi memory.used during the training items)')
    peak = ctx.memory.peak_mib()
    if peak is None:
        return Result('peak-memory', SKIP, 'no nvidia-smi on PATH')
    if not peak:
        return Result('peak-memory', FAIL, 'nvidia-smi reported nothing')
    return Result('peak-memory', PASS, 'peak memory.used per GPU (MiB, all processes): ' +
                  ', '.join(str(v) for v in peak))


ITEMS = [check_tf_gpus, check_horovod_build, check_replicated, check_horovod_training, check_layouts, check_amp,
         check_peak_memory]


# the NCHW / NHWC probe (a child process) ---------------------------------------------------------
def layout_probe(checkpoint, out_path, overrides):
    """Run the inference graph of `checkpoint` on the validation images with fixed rois and save the
    heads' outputs: fastrcnn scores and boxes for fixed proposals, masks for fixed boxes and labels.

    Fixed rois make the comparison independent of near-ties in top-k and NMS, which a barely
    trained model is full of.
    """
    import numpy as np

    from utils.tf_compat import nchw_kernels_available, session_config, tf

    tf.config.experimental.enable_tensor_float_32_execution(False)   # float32 on Ampere+ GPUs too

    from tensorpack.predict import OfflinePredictor, PredictConfig
    from tensorpack.tfutils import SmartInit
    from tensorpack.tfutils.sesscreate import NewSessionCreator

    import predict
    from common import CustomResize, read_image_bgr
    from config import config as cfg, finalize_configs
    from dataset import DatasetRegistry, register_shapes
    from utils import tensor_names
    from utils.checkpoints import resolve_model_path

    cfg.update_args(overrides)
    register_shapes(os.path.expanduser(cfg.DATA.BASEDIR))
    finalize_configs(is_training=False)
    if cfg.derived.data_format == 'NCHW' and not nchw_kernels_available():
        print('NO_NCHW_KERNELS: this device has no NCHW kernels for Conv2D / pooling')
        sys.exit(3)
    model = predict.build_model()
    in_names, out_names = model.get_inference_tensor_names()
    predictor = OfflinePredictor(PredictConfig(
        model=model, session_init=SmartInit(resolve_model_path(checkpoint)),
        session_creator=NewSessionCreator(config=session_config()), input_names=in_names, output_names=out_names))
    graph = predictor.sess.graph
    final_boxes = graph.get_tensor_by_name(tensor_names.OUTPUT_BOXES + ':0').op.inputs[0]
    final_labels = graph.get_tensor_by_name(tensor_names.OUTPUT_LABELS + ':0').op.inputs[0]
    proposals_name = tensor_names.proposal_tensor_names(cfg.MODE_FPN)[0] + ':0'
    fetches = [tensor_names.FASTRCNN_ALL_SCORES + ':0', 'clip_boxes/fastrcnn_all_boxes:0',
               tensor_names.OUTPUT_MASKS + ':0']
    resize = CustomResize(cfg.PREPROC.TEST_SHORT_EDGE_SIZE, cfg.derived.max_size)
    results = {'scores': [], 'boxes': [], 'masks': []}
    roidbs = DatasetRegistry.get(cfg.derived.val_splits[0]).inference_roidbs()
    for roidb in roidbs:
        image = resize.augment(read_image_bgr(roidb['file_name'])).astype(np.float32)
        height, width = image.shape[:2]
        # 16 rois in a 4 x 4 grid of overlapping boxes, and one label per roi cycling over the classes
        steps = np.linspace(0., 1., 5)[:4]
        rois = np.array([[x * width, y * height, min(x + 0.4, 1.) * width, min(y + 0.4, 1.) * height]
                         for y in steps for x in steps], np.float32)
        labels = (np.arange(len(rois)) % cfg.DATA.NUM_CATEGORY + 1).astype(np.int32)
        feed = {'image:0': image, proposals_name: rois, final_boxes: rois, final_labels: labels}
        scores, boxes, masks = predictor.sess.run(fetches, feed)
        results['scores'].append(scores)
        results['boxes'].append(boxes)
        results['masks'].append(masks)
    np.savez(out_path, num_images=len(roidbs), data_format=cfg.derived.data_format,
             **{key: np.concatenate(values) for key, values in results.items()})
    print('Wrote {} ({} images, {})'.format(out_path, len(roidbs), cfg.derived.data_format))
