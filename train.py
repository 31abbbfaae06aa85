#!/usr/bin/env python
"""Train Faster / Mask / Cascade R-CNN.

    python train.py --config MODE_MASK=True MODE_FPN=True DATA.BASEDIR=/path/to/COCO ...

On a CPU-only machine it trains one tower on the CPU; with GPUs, TRAINER=replicated uses all
visible ones; TRAINER=horovod runs one process per GPU under `horovodrun`. An existing log
directory is resumed from its newest complete checkpoint unless `--logdir-action backup`.
"""
import argparse
import os
import shutil
import time

import numpy as np

from utils.tf_compat import (  # must come before tensorpack
    amp_compute_dtype, check_amp_supported, configure_cudnn_autotune, detect_devices, num_visible_gpus,
    onednn_status, replicated_allreduce_mode, session_config, tf)

from tensorpack import QueueInput, TrainConfig, launch_train_with_config
from tensorpack.callbacks import (
    EstimatedTimeLeft, GPUMemoryTracker, GPUUtilizationTracker, HostMemoryTracker, PeriodicCallback,
    SessionRunTimeout, ThroughputTracker)
from tensorpack.tfutils import SaverRestore, SmartInit
from tensorpack.tfutils.sessinit import SaverRestoreRelaxed
from tensorpack.utils import logger

from config import config as cfg, finalize_configs, num_towers, validate_config
from dataflow.batching import AspectRatioGroupedBatches
from dataset import register_balloon, register_coco, register_shapes
from utils.lr_schedule import REFERENCE_TOTAL_BATCH
from utils import checkpoints, failures, fingerprints, horovod_trainer, loss_watchdog, lr_callbacks, lr_schedule
from utils.checkpoint_saver import CheckpointSaver, remove_temporary_files
from utils.logdir_lock import LOCK_NAME, LogdirLock

LOGDIR_ACTIONS = ('resume', 'backup')


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--load', help='weights to fine-tune from (.npz or checkpoint); overrides '
                        'BACKBONE.WEIGHTS; variables whose shapes differ are skipped and listed')
    parser.add_argument('--logdir', default='train_log/maskrcnn', help='log and checkpoint directory')
    parser.add_argument('--logdir-action', choices=LOGDIR_ACTIONS, default='resume',
                        help="what to do with an existing --logdir: 'resume' continues from its newest complete "
                             "checkpoint (or starts there if it has none); 'backup' moves it aside to "
                             "LOGDIR.backup-TIMESTAMP and starts fresh. Nothing is ever deleted.")
    parser.add_argument('--config', nargs='+', default=[], metavar='KEY=VALUE',
                        help='config overrides, e.g. MODE_FPN=True TRAIN.BASE_LR=0.02')
    return parser.parse_args(argv)


def register_datasets(basedir, roidb_cache=''):
    """Make every dataset family resolvable by name; nothing is read until a split is used."""
    register_coco(basedir, roidb_cache)
    register_balloon(basedir)
    register_shapes(basedir)


def build_model():
    from modeling.generalized_rcnn import build_model as build_rcnn
    return build_rcnn(cfg)


def prepare_logdir(logdir, action, is_chief):
    """Lock the log directory for this run and make it tensorpack's; returns (the checkpoint to resume
    from or None, the LogdirLock or None). Only the chief (Horovod rank 0) writes there and locks it."""
    if not is_chief:
        return None, None
    taken_over = []
    lock = LogdirLock(logdir).acquire(log=taken_over.append)   # refuses a directory another run uses
    if action == 'backup' and set(os.listdir(logdir)) - {LOCK_NAME}:
        backup = stamped = '{}.backup-{}'.format(logdir.rstrip('/'), time.strftime('%Y%m%d-%H%M%S'))
        suffix = 0
        while os.path.exists(backup):   # two backups within a second: never move one into the other
            suffix += 1
            backup = '{}-{}'.format(stamped, suffix)
        shutil.move(logdir, backup)
        lock.release()
        print('Moved the existing {} to {}'.format(logdir, backup))
        lock = LogdirLock(logdir).acquire(log=taken_over.append)
    logger.set_logger_dir(logdir, action='k')
    failures.watch_log_file()
    for line in taken_over:
        logger.info(line)
    return checkpoints.latest_complete_checkpoint(logdir, log=logger.warn), lock


def make_session_init(args, resume_from, is_chief):
    if not is_chief:
        return None   # Horovod: rank 0 initializes, the trainer broadcasts
    if resume_from:
        ignored = [name for name, val in (('--load', args.load), ('BACKBONE.WEIGHTS', cfg.BACKBONE.WEIGHTS)) if val]
        logger.info('Resuming from {}{}.'.format(
            resume_from, '; ignoring ' + ' and '.join(ignored) if ignored else ''))
        return SaverRestore(resume_from)
    if args.load:
        # Mismatched shapes (e.g. another class count) are skipped and listed by tensorpack.
        return weights_init(checkpoints.resolve_model_path(args.load), ignore_mismatch=True)
    if cfg.BACKBONE.WEIGHTS:
        return weights_init(checkpoints.resolve_model_path(cfg.BACKBONE.WEIGHTS))
    return None


