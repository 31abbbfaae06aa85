"""What the process can run towers on, as `utils.tf_compat.detect_devices` finds it and
`config.finalize_configs` takes it. Loads no TensorFlow."""
from collections import namedtuple


class Devices(namedtuple('Devices', ['tower_devices', 'horovod_size', 'default_data_format'])):
    """What the process can run towers on; made by `utils.tf_compat.detect_devices`.

    tower_devices: visible GPUs, or CPU stand-ins for them (tests); 0 on a CPU-only machine.
    horovod_size: the number of Horovod ranks when Horovod is initialized, else None.
    default_data_format: the layout for BACKBONE.DATA_FORMAT=None ('NCHW' with GPUs, else 'NHWC').
    """
