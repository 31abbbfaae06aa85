"""The meta-architecture table and `build_model(cfg)`, the model's entry point for the scripts.

The models themselves: rcnn.py (what C4 and FPN share), rcnn_c4.py, rcnn_fpn.py.
"""
from .params import ModelParams
from .rcnn_c4 import ResNetC4Model
from .rcnn_fpn import ResNetFPNModel

# ModelParams.meta_architecture -> model class.
META_ARCHITECTURES = {
    'ResNetC4': ResNetC4Model,
    'ResNetFPN': ResNetFPNModel,
}


def model_from_params(params):
    """The model class of `params.meta_architecture`, built from `params` (a ModelParams)."""
    if params.meta_architecture not in META_ARCHITECTURES:
        raise KeyError('Unknown meta-architecture {!r}; valid: {}'.format(
            params.meta_architecture, ', '.join(META_ARCHITECTURES)))
    return META_ARCHITECTURES[params.meta_architecture](params)


def build_model(cfg):
    """The model of a finalized config `cfg` (MODE_FPN picks C4 or FPN)."""
    return model_from_params(ModelParams.from_config(cfg))
