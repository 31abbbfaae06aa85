"""Faster/Mask/Cascade R-CNN on ResNet-FPN: levels p2..p6, one RPN head shared by all levels.

Shape shorthand: B images; fH, fW a level's size; A anchors per cell; N rois. Boxes are float32
x1y1x2y2 in pixels of the resized image.
"""
import functools

from utils.tf_compat import tf

from utils import tensor_names as names
from utils.np_box_ops import get_all_anchors_fpn

from .backbone import resnet_fpn_backbone
from .batching import batched_anchors, num_images, own_feature_cells, run_on_nonempty_batch
from .model_cascade import CascadeRCNNHead
from .model_fpn import fpn_model, generate_fpn_proposals, multilevel_roi_align, multilevel_rpn_losses
from .model_frcnn import FastRCNNHead, fastrcnn_outputs, get_box_head
from .model_mrcnn import get_mask_head
from .model_rpn import rpn_head
from .params import FPN_ROI_SIZES
from .rcnn import GeneralizedRCNN, MaskRoiFeatures


class ResNetFPNModel(GeneralizedRCNN):
    """Faster/Mask/Cascade R-CNN on a ResNet-FPN (levels p2..p6)."""

    ROI_SIZES = FPN_ROI_SIZES

    def _levels(self):
        """The anchor levels: one per FPN.ANCHOR_STRIDES entry, from p2 up."""
        return names.FPN_LEVELS[:len(self.params.fpn.anchor_strides)]

    def _anchor_inputs(self):
        num_anchors = self.params.rpn.num_anchors_fpn
        specs = []
        for level in self._levels():
            specs.extend([
                tf.TensorSpec((None, None, num_anchors), tf.int32, names.fpn_anchor_labels(level)),
                tf.TensorSpec((None, None, num_anchors, 4), tf.float32, names.fpn_anchor_boxes(level))])
        return specs

    def backbone(self, image):
        backbone, fpn = self.params.backbone, self.params.fpn
        c2345 = resnet_fpn_backbone(image, backbone.resnet_num_blocks, freeze_at=backbone.freeze_at,
                                    resolution_requirement=fpn.resolution_requirement, **backbone.layer_options())
        return fpn_model('fpn', list(c2345), fpn.num_channel, fpn.norm == 'GN', self.data_format)

    def rpn(self, features, valid_hw, inputs):
        rpn, fpn = self.params.rpn, self.params.fpn
        grids = get_all_anchors_fpn(fpn.anchor_strides, rpn.anchor_sizes, rpn.anchor_ratios, self.params.max_size)
        multilevel_anchors, label_logits, box_logits, pred_boxes, map_sizes = [], [], [], [], []
        for level, grid, featuremap in zip(self._levels(), grids, features):
            # One rpn head, its variables shared by all levels.
            level_labels, level_boxes = rpn_head('rpn', featuremap, fpn.num_channel, rpn.num_anchors_fpn,
                                                 self.data_format)
            map_hw = tf.shape(level_labels)[1:3]
            with tf.name_scope('FPN_slice_lvl{}'.format(level)):
                if inputs is None:
                    anchors = batched_anchors(grid, None, None, map_hw)
                else:
                    anchors = batched_anchors(grid, inputs[names.fpn_anchor_labels(level)],
                                              inputs[names.fpn_anchor_boxes(level)], map_hw)
            multilevel_anchors.append(anchors)
            label_logits.append(level_labels)
            box_logits.append(level_boxes)
            pred_boxes.append(anchors.decode_logits(level_boxes, clip=self.params.decode_clip))
            map_sizes.append(map_hw)
        topk = rpn.topk(self.training)
        proposals = []
        for i in range(num_images(valid_hw)):
            # Only the cells the image has when alone: the padding of the batch adds no candidates.
            cells = [tf.minimum(own_feature_cells(valid_hw[i], stride, fpn.resolution_requirement), map_hw)
                     for stride, map_hw in zip(fpn.anchor_strides, map_sizes)]
            boxes, _ = generate_fpn_proposals(
                [pred[i, :c[0], :c[1]] for pred, c in zip(pred_boxes, cells)],
                [logits[i, :c[0], :c[1]] for logits, c in zip(label_logits, cells)], valid_hw[i],
                proposal_mode=fpn.proposal_mode, pre_nms_topk=topk.pre_nms_topk, post_nms_topk=topk.post_nms_topk,
                per_level_topk=topk.per_level_topk, nms_thresh=rpn.proposal_nms_thresh, min_size=rpn.min_size)
            proposals.append(boxes)
        if inputs is None:
            return proposals, []
        return proposals, multilevel_rpn_losses(multilevel_anchors, label_logits, box_logits,
                                                num_images(valid_hw) * rpn.batch_per_im)

    def _box_head_features(self, scope, roi_features):
        """The FPN.FRCNN_HEAD_FUNC head named `scope` on roi_features float32 [N, S, S, C]: [N, D]."""
        fpn = self.params.fpn
        head = functools.partial(get_box_head(fpn.box_head), scope, conv_dim=fpn.conv_head_dim,
                                 fc_dim=fpn.fc_head_dim, data_format=self.data_format)
        return run_on_nonempty_batch(head, roi_features)

    def box_head(self, features, proposals, image_shape_hw, targets):
        params, data_format = self.params, self.data_format
        p2345 = features[:4]

        def roi_func(boxes, box_indices=None):
            return multilevel_roi_align(p2345, boxes, self.ROI_SIZES.box_roi_resolution, data_format,
                                        box_indices=box_indices)

        gt_boxes = targets.boxes if targets else None
        if params.fpn.cascade:
            head = CascadeRCNNHead(
                proposals, roi_func, self._box_head_features, gt_boxes, targets.labels if targets else None,
                image_shape_hw, params.num_category, ious=params.cascade.ious,
                bbox_reg_weights=params.cascade.bbox_reg_weights, decode_clip=params.decode_clip,
                training=self.training, gt_image_inds=targets.image_inds if targets else None)
        else:
            head_feature = self._box_head_features('fastrcnn', roi_func(proposals.boxes, proposals.image_inds))
            label_logits, box_logits = fastrcnn_outputs('fastrcnn/outputs', head_feature, params.num_category)
            head = FastRCNNHead(proposals, box_logits, label_logits, gt_boxes, params.frcnn.bbox_reg_weights,
                                params.decode_clip)

        def mask_roi_align(boxes, box_indices=None):
            return multilevel_roi_align(p2345, boxes, self.ROI_SIZES.mask_roi_resolution, data_format,
                                        box_indices=box_indices, name_scope='multilevel_roi_align_mask')
        mask_features = MaskRoiFeatures(
            of_sampled_foreground=lambda sampled: mask_roi_align(sampled.fg_boxes, sampled.fg_image_inds),
            of_detections=mask_roi_align)
        return head, mask_features

    def mask_head(self, roi_features):
        head_func = get_mask_head(self.params.fpn.mask_head)
        return head_func('maskrcnn', roi_features, self.params.num_category, head_dim=self.params.mask.head_dim,
                         data_format=self.data_format)
