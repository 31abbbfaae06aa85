"""Frozen parameter records of the model, and the one step that makes them from a config.

The model classes (rcnn_c4.py, rcnn_fpn.py) take a `ModelParams` in their constructor and read
nothing else; `ModelParams.from_config(cfg)` is the only code under modeling/ that reads a
config, and it gets the config as an argument (no module here imports config.py). Tests build
the records directly, or from a copy of a finalized config, so two differently configured
models can live in one process.

This module loads no TensorFlow, so config.py's validation (configlib/) and the scripts can read
its constants.

Shape shorthand: K categories (foreground classes); A anchors per cell; S an ROIAlign side.
"""
import dataclasses
import math
from typing import Optional, Tuple

DATA_FORMATS = ('NHWC', 'NCHW')

# The backbone's BatchNorm averages batch statistics over GPUs with one of these (SyncBN).
SYNC_STATISTICS_BY_TRAINER = {'replicated': 'nccl', 'horovod': 'horovod'}

# The names the model's tables accept, without loading TensorFlow (for validating a config).
# tests/modeling/test_params.py checks each against its table: backbone.NORMS,
# model_fpn.PROPOSAL_MODES, model_frcnn.BOX_HEADS, model_mrcnn.MASK_HEADS.
BACKBONE_NORMS = ('FreezeBN', 'SyncBN', 'GN', 'None')
FREEZE_AT_VALUES = (0, 1, 2)         # stages not trained: none, the stem, the stem and group0
FPN_PROPOSAL_MODES = ('Level', 'Joint')
FPN_BOX_HEADS = ('fastrcnn_2fc_head', 'fastrcnn_4conv1fc_head', 'fastrcnn_4conv1fc_gn_head')
FPN_MASK_HEADS = ('maskrcnn_up4conv_head', 'maskrcnn_up4conv_gn_head')

# Box-delta decoding caps log(w / w_anchor) at log(MAX_SIZE / this), as tensorpack does.
DECODE_CLIP_DIVISOR = 16.


@dataclasses.dataclass(frozen=True)
class RoiSizes:
    """Sides of the ROI features and masks of one meta-architecture.

    The rule: the mask head ends with a stride-2 deconvolution, so
        mask_size = 2 * (side of the features entering the mask head)
                  = 2 * mask_roi_resolution / mask_feature_stride.
    C4: ROIAlign 14x14 on c4, then conv5 (stride 2) gives 7x7 for both heads: mask 2 * 7 = 14.
    FPN: the box head reads a 7x7 ROIAlign, the mask head its own 14x14 one: mask 2 * 14 = 28.
    """
    box_roi_resolution: int     # ROIAlign side of the box head's input
    mask_roi_resolution: int    # ROIAlign side of the mask features (before mask_feature_stride)
    mask_feature_stride: int    # downsampling between that ROIAlign and the mask head

    MASK_HEAD_UPSAMPLING = 2    # the mask head's final deconvolution

    @property
    def mask_size(self):
        """Side of the mask head's output and of the mask targets."""
        return self.MASK_HEAD_UPSAMPLING * self.mask_roi_resolution // self.mask_feature_stride


C4_ROI_SIZES = RoiSizes(box_roi_resolution=14, mask_roi_resolution=14, mask_feature_stride=2)
FPN_ROI_SIZES = RoiSizes(box_roi_resolution=7, mask_roi_resolution=14, mask_feature_stride=1)


@dataclasses.dataclass(frozen=True)
class BackboneParams:
    """How to build the ResNet (BACKBONE.*; sync_statistics from TRAINER for SyncBN)."""
    norm: str                           # 'FreezeBN', 'SyncBN', 'GN' or 'None'
    freeze_at: int                      # 0, 1 or 2 stages not trained
    freeze_affine: bool
    tf_pad_mode: bool
    stride_1x1: bool
    resnet_num_blocks: Tuple[int, ...]  # 4 ints; C4 uses the first 3 in the backbone, the last in conv5
    data_format: str                    # 'NHWC' or 'NCHW'
    sync_statistics: Optional[str] = None   # 'nccl' or 'horovod' with SyncBN, else None

    def layer_options(self):
        """Keyword arguments shared by every backbone builder of backbone.py."""
        return dict(norm=self.norm, freeze_affine=self.freeze_affine, tf_pad_mode=self.tf_pad_mode,
                    stride_1x1=self.stride_1x1, data_format=self.data_format,
                    sync_statistics=self.sync_statistics)


@dataclasses.dataclass(frozen=True)
class ProposalTopK:
    """How many RPN proposals survive each stage, in one mode (training or inference)."""
    pre_nms_topk: int       # C4 / FPN 'Joint': kept before NMS
    post_nms_topk: int      # C4 / FPN 'Joint': kept after NMS
    per_level_topk: int     # FPN 'Level': kept per level, and in total


