"""The one module that looks at the TensorFlow version and the device.

Import it before TensorFlow or tensorpack anywhere in the project:

    from utils.tf_compat import tf   # tf is tf.compat.v1, in graph mode

Every version-dependent workaround lives here, gated on the installed version,
and NOTES.md keeps the table of what each gate is for.
"""
import importlib.metadata
import os

from utils.devices import Devices

_TF_DISTRIBUTIONS = ('tensorflow-cpu', 'tensorflow', 'tensorflow-gpu', 'tensorflow-intel',
                     'tensorflow-macos', 'tf-nightly', 'tf-nightly-cpu')


def _parse_version(text):
    """'2.15.1' or '2.16.0rc0' -> (2, 16)."""
    parts = []
    for piece in text.split('.')[:2]:
        digits = ''.join(ch for ch in piece if ch.isdigit()) or '0'
        parts.append(int(digits))
    return tuple(parts)


def installed_tf_version():
    """(major, minor) of the installed TensorFlow distribution, read without importing it."""
    for dist in _TF_DISTRIBUTIONS:
        try:
            return _parse_version(importlib.metadata.version(dist))
        except importlib.metadata.PackageNotFoundError:
            continue
    raise ImportError(
        "TensorFlow is not installed. Run `make venv`, which picks the pins for this Python "
        "(requirements.txt for 3.10/3.11, requirements-newest.txt for 3.12/3.13).")


TF_VERSION = installed_tf_version()

if TF_VERSION >= (2, 16):
    # Keras 3 ships with TF >= 2.16 and tf.compat.v1.layers (used by tensorpack's
    # layers) raises under it. The legacy Keras 2 package must be selected before
    # TensorFlow is imported for the first time.
    try:
        importlib.metadata.version('tf_keras')
    except importlib.metadata.PackageNotFoundError:
        raise ImportError(
            "TensorFlow {}.{} needs the `tf_keras` package for tensorpack's layers: "
            "`pip install tf_keras~={}.{}.0` (requirements-newest.txt pins it)."
            .format(*TF_VERSION, *TF_VERSION)) from None
    os.environ.setdefault('TF_USE_LEGACY_KERAS', '1')

# Quiet TensorFlow's C++ start-up chatter unless the user asked for it.
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

import tensorflow as _tf  # noqa: E402


def _check_legacy_keras_selected():
    """tf.keras is resolved once per process, at its first use, by TF_USE_LEGACY_KERAS; importing
    tensorpack uses it. If that happened before this module set the variable (tensorpack imported
    first), or the variable says no, every tensorpack layer and regularizer gets Keras 3, which
    fails much later with errors such as "Invalid dtype: float32_ref". Say so now instead."""
    setting = os.environ.get('TF_USE_LEGACY_KERAS')
    keras = _tf.__dict__.get('keras')
    if type(keras).__name__ == 'KerasLazyLoader':
        resolved_to = None   # not resolved yet: the variable decides
    else:
        resolved_to = getattr(keras, '__name__', '?')
    if setting in ('1', 'true', 'True') and (resolved_to is None or resolved_to.startswith('tf_keras')):
        return
    raise ImportError(
        "tensorpack needs the legacy Keras 2 (tf_keras) under TensorFlow {}.{}, but {}: import "
        "utils.tf_compat (or any module of this project) before tensorflow.keras or tensorpack, and "
        "leave TF_USE_LEGACY_KERAS unset or set it to 1 (it is {!r})."
        .format(*TF_VERSION, 'tf.keras is Keras 3 ({}) in this process'.format(resolved_to)
                if resolved_to else 'TF_USE_LEGACY_KERAS turns it off', setting))


if TF_VERSION >= (2, 16):
    _check_legacy_keras_selected()

if TF_VERSION[0] >= 2:
    # tensorpack builds TF1-style graphs; eager mode and v2 control flow must be off
    # before any graph is created.
    _level = _tf.get_logger().level
    _tf.get_logger().setLevel('ERROR')   # its deprecation notice about resource variables is noise here
    _tf.compat.v1.disable_v2_behavior()
    _tf.get_logger().setLevel(_level)

tf = _tf.compat.v1

