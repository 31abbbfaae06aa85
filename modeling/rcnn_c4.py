"""Faster/Mask R-CNN on ResNet-C4: one feature map at stride 16, stage 5 as the per-roi head.

Shape shorthand: B images; fH, fW the map's size; A anchors per cell; N rois. Boxes are float32
x1y1x2y2 in pixels of the resized image.
"""
from utils.tf_compat import tf  # noqa: I001  (must come before tensorpack)

from tensorpack.models import GlobalAvgPooling

from utils import tensor_names as names
from utils.np_box_ops import get_all_anchors

from .backbone import resnet_c4_backbone, resnet_conv5
from .batching import batched_anchors, num_images, own_feature_cells, run_on_nonempty_batch
from .model_box import roi_align
from .model_frcnn import FastRCNNHead, fastrcnn_outputs
from .model_mrcnn import maskrcnn_c4_head
from .model_rpn import generate_rpn_proposals, rpn_head, rpn_losses
from .params import C4_ROI_SIZES
from .rcnn import GeneralizedRCNN, MaskRoiFeatures


class ResNetC4Model(GeneralizedRCNN):
    """Faster/Mask R-CNN on ResNet stages 1-4, with stage 5 as the per-roi box/mask head."""

    ROI_SIZES = C4_ROI_SIZES

    def _anchor_inputs(self):
        num_anchors = self.params.rpn.num_anchors_c4
        return [tf.TensorSpec((None, None, num_anchors), tf.int32, names.C4_ANCHOR_LABELS),
                tf.TensorSpec((None, None, num_anchors, 4), tf.float32, names.C4_ANCHOR_BOXES)]

    def backbone(self, image):
        backbone = self.params.backbone
        return [resnet_c4_backbone(image, backbone.resnet_num_blocks[:3], freeze_at=backbone.freeze_at,
                                   **backbone.layer_options())]

    def rpn(self, features, valid_hw, inputs):
        featuremap = features[0]
        rpn = self.params.rpn
        label_logits, box_logits = rpn_head('rpn', featuremap, rpn.head_dim, rpn.num_anchors_c4, self.data_format)
        map_hw = tf.shape(label_logits)[1:3]
        grid = get_all_anchors(rpn.anchor_stride, rpn.anchor_sizes, rpn.anchor_ratios, self.params.max_size)
        if inputs is None:
            anchors = batched_anchors(grid, None, None, map_hw)
        else:
            anchors = batched_anchors(grid, inputs[names.C4_ANCHOR_LABELS], inputs[names.C4_ANCHOR_BOXES], map_hw)
        pred_boxes = anchors.decode_logits(box_logits, clip=self.params.decode_clip)  # [B, fH, fW, A, 4]
        topk = rpn.topk(self.training)
        proposals = []
        for i in range(num_images(valid_hw)):
            cells = tf.minimum(own_feature_cells(valid_hw[i], rpn.anchor_stride, 1), map_hw)
            boxes, _ = generate_rpn_proposals(
                tf.reshape(pred_boxes[i, :cells[0], :cells[1]], [-1, 4]),
                tf.reshape(label_logits[i, :cells[0], :cells[1]], [-1]), valid_hw[i],
                topk.pre_nms_topk, topk.post_nms_topk, rpn.proposal_nms_thresh, rpn.min_size)
            proposals.append(boxes)
        if inputs is None:
            return proposals, []
        return proposals, rpn_losses(anchors.gt_labels, anchors.encoded_gt_boxes(), label_logits, box_logits,
                                     num_images(valid_hw) * rpn.batch_per_im)

    def _conv5(self, roi_features):
        backbone = self.params.backbone

        def conv5(features):
            return resnet_conv5(features, backbone.resnet_num_blocks[-1], **backbone.layer_options())
        return run_on_nonempty_batch(conv5, roi_features)

    def _roi_conv5(self, featuremap, boxes, box_indices=None):
        """group3 on the 14x14 ROIAlign of `boxes`: [N, 7, 7, 2048] (or NCHW)."""
        rois = roi_align(featuremap, boxes * (1.0 / self.params.rpn.anchor_stride),
                         self.ROI_SIZES.box_roi_resolution, self.data_format, box_indices)
        return self._conv5(rois)

    def box_head(self, features, proposals, image_shape_hw, targets):
        featuremap = features[0]
        conv5_features = self._roi_conv5(featuremap, proposals.boxes, proposals.image_inds)
        pooled = GlobalAvgPooling('gap', conv5_features, data_format=self.data_format)
        label_logits, box_logits = fastrcnn_outputs('fastrcnn', pooled, self.params.num_category)
        head = FastRCNNHead(proposals, box_logits, label_logits, targets.boxes if targets else None,
                            self.params.frcnn.bbox_reg_weights, self.params.decode_clip)
        mask_features = MaskRoiFeatures(
            # Training: the foreground rois already went through conv5 for the box head.
            of_sampled_foreground=lambda sampled: tf.gather(conv5_features, sampled.fg_inds),
            of_detections=lambda boxes: self._roi_conv5(featuremap, boxes))
        return head, mask_features

    def mask_head(self, roi_features):
        return maskrcnn_c4_head('maskrcnn', roi_features, self.params.num_category,
                                head_dim=self.params.mask.head_dim, data_format=self.data_format)