@dataclasses.dataclass(frozen=True)
class RPNParams:
    """Anchors, RPN head and proposal selection (RPN.*)."""
    anchor_stride: int                  # C4 only; FPN uses FPNParams.anchor_strides
    anchor_sizes: Tuple[float, ...]
    anchor_ratios: Tuple[float, ...]
    head_dim: int                       # C4 only; FPN uses FPNParams.num_channel
    batch_per_im: int                   # anchors sampled per image for the loss
    proposal_nms_thresh: float
    min_size: float
    train_topk: ProposalTopK
    test_topk: ProposalTopK

    @property
    def num_anchors_c4(self):
        """A of C4: every size at every ratio on the one level."""
        return len(self.anchor_sizes) * len(self.anchor_ratios)

    @property
    def num_anchors_fpn(self):
        """A of each FPN level: one size per level, every ratio."""
        return len(self.anchor_ratios)

    def topk(self, training):
        return self.train_topk if training else self.test_topk


@dataclasses.dataclass(frozen=True)
class FPNParams:
    """The pyramid and the FPN box / mask heads (FPN.*)."""
    anchor_strides: Tuple[int, ...]     # stride of p2..p6
    resolution_requirement: int         # the image is padded to a multiple of this
    num_channel: int
    norm: str                           # 'None' or 'GN'
    proposal_mode: str                  # 'Level' or 'Joint'
    box_head: str                       # a name of model_frcnn.BOX_HEADS
    conv_head_dim: int
    fc_head_dim: int
    mask_head: str                      # a name of model_mrcnn.MASK_HEADS
    cascade: bool


@dataclasses.dataclass(frozen=True)
class FastRCNNParams:
    """Sampling and box targets of the Fast R-CNN head (FRCNN.*)."""
    batch_per_im: int
    fg_ratio: float
    fg_thresh: float
    bbox_reg_weights: Tuple[float, ...]     # (wx, wy, ww, wh)


@dataclasses.dataclass(frozen=True)
class CascadeParams:
    """The Cascade R-CNN stages (CASCADE.*): one IoU and one weight 4-tuple per stage."""
    ious: Tuple[float, ...]
    bbox_reg_weights: Tuple[Tuple[float, ...], ...]


@dataclasses.dataclass(frozen=True)
class MaskParams:
    """The mask head (MRCNN.*)."""
    head_dim: int


@dataclasses.dataclass(frozen=True)
class DetectionParams:
    """The final detections (TEST.*)."""
    result_score_thresh: float
    frcnn_nms_thresh: float
    results_per_im: int


@dataclasses.dataclass(frozen=True)
class TrainParams:
    """What the loss and the optimizer need (TRAIN.*)."""
    weight_decay: float
    accumulate_steps: int
    amp: bool
    batch_size_per_tower: int = 1       # images per tower and step (TRAIN.BATCH_SIZE_PER_GPU)


# cfg.MODE_FPN -> meta-architecture name (a key of generalized_rcnn.META_ARCHITECTURES).
META_ARCHITECTURE_BY_MODE_FPN = {False: 'ResNetC4', True: 'ResNetFPN'}