if TF_VERSION[0] >= 2:
    # tensorpack's ModelExporter (predict.py --output-pb) calls the TF1 function through the
    # internal module, which no longer has it; the v1 API still does.
    from tensorflow.python.framework import graph_util as _graph_util
    if not hasattr(_graph_util, 'convert_variables_to_constants'):
        _graph_util.convert_variables_to_constants = tf.graph_util.convert_variables_to_constants


def num_visible_gpus():
    """Number of GPUs this process may use (0 on a CPU-only machine)."""
    env = os.environ.get('CUDA_VISIBLE_DEVICES')
    if env is not None and env.strip() in ('', '-1'):
        return 0
    return len(_tf.config.list_physical_devices('GPU'))


# The multi-GPU code paths on a CPU (tests only) -------------------------------------------
CPU_TOWERS_ENV = 'FRCNN_CPU_TOWERS'


def cpu_towers():
    """How many GPU towers the CPU stands in for: the integer in $FRCNN_CPU_TOWERS, 0 if unset.

    Test-only, and the one switch between the GPU and the CPU placement of towers: with it, the
    replicated trainer and the multi-tower predictors build their `/gpu:N` towers as on a GPU
    machine and TensorFlow's soft placement (on in tensorpack's session config) runs them on the
    CPU. Everything that depends on real GPUs (NCHW, the session threads, the GPU trackers)
    keeps following `num_visible_gpus()`.
    """
    text = os.environ.get(CPU_TOWERS_ENV, '').strip()
    if not text:
        return 0
    if not text.isdigit():
        raise ValueError('{}={!r}: give a number of towers (e.g. 2), or unset it.'.format(CPU_TOWERS_ENV, text))
    if int(text) > 0 and num_visible_gpus() > 0:
        raise ValueError("{}={} stands CPU towers in for GPUs, but this process sees GPUs: unset it, or hide "
                         "the GPUs with CUDA_VISIBLE_DEVICES=''.".format(CPU_TOWERS_ENV, text))
    return int(text)


def num_tower_devices():
    """Devices training and evaluation may put one tower each on: the visible GPUs (0 on a
    CPU-only machine), or the CPU stand-ins of `cpu_towers()`."""
    return num_visible_gpus() or cpu_towers()


def replicated_allreduce_mode():
    """How the replicated trainer sums the towers' gradients.

    On GPUs None: tensorpack's own choice, as in its latest example ('hierarchical' on 8 GPUs,
    else 'gpu', an add_n per variable). Its older `mode='nccl'` is avoided: NCCL's all-reduce
    in TF >= 1.15 can return wrong sums (tensorflow#41539; tensorpack warns about it). CPU
    stand-in towers get 'gpu' explicitly, the mode 2 GPUs would get.
    """
    return 'gpu' if cpu_towers() > 0 else None


def default_data_format():
    """'NCHW' where a GPU is visible (cuDNN's fast layout), else 'NHWC'.

    Stock CPU TensorFlow has no NCHW kernels for pooling and several other ops.
    The variables are the same in both layouts, so checkpoints move freely.
    """
    return 'NCHW' if num_visible_gpus() > 0 else 'NHWC'


def init_horovod():
    """Initialize Horovod (once per process) and return its module; a clear error without it."""
    try:
        import horovod.tensorflow as hvd
    except ImportError:
        raise ImportError(
            'TRAINER=horovod needs Horovod. Install it into the venv with `make horovod` '
            '(see README: Horovod 0.28.1 built against TensorFlow 2.15.1 with Gloo).') from None
    hvd.init()
    return hvd


def detect_devices(trainer, setup_horovod=True):
    """utils.devices.Devices of this process: tower devices, Horovod's size, the default data format.

    Process set-up: with trainer='horovod' and setup_horovod, Horovod is initialized here. With
    setup_horovod=False nothing is set up, and Horovod's size is known only if it already was.
    """
    horovod_size = None
    if trainer == 'horovod':
        horovod_size = init_horovod().size() if setup_horovod else _initialized_horovod_size()
    return Devices(tower_devices=num_tower_devices(), horovod_size=horovod_size,
                   default_data_format=default_data_format())


def _initialized_horovod_size():
    try:
        import horovod.tensorflow as hvd
    except ImportError:
        return None
    return hvd.size() if hvd.is_initialized() else None


