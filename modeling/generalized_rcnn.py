"""The model assembly: tensorpack ModelDescs for ResNet-C4 and ResNet-FPN Faster/Mask/Cascade R-CNN.

This is the one modeling module that reads the (finalized) config; it reads it while building
the graph and passes plain values down to the pure functions of the other modules.

Shape shorthand: H, W resized image size; M gt boxes; N proposals; R final detections;
K categories; A anchors per cell. Boxes are float32 x1y1x2y2 in pixels of the resized image.
Inputs and outputs are named by utils/tensor_names.py.
"""
from collections import namedtuple

import numpy as np

from utils.tf_compat import amp_compute_dtype, tf  # noqa: I001  (must come before tensorpack)

from tensorpack import ModelDesc
from tensorpack.models import GlobalAvgPooling, l2_regularizer, regularize_cost
from tensorpack.tfutils.summary import add_moving_summary

from config import config as cfg
from utils import tensor_names as names
from utils.np_box_ops import get_all_anchors, get_all_anchors_fpn
from utils.optimizers import AccumGradOptimizer, with_dynamic_loss_scaling

from .backbone import image_preprocess, resnet_c4_backbone, resnet_conv5, resnet_fpn_backbone
from .model_box import RPNAnchors, area, clip_boxes, crop_and_resize, roi_align
from .model_cascade import CascadeRCNNHead
from .model_fpn import fpn_model, generate_fpn_proposals, multilevel_roi_align, multilevel_rpn_losses
from .model_frcnn import (BoxProposals, FastRCNNHead, fastrcnn_outputs, fastrcnn_predictions, get_box_head,
                          sample_fast_rcnn_targets)
from .model_mrcnn import get_mask_head, maskrcnn_c4_head, maskrcnn_loss, select_class_masks, unpackbits_masks
from .model_rpn import generate_rpn_proposals, rpn_head, rpn_losses

GroundTruth = namedtuple('GroundTruth', ['boxes', 'labels', 'masks'])
GroundTruth.__doc__ = """Training targets of one image: boxes float32 [M, 4], labels int64 [M],
masks uint8 [M, H, W] or None (no mask head)."""


def _backbone_options():
    """Keyword arguments shared by the backbone builders."""
    sync_statistics = None
    if cfg.BACKBONE.NORM == 'SyncBN':
        # Batch statistics are averaged over all GPUs, by Horovod or, in-process, by NCCL.
        sync_statistics = 'horovod' if cfg.TRAINER == 'horovod' else 'nccl'
    return dict(norm=cfg.BACKBONE.NORM, freeze_affine=cfg.BACKBONE.FREEZE_AFFINE,
                tf_pad_mode=cfg.BACKBONE.TF_PAD_MODE, stride_1x1=cfg.BACKBONE.STRIDE_1X1,
                data_format=cfg.BACKBONE.DATA_FORMAT, sync_statistics=sync_statistics)


def _decode_clip():
    # tensorpack caps decoded log-scale deltas at log(MAX_SIZE / 16).
    return float(np.log(cfg.PREPROC.MAX_SIZE / 16.))


def run_on_nonempty_batch(head, roi_features):
    """head(roi_features), computed on at least one row and cut back to the R rows given.

    roi_features: float32 [R, ...]. A roi head gets no rows when an image has no usable gt and no
    proposal survives, or when inference keeps no detection. oneDNN's convolution kernels (TF's
    default on CPUs with AVX512_VNNI/BF16/AMX) get R == 0 wrong: the forward conv returns a tensor
    shaped like its input, and the filter gradient fused with the bias gradient loses an output. So
    an empty batch is padded with one all-zero row. The slice drops that row's output, so its
    gradient is zero, and a non-empty batch is computed exactly as before.
    """
    num_rois = tf.shape(roi_features)[0]
    pad_rows = tf.maximum(1 - num_rois, 0)
    paddings = tf.concat([[[0, pad_rows]], tf.zeros([roi_features.shape.ndims - 1, 2], tf.int32)], axis=0)
    padded = tf.pad(roi_features, paddings)
    padded.set_shape(roi_features.shape)   # a computed padding would lose the static shape
    return head(padded)[:num_rois]