@dataclasses.dataclass(frozen=True)
class ModelParams:
    """Everything a model (rcnn_c4.py, rcnn_fpn.py) reads while building its graph."""
    meta_architecture: str              # 'ResNetC4' or 'ResNetFPN'
    mode_mask: bool
    num_category: int                   # K
    pixel_mean: Tuple[float, ...]       # RGB, 0..255
    pixel_std: Tuple[float, ...]
    max_size: float                     # long-edge cap of the resized images (anchor grids, decode clip)
    backbone: BackboneParams
    rpn: RPNParams
    fpn: FPNParams
    frcnn: FastRCNNParams
    cascade: CascadeParams
    mask: MaskParams
    test: DetectionParams
    train: TrainParams

    @property
    def decode_clip(self):
        """Cap on the decoded log-scale box deltas: log(max_size / 16)."""
        return math.log(self.max_size / DECODE_CLIP_DIVISOR)

    def replace(self, **changes):
        """A copy with some fields changed (records are frozen)."""
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_config(cls, cfg):
        """The records of a finalized config `cfg` (an AttrDict as config.py makes it).

        This is the only reader under modeling/ of the values finalize_configs derives
        (`cfg.derived`: the data format, the rounded max size, the accumulation steps).
        """
        derived = cfg.__dict__.get('_derived')
        if derived is None or cfg.DATA.NUM_CATEGORY < 1:
            raise ValueError('ModelParams.from_config needs a finalized config (call finalize_configs first); '
                             'got DATA.NUM_CATEGORY={!r} and {} derived values.'.format(
                                 cfg.DATA.NUM_CATEGORY, 'its' if derived is not None else 'no'))
        sync_statistics = None
        if cfg.BACKBONE.NORM == 'SyncBN':
            if cfg.TRAINER not in SYNC_STATISTICS_BY_TRAINER:
                raise ValueError('Unknown TRAINER {!r}; valid: {}'.format(
                    cfg.TRAINER, ', '.join(SYNC_STATISTICS_BY_TRAINER)))
            sync_statistics = SYNC_STATISTICS_BY_TRAINER[cfg.TRAINER]
        return cls(
            meta_architecture=META_ARCHITECTURE_BY_MODE_FPN[bool(cfg.MODE_FPN)],
            mode_mask=bool(cfg.MODE_MASK),
            num_category=cfg.DATA.NUM_CATEGORY,
            pixel_mean=tuple(cfg.PREPROC.PIXEL_MEAN),
            pixel_std=tuple(cfg.PREPROC.PIXEL_STD),
            max_size=derived.max_size,
            backbone=BackboneParams(
                norm=cfg.BACKBONE.NORM, freeze_at=cfg.BACKBONE.FREEZE_AT,
                freeze_affine=cfg.BACKBONE.FREEZE_AFFINE, tf_pad_mode=cfg.BACKBONE.TF_PAD_MODE,
                stride_1x1=cfg.BACKBONE.STRIDE_1X1, resnet_num_blocks=tuple(cfg.BACKBONE.RESNET_NUM_BLOCKS),
                data_format=derived.data_format, sync_statistics=sync_statistics),
            rpn=RPNParams(
                anchor_stride=cfg.RPN.ANCHOR_STRIDE, anchor_sizes=tuple(cfg.RPN.ANCHOR_SIZES),
                anchor_ratios=tuple(cfg.RPN.ANCHOR_RATIOS), head_dim=cfg.RPN.HEAD_DIM,
                batch_per_im=cfg.RPN.BATCH_PER_IM, proposal_nms_thresh=cfg.RPN.PROPOSAL_NMS_THRESH,
                min_size=cfg.RPN.MIN_SIZE,
                train_topk=ProposalTopK(pre_nms_topk=cfg.RPN.TRAIN_PRE_NMS_TOPK,
                                        post_nms_topk=cfg.RPN.TRAIN_POST_NMS_TOPK,
                                        per_level_topk=cfg.RPN.TRAIN_PER_LEVEL_NMS_TOPK),
                test_topk=ProposalTopK(pre_nms_topk=cfg.RPN.TEST_PRE_NMS_TOPK,
                                       post_nms_topk=cfg.RPN.TEST_POST_NMS_TOPK,
                                       per_level_topk=cfg.RPN.TEST_PER_LEVEL_NMS_TOPK)),
            fpn=FPNParams(
                anchor_strides=tuple(cfg.FPN.ANCHOR_STRIDES),
                resolution_requirement=cfg.FPN.RESOLUTION_REQUIREMENT, num_channel=cfg.FPN.NUM_CHANNEL,
                norm=cfg.FPN.NORM, proposal_mode=cfg.FPN.PROPOSAL_MODE, box_head=cfg.FPN.FRCNN_HEAD_FUNC,
                conv_head_dim=cfg.FPN.FRCNN_CONV_HEAD_DIM, fc_head_dim=cfg.FPN.FRCNN_FC_HEAD_DIM,
                mask_head=cfg.FPN.MRCNN_HEAD_FUNC, cascade=bool(cfg.FPN.CASCADE)),
            frcnn=FastRCNNParams(
                batch_per_im=cfg.FRCNN.BATCH_PER_IM, fg_ratio=cfg.FRCNN.FG_RATIO,
                fg_thresh=cfg.FRCNN.FG_THRESH, bbox_reg_weights=tuple(cfg.FRCNN.BBOX_REG_WEIGHTS)),
            cascade=CascadeParams(
                ious=tuple(cfg.CASCADE.IOUS),
                bbox_reg_weights=tuple(tuple(w) for w in cfg.CASCADE.BBOX_REG_WEIGHTS)),
            mask=MaskParams(head_dim=cfg.MRCNN.HEAD_DIM),
            test=DetectionParams(
                result_score_thresh=cfg.TEST.RESULT_SCORE_THRESH, frcnn_nms_thresh=cfg.TEST.FRCNN_NMS_THRESH,
                results_per_im=cfg.TEST.RESULTS_PER_IM),
            train=TrainParams(
                weight_decay=cfg.TRAIN.WEIGHT_DECAY, accumulate_steps=derived.accumulate_steps,
                amp=bool(cfg.TRAIN.AMP), batch_size_per_tower=cfg.TRAIN.BATCH_SIZE_PER_GPU))