def weights_init(path, ignore_mismatch=False):
    """tensorpack's SmartInit of `path` (.npz or checkpoint) without its global step.

    A run that starts from weights starts at step 0: the schedule counts global steps, and a
    step restored from the file (a checkpoint's, or an .npz that saved it) would skip the
    warmup or, past the schedule's last step, leave nothing to train.
    """
    if path.endswith('.npz'):
        weights = {name: value for name, value in np.load(path).items()
                   if name.split(':')[0] != 'global_step'}
        return SmartInit(weights, ignore_mismatch=ignore_mismatch)
    return (SaverRestoreRelaxed if ignore_mismatch else SaverRestore)(path, ignore=['global_step'])


def make_callbacks(model, schedule, towers, on_gpu, logdir, rank=None, guard=None):
    """`rank`: this process's Horovod rank, or None without Horovod. `guard`: a failures.TrainingGuard,
    which gets the checkpoint saver (for SIGTERM)."""
    saver = CheckpointSaver(max_to_keep=10, keep_checkpoint_every_n_hours=1)   # a failed save stops training
    callbacks = [
        PeriodicCallback(saver, every_k_epochs=cfg.TRAIN.CHECKPOINT_PERIOD),
        *lr_callbacks.learning_rate_setters(schedule),
        HostMemoryTracker(),
        ThroughputTracker(samples_per_step=cfg.derived.images_per_step),   # towers x TRAIN.BATCH_SIZE_PER_GPU
        EstimatedTimeLeft(median=True),
        SessionRunTimeout(60000),   # milliseconds: a hung step fails instead of hanging forever
        loss_watchdog.make_nonfinite_loss_callback(),
    ]
    if guard is not None:
        guard.saver = saver
        callbacks.append(guard)
    if on_gpu:
        callbacks += [GPUMemoryTracker(), GPUUtilizationTracker()]
    if rank is not None:
        callbacks.append(fingerprints.make_fingerprint_callback(rank))
    elif towers > 1:
        callbacks.append(fingerprints.make_tower_fingerprint_callback(towers))
    if cfg.TRAIN.EVAL_PERIOD > 0:
        from eval import EvalCallback, EvalSettings
        # Every rank gets the directory: Horovod ranks other than 0 write their part of the results there.
        eval_settings = EvalSettings.from_config(cfg)
        # After SIGTERM an evaluation in progress is abandoned; the guard then saves the last step.
        should_stop = guard.stop_requested if guard is not None else None
        callbacks += [EvalCallback(split, *model.get_inference_tensor_names(), logdir, eval_settings, should_stop)
                      for split in cfg.derived.val_splits]
    return callbacks


def make_trainer(is_horovod):
    if is_horovod:
        # Summed gradients, as the replicated trainer; rank 0's variables are broadcast at the start.
        return horovod_trainer.make_horovod_trainer(average=False)
    if cfg.derived.num_gpus > 0:
        from tensorpack.train import SyncMultiGPUTrainerReplicated
        # NCCL between GPUs; tests that stand CPU towers in for GPUs get a plain sum (utils/tf_compat.py)
        return SyncMultiGPUTrainerReplicated(cfg.derived.num_gpus, average=False, mode=replicated_allreduce_mode())
    from tensorpack.train import SimpleTrainer
    return SimpleTrainer()


def log_precision():
    """Fail early where TRAIN.AMP (or TEST.AMP of the evaluations) can't run; say what runs."""
    for key, wanted in (('TRAIN.AMP', cfg.TRAIN.AMP), ('TEST.AMP', cfg.TEST.AMP and cfg.TRAIN.EVAL_PERIOD > 0)):
        if wanted:
            check_amp_supported(key)
    amp = '{} compute'.format(amp_compute_dtype()) + (' with dynamic loss scaling' if amp_compute_dtype() == 'float16'
                                                      else '')
    logger.info('Training precision: {} (TRAIN.AMP={}); variables float32; {}.'.format(
        amp if cfg.TRAIN.AMP else 'float32', cfg.TRAIN.AMP, onednn_status()))