def _rpn_topk(training):
    """(pre-NMS top-k, post-NMS top-k, per-level top-k) of the RPN proposals."""
    prefix = 'TRAIN_' if training else 'TEST_'
    return tuple(getattr(cfg.RPN, prefix + key) for key in ('PRE_NMS_TOPK', 'POST_NMS_TOPK', 'PER_LEVEL_NMS_TOPK'))


class GeneralizedRCNN(ModelDesc):
    """What C4 and FPN share: inputs, losses, inference outputs, optimizer.

    Subclasses provide `backbone`, `rpn`, `box_head`, `mask_head` and `MASK_SIZE`.
    """

    MASK_SIZE = None    # side of the mask head's output (and of the mask targets)

    def _anchor_inputs(self):
        raise NotImplementedError

    def inputs(self):
        specs = [tf.TensorSpec((None, None, 3), tf.float32, names.IMAGE)]
        specs.extend(self._anchor_inputs())
        specs.extend([tf.TensorSpec((None, 4), tf.float32, names.GT_BOXES),
                      tf.TensorSpec((None,), tf.int64, names.GT_LABELS)])
        if cfg.MODE_MASK:
            specs.append(tf.TensorSpec((None, None, None), tf.uint8, names.GT_MASKS_PACKED))
        return specs

    def optimizer(self):
        lr = tf.get_variable('learning_rate', initializer=0.003, trainable=False)
        tf.summary.scalar('learning_rate-summary', lr)
        # The schedule is for a total batch of 8 images whose gradients are summed (not
        # averaged) over towers and accumulation steps; lr / 8 makes that the average.
        opt = tf.train.MomentumOptimizer(lr / 8., 0.9)
        if cfg.TRAIN.ACCUMULATE_STEPS > 1:
            # ours, not tensorpack's: that one applies at racy steps, which lets Horovod ranks drift apart
            opt = AccumGradOptimizer(opt, cfg.TRAIN.ACCUMULATE_STEPS)
        if cfg.TRAIN.AMP and amp_compute_dtype() == 'float16':
            # float16 gradients underflow without loss scaling; bfloat16 has float32's range and needs none.
            opt = with_dynamic_loss_scaling(opt)
        return opt

    def get_inference_tensor_names(self):
        """(input names, output names) of the inference graph, for predictors."""
        outputs = names.OUTPUT_NAMES_WITH_MASKS if cfg.MODE_MASK else names.OUTPUT_NAMES
        return [names.IMAGE], list(outputs)

    def build_graph(self, *inputs):
        inputs = dict(zip(self.input_names, inputs))
        image_shape_hw = tf.shape(inputs[names.IMAGE])[:2]
        image = image_preprocess(inputs[names.IMAGE], cfg.PREPROC.PIXEL_MEAN, cfg.PREPROC.PIXEL_STD,
                                 cfg.BACKBONE.DATA_FORMAT)
        features = self.backbone(image)
        proposals, rpn_loss_list = self.rpn(features, image_shape_hw, inputs)

        if not self.training:
            self.roi_heads(features, proposals, image_shape_hw, None)
            self._check_outputs_exist()
            return None

        gt_masks = None
        if cfg.MODE_MASK:
            gt_masks = tf.identity(unpackbits_masks(inputs[names.GT_MASKS_PACKED], image_shape_hw), name='gt_masks')
        targets = GroundTruth(inputs[names.GT_BOXES], inputs[names.GT_LABELS], gt_masks)
        gt_areas = area(targets.boxes)
        add_moving_summary(tf.where(tf.size(gt_areas) > 0, tf.reduce_mean(gt_areas), 0., name='mean_gt_box_area'))

        head_loss_list = self.roi_heads(features, proposals, image_shape_hw, targets)
        wd_cost = regularize_cost('.*/W', l2_regularizer(cfg.TRAIN.WEIGHT_DECAY), name='wd_cost')
        total_cost = tf.add_n(rpn_loss_list + head_loss_list + [wd_cost], 'total_cost')
        add_moving_summary(total_cost, wd_cost)
        return total_cost

    def _check_outputs_exist(self):
        graph = tf.get_default_graph()
        scope = graph.get_name_scope()
        for name in self.get_inference_tensor_names()[1]:
            full_name = scope + '/' + name if scope else name
            try:
                graph.get_tensor_by_name(full_name + ':0')
            except KeyError:
                raise KeyError("The inference graph lacks the declared output '{}'".format(full_name)) from None

    def roi_heads(self, features, proposals, image_shape_hw, targets):
        """Box (and mask) heads. Training: returns their losses; inference: creates the outputs."""
        if self.training:
            proposals = sample_fast_rcnn_targets(
                proposals.boxes, targets.boxes, targets.labels, batch_per_im=cfg.FRCNN.BATCH_PER_IM,
                fg_ratio=cfg.FRCNN.FG_RATIO, fg_thresh=cfg.FRCNN.FG_THRESH)
        box_head, mask_roi_features = self.box_head(features, proposals, image_shape_hw, targets)

        if self.training:
            losses = box_head.losses()
            if cfg.MODE_MASK:
                mask_logits = run_on_nonempty_batch(
                    self.mask_head, mask_roi_features(proposals.fg_boxes, proposals.fg_inds))
                target_masks = crop_and_resize(
                    tf.expand_dims(tf.cast(targets.masks, tf.float32), 3), proposals.fg_boxes,
                    proposals.fg_inds_wrt_gt, self.MASK_SIZE, 'NHWC', pad_border=False)
                target_masks = tf.squeeze(target_masks, 3, name='sampled_fg_mask_targets')
                losses.append(maskrcnn_loss(mask_logits, proposals.fg_labels, target_masks))
            return losses

        all_boxes = clip_boxes(box_head.decoded_output_boxes(), image_shape_hw, name='fastrcnn_all_boxes')
        all_scores = box_head.output_scores(name='fastrcnn_all_scores')
        boxes, scores, labels = fastrcnn_predictions(
            all_boxes, all_scores, score_thresh=cfg.TEST.RESULT_SCORE_THRESH,
            nms_thresh=cfg.TEST.FRCNN_NMS_THRESH, results_per_im=cfg.TEST.RESULTS_PER_IM)
        tf.identity(boxes, name=names.OUTPUT_BOXES)
        tf.identity(scores, name=names.OUTPUT_SCORES)
        tf.identity(labels, name=names.OUTPUT_LABELS)
        if cfg.MODE_MASK:
            # Only the (at most RESULTS_PER_IM) final detections go through the mask head.
            mask_logits = run_on_nonempty_batch(self.mask_head, mask_roi_features(boxes, None))
            tf.sigmoid(select_class_masks(mask_logits, labels), name=names.OUTPUT_MASKS)
        return []