def configure_cudnn_autotune(is_training, train_short_edge_size):
    """Set cuDNN's autotuning for this process, as tensorpack's example does (GPU only in effect).

    Autotuning every new input shape is too slow when training sizes vary by more than 100 px,
    and at inference, where every image has its own shape. Call before the first session runs.
    """
    low, high = train_short_edge_size
    if not is_training or high - low > 100:
        os.environ['TF_CUDNN_USE_AUTOTUNE'] = '0'
    if is_training:
        os.environ['TF_AUTOTUNE_THRESHOLD'] = '1'


def nchw_kernels_available():
    """True if this process's default device runs NCHW Conv2D and pooling: GPUs do, and CPUs with
    oneDNN (TF_ENABLE_ONEDNN_OPTS=1) do; stock CPU kernels are NHWC-only. Runs two tiny ops."""
    with tf.Graph().as_default():
        image = tf.zeros([1, 2, 4, 4])
        out = tf.nn.max_pool2d(tf.nn.conv2d(image, tf.zeros([3, 3, 2, 2]), 1, 'SAME', data_format='NCHW'),
                               2, 2, 'SAME', data_format='NCHW')
        with tf.Session() as sess:
            try:
                sess.run(out)
            except (tf.errors.InvalidArgumentError, tf.errors.UnimplementedError):
                return False
    return True


def session_config(amp=False):
    """tensorpack's default session config, plus the per-device adjustments.

    `amp`: also switch on Grappler's mixed-precision rewrite for this device (see
    `enable_amp_rewrite`); raises ValueError where it can't run.

    Without a GPU:
    - tensorpack's default of one thread per op (right when the CPU only feeds GPUs) would run
      every convolution on a single core: let TensorFlow use all of them instead;
    - Grappler's memory optimizer has nothing to do (it swaps GPU memory to the host) but
      still runs a cost model that logs an error for every crop_and_resize op of unknown
      shape: it is switched off.
    """
    from tensorflow.core.protobuf import rewriter_config_pb2
    from tensorpack.tfutils.common import get_default_sess_config

    config = get_default_sess_config()
    if num_visible_gpus() == 0:
        config.intra_op_parallelism_threads = 0    # 0: as many as there are cores
        config.graph_options.rewrite_options.memory_optimization = rewriter_config_pb2.RewriterConfig.OFF
    if amp:
        enable_amp_rewrite(config)
    return config


# CPU flags for which TF 2.15's x86 wheels turn oneDNN on when TF_ENABLE_ONEDNN_OPTS is unset.
_ONEDNN_DEFAULT_CPU_FLAGS = ('avx512_vnni', 'avx512_bf16', 'avx_vnni', 'amx_tile', 'amx_int8', 'amx_bf16')


def _cpu_flags():
    """The feature flags of the first CPU in /proc/cpuinfo (empty where there is none)."""
    try:
        with open('/proc/cpuinfo') as f:
            for line in f:
                if line.startswith('flags'):
                    return set(line.split(':', 1)[1].split())
    except OSError:
        pass
    return set()


def onednn_enabled():
    """Whether this process runs TensorFlow's oneDNN CPU kernels (as TensorFlow itself decided)."""
    from tensorflow.python.util import _pywrap_util_port
    return bool(_pywrap_util_port.IsMklEnabled())


def onednn_status():
    """A log line saying whether oneDNN is on and why, e.g. 'oneDNN: on (TF_ENABLE_ONEDNN_OPTS=1)'."""
    setting = os.environ.get('TF_ENABLE_ONEDNN_OPTS')
    if setting is not None:
        reason = 'TF_ENABLE_ONEDNN_OPTS={}'.format(setting)
    else:
        flags = sorted(_cpu_flags().intersection(_ONEDNN_DEFAULT_CPU_FLAGS))
        cpu = 'a CPU with ' + ', '.join(flags) if flags else 'a CPU without ' + '/'.join(_ONEDNN_DEFAULT_CPU_FLAGS)
        reason = "TensorFlow's default on {}; TF_ENABLE_ONEDNN_OPTS=0 or 1 chooses".format(cpu)
    return 'oneDNN: {} ({})'.format('on' if onednn_enabled() else 'off', reason)