def main(argv=None):
    args = parse_args(argv)
    cfg.update_args(args.config)
    register_datasets(os.path.expanduser(cfg.DATA.BASEDIR), cfg.DATA.ROIDB_CACHE)

    is_horovod = cfg.TRAINER == 'horovod'
    validate_config()   # before Horovod starts, so a bad value fails once, not once per rank
    devices = detect_devices(cfg.TRAINER)   # initializes Horovod under TRAINER=horovod
    finalize_configs(is_training=True, devices=devices)
    configure_cudnn_autotune(True, cfg.derived.train_short_edge_size)
    rank = 0
    if is_horovod:
        import horovod.tensorflow as hvd
        rank = hvd.rank()
        # which host a rank is on, as Horovod sees it: the first host's ranks are 0 .. local size - 1
        logger.info('Horovod rank {} of {}: local rank {} of {}'.format(rank, hvd.size(), hvd.local_rank(),
                                                                      hvd.local_size()))
        # Ranks start from different random variables (rank 0's are broadcast) and draw
        # different random samples in the graph, reproducibly.
        tf.set_random_seed(cfg.DATA.SEED + rank)
    is_chief = rank == 0
    towers = num_towers()
    log_precision()

    # Every config error is raised before anything is written to disk.
    schedule = lr_schedule.compute_schedule(
        base_lr=cfg.TRAIN.BASE_LR, warmup_steps=cfg.TRAIN.WARMUP, warmup_init_lr=cfg.TRAIN.WARMUP_INIT_LR,
        lr_schedule=cfg.derived.lr_schedule, steps_per_epoch=cfg.TRAIN.STEPS_PER_EPOCH,
        images_per_step=cfg.derived.images_per_step)
    resume_from, lock = prepare_logdir(args.logdir, args.logdir_action, is_chief)
    try:
        train(args, schedule, resume_from, rank, is_horovod, towers)
    finally:
        if is_chief:
            removed = remove_temporary_files(args.logdir)
            if removed:
                logger.warn('Removed the temporary files of unfinished writes: {}'.format(', '.join(removed)))
        if lock is not None:
            lock.release()


def train(args, schedule, resume_from, rank, is_horovod, towers):
    is_chief = rank == 0
    logger.info('Towers: {}, gradient accumulation: {} step(s), images per tower: {}'.format(
        towers, cfg.derived.accumulate_steps, cfg.TRAIN.BATCH_SIZE_PER_GPU))
    # Each value takes effect after the listed number of steps; warmup ramps linearly between its first two.
    logger.info('Warmup steps: {}'.format(schedule.warmup_steps))
    logger.info('LR Schedule (steps, value): {}'.format(schedule.announced()))
    logger.info('Last step: {}'.format(schedule.last_step))
    logger.info('Max epoch: {}'.format(schedule.max_epoch))

    starting_epoch, step = cfg.TRAIN.STARTING_EPOCH, 0
    if resume_from:
        step = checkpoints.checkpoint_global_step(resume_from)
        starting_epoch = schedule.starting_epoch(step)
        logger.info('Checkpoint {} is at step {}: continuing with epoch {}.'.format(resume_from, step, starting_epoch))
    if is_horovod:
        # Only rank 0 looked for a checkpoint to resume; every rank must run the same epochs.
        starting_epoch = horovod_trainer.broadcast_from_rank0(starting_epoch, 'starting_epoch')
        step = horovod_trainer.broadcast_from_rank0(step, 'resumed_step')
    if step >= schedule.last_step or starting_epoch > schedule.max_epoch:
        logger.info('Step {} (epoch {}) is at or past the end of the schedule (step {}); nothing to do.'
                    .format(step, starting_epoch, schedule.last_step))
        return

    from data import get_train_dataflow
    model = build_model()
    train_dataflow = get_train_dataflow(rank=rank)
    # TRAIN.BATCH_SIZE_PER_GPU > 1 batches the images of the map step (dataflow/batching.py).
    map_step = train_dataflow.ds if isinstance(train_dataflow, AspectRatioGroupedBatches) else train_dataflow
    if is_horovod:
        # The roidb source of the map step (MapData or the worker pool) shows which images this rank reads.
        map_step.ds = fingerprints.LogFirstDatapoints(
            map_step.ds, lambda roidb: os.path.basename(roidb['file_name']), count=4, rank=rank)
    total_images = cfg.derived.lr_schedule[-1] * REFERENCE_TOTAL_BATCH
    logger.info('Total passes over the training set: {:.5g}'.format(total_images / max(map_step.size(), 1)))

    # tensorpack's input thread only logs a dataflow error; the guard stops training on it.
    recorder = failures.InputFailureRecorder(train_dataflow)
    guard = failures.TrainingGuard(recorder, failures.installed_sigterm_handler())
    traincfg = TrainConfig(
        model=model,
        data=QueueInput(recorder),
        callbacks=make_callbacks(model, schedule, towers, on_gpu=num_visible_gpus() > 0, logdir=args.logdir,
                                 rank=rank if is_horovod else None, guard=guard),
        steps_per_epoch=cfg.TRAIN.STEPS_PER_EPOCH,
        max_epoch=schedule.max_epoch,
        session_init=make_session_init(args, resume_from, is_chief),
        session_config=session_config(amp=cfg.TRAIN.AMP),
        starting_epoch=starting_epoch,
    )
    try:
        launch_train_with_config(traincfg, make_trainer(is_horovod))
        guard.raise_if_incomplete()
    finally:
        if hasattr(train_dataflow, 'close'):   # the data workers
            train_dataflow.close()


if __name__ == '__main__':
    import multiprocessing as mp
    # Data workers are spawned, not forked: forking a process that already runs TensorFlow
    # (and, under Horovod, MPI/Gloo) is unsafe, and spawned workers don't copy its memory.
    mp.set_start_method('spawn', force=True)
    failures.run_and_exit(main)   # exit codes: utils/failures.py
