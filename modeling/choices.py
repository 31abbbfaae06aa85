"""The names a config may choose among, without importing TensorFlow.

config.py validates against these lists before any graph exists; the modules that implement
each variant keep their tables keyed by exactly these names, and tests/modeling/test_choices.py
checks that the two agree.
"""

DATA_FORMATS = ('NHWC', 'NCHW')

# modeling/backbone.py: the normalization layers of the ResNet.
NORMS = ('FreezeBN', 'SyncBN', 'GN', 'None')
# Stages kept fixed: 0 none, 1 the stem, 2 the stem and group0.
FREEZE_AT_VALUES = (0, 1, 2)
# modeling/model_fpn.py: NMS per level, or over all levels at once.
PROPOSAL_MODES = ('Level', 'Joint')
FPN_NORMS = ('None', 'GN')

# modeling/model_frcnn.py BOX_HEADS and modeling/model_mrcnn.py MASK_HEADS (FPN heads).
BOX_HEAD_NAMES = ('fastrcnn_2fc_head', 'fastrcnn_4conv1fc_head', 'fastrcnn_4conv1fc_gn_head')
MASK_HEAD_NAMES = ('maskrcnn_up4conv_head', 'maskrcnn_up4conv_gn_head')

TRAINERS = ('replicated', 'horovod')