class ResNetC4Model(GeneralizedRCNN):
    """Faster/Mask R-CNN on ResNet stages 1-4, with stage 5 as the per-roi box/mask head."""

    MASK_SIZE = 14

    def _anchor_inputs(self):
        return [tf.TensorSpec((None, None, cfg.RPN.NUM_ANCHOR), tf.int32, names.C4_ANCHOR_LABELS),
                tf.TensorSpec((None, None, cfg.RPN.NUM_ANCHOR, 4), tf.float32, names.C4_ANCHOR_BOXES)]

    def backbone(self, image):
        return [resnet_c4_backbone(image, cfg.BACKBONE.RESNET_NUM_BLOCKS[:3], freeze_at=cfg.BACKBONE.FREEZE_AT,
                                   **_backbone_options())]

    def rpn(self, features, image_shape_hw, inputs):
        featuremap = features[0]
        data_format = cfg.BACKBONE.DATA_FORMAT
        label_logits, box_logits = rpn_head('rpn', featuremap, cfg.RPN.HEAD_DIM, cfg.RPN.NUM_ANCHOR, data_format)
        all_anchors = get_all_anchors(cfg.RPN.ANCHOR_STRIDE, cfg.RPN.ANCHOR_SIZES, cfg.RPN.ANCHOR_RATIOS,
                                      cfg.PREPROC.MAX_SIZE)
        if self.training:
            anchors = RPNAnchors(all_anchors, inputs[names.C4_ANCHOR_LABELS], inputs[names.C4_ANCHOR_BOXES])
        else:
            anchors = RPNAnchors(all_anchors, None, None)
        anchors = anchors.narrow_to(featuremap, data_format)

        pred_boxes = anchors.decode_logits(box_logits, clip=_decode_clip())  # [fH, fW, A, 4]
        pre_topk, post_topk, _ = _rpn_topk(self.training)
        proposal_boxes, _ = generate_rpn_proposals(
            tf.reshape(pred_boxes, [-1, 4]), tf.reshape(label_logits, [-1]), image_shape_hw,
            pre_topk, post_topk, cfg.RPN.PROPOSAL_NMS_THRESH, cfg.RPN.MIN_SIZE)
        losses = []
        if self.training:
            losses = rpn_losses(anchors.gt_labels, anchors.encoded_gt_boxes(), label_logits, box_logits,
                                cfg.RPN.BATCH_PER_IM)
        return BoxProposals(proposal_boxes), losses

    def _conv5(self, roi_features):
        def conv5(features):
            return resnet_conv5(features, cfg.BACKBONE.RESNET_NUM_BLOCKS[-1], **_backbone_options())
        return run_on_nonempty_batch(conv5, roi_features)

    def _roi_conv5(self, featuremap, boxes):
        """group3 on the 14x14 ROIAlign of `boxes`: [N, 7, 7, 2048] (or NCHW)."""
        data_format = cfg.BACKBONE.DATA_FORMAT
        rois = roi_align(featuremap, boxes * (1.0 / cfg.RPN.ANCHOR_STRIDE), 14, data_format)
        return self._conv5(rois)

    def box_head(self, features, proposals, image_shape_hw, targets):
        featuremap = features[0]
        data_format = cfg.BACKBONE.DATA_FORMAT
        conv5_features = self._roi_conv5(featuremap, proposals.boxes)
        pooled = GlobalAvgPooling('gap', conv5_features, data_format=data_format)
        label_logits, box_logits = fastrcnn_outputs('fastrcnn', pooled, cfg.DATA.NUM_CATEGORY)
        head = FastRCNNHead(proposals, box_logits, label_logits, targets.boxes if targets else None,
                            cfg.FRCNN.BBOX_REG_WEIGHTS, _decode_clip())

        def mask_roi_features(boxes, fg_inds):
            if fg_inds is not None:
                # Training: the foreground rois already went through conv5 for the box head.
                return tf.gather(conv5_features, fg_inds)
            return self._roi_conv5(featuremap, boxes)
        return head, mask_roi_features

    def mask_head(self, roi_features):
        return maskrcnn_c4_head('maskrcnn', roi_features, cfg.DATA.NUM_CATEGORY, head_dim=cfg.MRCNN.HEAD_DIM,
                                data_format=cfg.BACKBONE.DATA_FORMAT)


