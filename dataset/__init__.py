"""Datasets: the `DatasetSplit` interface, the name registry and the built-in formats.

Entry scripts call the `register_*` functions at start-up and then refer to splits by name
(`cfg.DATA.TRAIN`, `cfg.DATA.VAL`); see dataset/dataset.py for the roidb schema.
"""
import importlib

__all__ = ['DatasetRegistry', 'DatasetSplit', 'file_label', 'register_coco', 'register_balloon', 'register_shapes']

_HOME_MODULE = {
    'DatasetRegistry': 'dataset.dataset',
    'DatasetSplit': 'dataset.dataset',
    'file_label': 'dataset.dataset',
    'register_coco': 'dataset.coco',
    'register_balloon': 'dataset.balloon',
    'register_shapes': 'dataset.shapes',
}


def __getattr__(name):
    # Resolved on first use rather than imported here, so that `python -m dataset.shapes`
    # (or dataset.balloon) does not import its own module twice through this package.
    if name in _HOME_MODULE:
        return getattr(importlib.import_module(_HOME_MODULE[name]), name)
    raise AttributeError("module 'dataset' has no attribute '{}'".format(name))


def __dir__():
    return sorted(list(globals()) + __all__)