# mixed precision (TRAIN.AMP / TEST.AMP) ------------------------------------------------
def amp_compute_dtype():
    """'float16' where a GPU is visible (its mixed precision), else 'bfloat16' (the CPU's)."""
    return 'float16' if num_visible_gpus() > 0 else 'bfloat16'


def amp_unsupported_reason():
    """None if mixed precision can run on this device, else a sentence saying why not.

    GPU: Grappler's float16 rewrite only acts on GPUs with tensor cores (compute capability
    7.0 or more) and silently does nothing on the others. CPU: the bfloat16 rewrite is part
    of oneDNN (it silently does nothing with oneDNN off) and is only fast where the CPU has
    bfloat16 instructions.
    """
    if num_visible_gpus() > 0:
        for gpu in _tf.config.list_physical_devices('GPU'):
            capability = _tf.config.experimental.get_device_details(gpu).get('compute_capability')
            if capability is None or tuple(capability) < (7, 0):
                return ('GPU {} has compute capability {}, but float16 mixed precision needs tensor cores '
                        '(7.0 or more, e.g. V100, T4, A100)'.format(gpu.name, capability))
        return None
    if not onednn_enabled():
        return ("the CPU's bfloat16 rewrite is part of oneDNN, which is off in this process "
                '(TF_ENABLE_ONEDNN_OPTS={!r}); set TF_ENABLE_ONEDNN_OPTS=1'
                .format(os.environ.get('TF_ENABLE_ONEDNN_OPTS')))
    if not _cpu_flags() & {'avx512_bf16', 'amx_bf16'}:
        return 'this CPU has no bfloat16 instructions (neither avx512_bf16 nor amx_bf16 in /proc/cpuinfo)'
    return None


def check_amp_supported(key):
    """Raise ValueError naming config `key` (e.g. 'TRAIN.AMP') if mixed precision can't run here."""
    reason = amp_unsupported_reason()
    if reason is not None:
        raise ValueError('{}=True cannot run: {}. Set {}=False to run in float32.'.format(key, reason, key))


def enable_amp_rewrite(config, key='TRAIN.AMP/TEST.AMP'):
    """Switch on, in the ConfigProto `config`, Grappler's mixed-precision rewrite for this device:
    float16 on GPUs (`auto_mixed_precision`), bfloat16 through oneDNN on CPUs
    (`auto_mixed_precision_onednn_bfloat16`). Variables and graph inputs/outputs stay float32.
    On CPUs it also sets, unless set already, the process's AMP_CPU_ALLOWLIST_REMOVE_ENV (below)."""
    from tensorflow.core.protobuf import rewriter_config_pb2

    check_amp_supported(key)
    options = config.graph_options.rewrite_options
    if amp_compute_dtype() == 'float16':
        options.auto_mixed_precision = rewriter_config_pb2.RewriterConfig.ON
    else:
        options.auto_mixed_precision_onednn_bfloat16 = rewriter_config_pb2.RewriterConfig.ON
        # oneDNN takes no convolution gradient with EXPLICIT padding (the backbone's strided convs);
        # TF's generic bfloat16 kernels for those are ~20x slower than float32, which made a training
        # step several times slower than without AMP. So every convolution gradient stays float32:
        # Grappler reads this variable (the rewrite's documented list edits) when it optimizes a graph.
        os.environ.setdefault(AMP_CPU_ALLOWLIST_REMOVE_ENV, AMP_CPU_FLOAT32_OPS)
    return config


AMP_CPU_ALLOWLIST_REMOVE_ENV = 'TF_AUTO_MIXED_PRECISION_GRAPH_REWRITE_ALLOWLIST_REMOVE'
AMP_CPU_FLOAT32_OPS = 'Conv2DBackpropFilter,Conv2DBackpropInput'


def multi_tower_predictor(pred_config, towers):
    """tensorpack's MultiTowerOfflinePredictor on GPUs `towers` (a list of ids), working on TF 2.

    Its module calls `tf.variable_scope` on TensorFlow's top-level module, which TF 2 lacks, so
    every multi-GPU `predict.py --evaluate` stopped with an AttributeError; the module is pointed
    at tf.compat.v1 first.
    """
    from tensorpack.predict import multigpu
    if TF_VERSION[0] >= 2:
        multigpu.tf = tf
    return multigpu.MultiTowerOfflinePredictor(pred_config, towers)