class ResNetFPNModel(GeneralizedRCNN):
    """Faster/Mask/Cascade R-CNN on a ResNet-FPN (levels p2..p6)."""

    MASK_SIZE = 28

    def _anchor_inputs(self):
        num_anchors = len(cfg.RPN.ANCHOR_RATIOS)
        specs = []
        for level in names.FPN_LEVELS[:len(cfg.FPN.ANCHOR_STRIDES)]:
            specs.extend([
                tf.TensorSpec((None, None, num_anchors), tf.int32, names.fpn_anchor_labels(level)),
                tf.TensorSpec((None, None, num_anchors, 4), tf.float32, names.fpn_anchor_boxes(level))])
        return specs

    def backbone(self, image):
        data_format = cfg.BACKBONE.DATA_FORMAT
        c2345 = resnet_fpn_backbone(image, cfg.BACKBONE.RESNET_NUM_BLOCKS, freeze_at=cfg.BACKBONE.FREEZE_AT,
                                    resolution_requirement=cfg.FPN.RESOLUTION_REQUIREMENT, **_backbone_options())
        return fpn_model('fpn', list(c2345), cfg.FPN.NUM_CHANNEL, cfg.FPN.NORM == 'GN', data_format)

    def rpn(self, features, image_shape_hw, inputs):
        data_format = cfg.BACKBONE.DATA_FORMAT
        all_anchors = get_all_anchors_fpn(cfg.FPN.ANCHOR_STRIDES, cfg.RPN.ANCHOR_SIZES, cfg.RPN.ANCHOR_RATIOS,
                                          cfg.PREPROC.MAX_SIZE)
        multilevel_anchors = []
        for level, level_anchors, featuremap in zip(names.FPN_LEVELS, all_anchors, features):
            if self.training:
                anchors = RPNAnchors(level_anchors, inputs[names.fpn_anchor_labels(level)],
                                     inputs[names.fpn_anchor_boxes(level)])
            else:
                anchors = RPNAnchors(level_anchors, None, None)
            multilevel_anchors.append(anchors.narrow_to(featuremap, data_format,
                                                        name_scope='FPN_slice_lvl{}'.format(level)))

        # One rpn head, its variables shared by all levels.
        rpn_outputs = [rpn_head('rpn', p, cfg.FPN.NUM_CHANNEL, len(cfg.RPN.ANCHOR_RATIOS), data_format)
                       for p in features]
        label_logits = [out[0] for out in rpn_outputs]
        box_logits = [out[1] for out in rpn_outputs]
        pred_boxes = [anchors.decode_logits(logits, clip=_decode_clip())
                      for anchors, logits in zip(multilevel_anchors, box_logits)]
        pre_topk, post_topk, per_level_topk = _rpn_topk(self.training)
        proposal_boxes, _ = generate_fpn_proposals(
            pred_boxes, label_logits, image_shape_hw, proposal_mode=cfg.FPN.PROPOSAL_MODE,
            pre_nms_topk=pre_topk, post_nms_topk=post_topk, per_level_topk=per_level_topk,
            nms_thresh=cfg.RPN.PROPOSAL_NMS_THRESH, min_size=cfg.RPN.MIN_SIZE)
        losses = []
        if self.training:
            losses = multilevel_rpn_losses(multilevel_anchors, label_logits, box_logits, cfg.RPN.BATCH_PER_IM)
        return BoxProposals(proposal_boxes), losses

    def box_head(self, features, proposals, image_shape_hw, targets):
        data_format = cfg.BACKBONE.DATA_FORMAT
        p2345 = features[:4]
        head_func = get_box_head(cfg.FPN.FRCNN_HEAD_FUNC)

        def box_head_func(scope, roi_features):
            def head(features):
                return head_func(scope, features, conv_dim=cfg.FPN.FRCNN_CONV_HEAD_DIM,
                                 fc_dim=cfg.FPN.FRCNN_FC_HEAD_DIM, data_format=data_format)
            return run_on_nonempty_batch(head, roi_features)

        def roi_func(boxes):
            return multilevel_roi_align(p2345, boxes, 7, data_format)

        gt_boxes = targets.boxes if targets else None
        if cfg.FPN.CASCADE:
            head = CascadeRCNNHead(
                proposals, roi_func, box_head_func, gt_boxes, targets.labels if targets else None,
                image_shape_hw, cfg.DATA.NUM_CATEGORY, ious=cfg.CASCADE.IOUS,
                bbox_reg_weights=cfg.CASCADE.BBOX_REG_WEIGHTS, decode_clip=_decode_clip(), training=self.training)
        else:
            head_feature = box_head_func('fastrcnn', roi_func(proposals.boxes))
            label_logits, box_logits = fastrcnn_outputs('fastrcnn/outputs', head_feature, cfg.DATA.NUM_CATEGORY)
            head = FastRCNNHead(proposals, box_logits, label_logits, gt_boxes, cfg.FRCNN.BBOX_REG_WEIGHTS,
                                _decode_clip())

        def mask_roi_features(boxes, fg_inds):
            del fg_inds
            return multilevel_roi_align(p2345, boxes, 14, data_format, name_scope='multilevel_roi_align_mask')
        return head, mask_roi_features

    def mask_head(self, roi_features):
        head_func = get_mask_head(cfg.FPN.MRCNN_HEAD_FUNC)
        return head_func('maskrcnn', roi_features, cfg.DATA.NUM_CATEGORY, head_dim=cfg.MRCNN.HEAD_DIM,
                         data_format=cfg.BACKBONE.DATA_FORMAT)
