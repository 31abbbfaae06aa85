"""The model assembly: tensorpack ModelDescs for ResNet-C4 and ResNet-FPN Faster/Mask/Cascade R-CNN.

The models take a `ModelParams` record (modeling/params.py) in their constructor and pass
plain values from it down to the pure functions of the other modules; `build_model(cfg)` makes
that record from a finalized config and picks the class from META_ARCHITECTURES.

Shape shorthand: H, W resized image size; M gt boxes; N proposals; R final detections;
K categories; A anchors per cell. Boxes are float32 x1y1x2y2 in pixels of the resized image.
Inputs and outputs are named by utils/tensor_names.py.
"""
from collections import namedtuple

from utils.tf_compat import amp_compute_dtype, tf  # noqa: I001  (must come before tensorpack)

from tensorpack import ModelDesc
from tensorpack.models import GlobalAvgPooling, l2_regularizer, regularize_cost
from tensorpack.tfutils.summary import add_moving_summary

from utils import tensor_names as names
from utils.np_box_ops import get_all_anchors, get_all_anchors_fpn
from utils.optimizers import AccumGradOptimizer, with_dynamic_loss_scaling

from .params import C4_ROI_SIZES, FPN_ROI_SIZES, REFERENCE_TOTAL_BATCH, ModelParams
from .backbone import image_preprocess, resnet_c4_backbone, resnet_conv5, resnet_fpn_backbone
from .model_box import RPNAnchors, area, clip_boxes, crop_and_resize, roi_align
from .model_cascade import CascadeRCNNHead
from .model_fpn import fpn_model, generate_fpn_proposals, multilevel_roi_align, multilevel_rpn_losses
from .model_frcnn import (BoxProposals, FastRCNNHead, fastrcnn_outputs, fastrcnn_predictions, get_box_head,
                          sample_fast_rcnn_targets)
from .model_mrcnn import get_mask_head, maskrcnn_c4_head, maskrcnn_loss, select_class_masks, unpackbits_masks
from .model_rpn import generate_rpn_proposals, rpn_head, rpn_losses

GroundTruth = namedtuple('GroundTruth', ['boxes', 'labels', 'masks', 'image_inds'], defaults=(None,))
GroundTruth.__doc__ = """Training targets of one image: boxes float32 [M, 4], labels int64 [M],
masks uint8 [M, H, W] or None (no mask head). Several images: the gt of all images concatenated,
with image_inds int32 [M], the image of each (None with one image)."""

MaskRoiFeatures = namedtuple('MaskRoiFeatures', ['of_sampled_foreground', 'of_detections'])
MaskRoiFeatures.__doc__ = """How a box head hands ROI features to the mask head, per mode.

of_sampled_foreground(proposals): training, the foreground rois of the sampled BoxProposals;
of_detections(boxes float32 [R, 4]): inference, the final detections. Both return the mask
head's input, float32 [F or R, S, S, C] (or NCHW)."""


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


def batched_input_specs(specs, batch_size):
    """The inputs of a training graph of `batch_size` > 1 images per tower from the one-image `specs`.

    Every input gets a leading axis of batch_size (names.IMAGE_VALID_HW and names.GT_COUNTS are
    added), except the image, whose rank is left open: the inference graph built from these
    inputs (e.g. by EvalCallback's predictor) feeds one [H, W, 3] image to it.
    """
    out = []
    for spec in specs:
        if spec.name == names.IMAGE:
            out.append(tf.TensorSpec(None, spec.dtype, spec.name))
            out.append(tf.TensorSpec((batch_size, 2), tf.int32, names.IMAGE_VALID_HW))
            continue
        out.append(tf.TensorSpec([batch_size] + spec.shape.as_list(), spec.dtype, spec.name))
        if spec.name == names.GT_LABELS:
            out.append(tf.TensorSpec((batch_size,), tf.int32, names.GT_COUNTS))
    return out


def valid_pixel_mask(valid_hw, padded_hw, data_format):
    """float32 [B, Hp, Wp, 1] (NHWC) or [B, 1, Hp, Wp]: 1 inside each image's valid_hw (int32 [B, 2])."""
    rows = tf.range(padded_hw[0])[None, :] < valid_hw[:, 0:1]     # [B, Hp]
    cols = tf.range(padded_hw[1])[None, :] < valid_hw[:, 1:2]     # [B, Wp]
    mask = tf.cast(tf.logical_and(rows[:, :, None], cols[:, None, :]), tf.float32)
    return tf.expand_dims(mask, 3 if data_format == 'NHWC' else 1)


def fit_spatial(x, height_width, pad_value):
    """x [B, h, w, ...] cut or padded with pad_value at the bottom/right to [B, fH, fW, ...]."""
    shape = tf.shape(x)
    extra = tf.maximum(height_width - shape[1:3], 0)
    paddings = tf.concat([[[0, 0]], tf.stack([tf.zeros([2], tf.int32), extra], axis=1),
                          tf.zeros([x.shape.ndims - 3, 2], tf.int32)], axis=0)
    x = tf.pad(x, paddings, constant_values=pad_value)
    begin = tf.zeros([x.shape.ndims], tf.int32)
    size = tf.concat([[-1], height_width, -tf.ones([x.shape.ndims - 3], tf.int32)], axis=0)
    return tf.slice(x, begin, size)


def batched_anchors(grid, gt_labels, gt_boxes, height_width):
    """RPNAnchors of one level for a batch: the grid float32 [fH', fW', A, 4] (numpy) cut to the
    feature map's [fH, fW]; gt_labels [B, h, w, A] and gt_boxes [B, h, w, A, 4] fitted to it
    (padded -1 / 0, i.e. ignored, where the dataflow's arrays are smaller than the map)."""
    size = tf.concat([height_width, [-1, -1]], axis=0)
    return RPNAnchors(tf.slice(grid, [0, 0, 0, 0], size), fit_spatial(gt_labels, height_width, -1),
                      fit_spatial(gt_boxes, height_width, 0.))


def own_feature_cells(valid_hw, stride, multiple):
    """int32 [2]: the feature cells at `stride` that image of valid_hw (int32 [2]) has when it is
    alone, i.e. padded to a multiple of `multiple` (1: not padded)."""
    padded = (valid_hw + multiple - 1) // multiple * multiple
    return (padded + stride - 1) // stride


def per_image_ground_truth(inputs, batch_size):
    """The real gt of each image of a batched datapoint.

    Returns (per_image, all_boxes, all_labels, offsets): per_image a list of batch_size (boxes
    [M_i, 4], labels [M_i]); all_boxes [sum M_i, 4] and all_labels their concatenation in image
    order; offsets int64 [B], the first row of each image in it.
    """
    counts = inputs[names.GT_COUNTS]
    per_image = [(inputs[names.GT_BOXES][i, :counts[i]], inputs[names.GT_LABELS][i, :counts[i]])
                 for i in range(batch_size)]
    all_boxes = tf.concat([boxes for boxes, _ in per_image], axis=0)
    all_labels = tf.concat([labels for _, labels in per_image], axis=0)
    offsets = tf.cast(tf.cumsum(counts, exclusive=True), tf.int64)
    return per_image, all_boxes, all_labels, offsets


def image_indices(per_image_rows):
    """int32 [sum R_i]: i for every row of per_image_rows[i] (tensors [R_i, ...] of image i), in order."""
    return tf.concat([tf.fill(tf.shape(rows)[:1], i) for i, rows in enumerate(per_image_rows)], axis=0)


class GeneralizedRCNN(ModelDesc):
    """What C4 and FPN share: inputs, losses, inference outputs, optimizer.

    Subclasses provide `backbone`, `rpn`, `box_head`, `mask_head` and `ROI_SIZES`.

    params: the ModelParams of this model; nothing else is read while building the graph.
    """

    ROI_SIZES = None    # a params.RoiSizes: ROIAlign sides and the mask size

    def __init__(self, params):
        if not isinstance(params, ModelParams):
            raise TypeError('{} takes a modeling.params.ModelParams (see build_model(cfg)), got {!r}'.format(
                type(self).__name__, type(params).__name__))
        self.params = params

    @property
    def data_format(self):
        return self.params.backbone.data_format

    def _anchor_inputs(self):
        raise NotImplementedError

    @property
    def batch_size(self):
        """Training images per tower (TRAIN.BATCH_SIZE_PER_GPU); 1 builds the one-image graph."""
        return self.params.train.batch_size_per_tower

    def inputs(self):
        specs = [tf.TensorSpec((None, None, 3), tf.float32, names.IMAGE)]
        specs.extend(self._anchor_inputs())
        specs.extend([tf.TensorSpec((None, 4), tf.float32, names.GT_BOXES),
                      tf.TensorSpec((None,), tf.int64, names.GT_LABELS)])
        if self.params.mode_mask:
            specs.append(tf.TensorSpec((None, None, None), tf.uint8, names.GT_MASKS_PACKED))
        if self.batch_size > 1:
            return batched_input_specs(specs, self.batch_size)
        return specs

    def optimizer(self):
        lr = tf.get_variable('learning_rate', initializer=0.003, trainable=False)
        tf.summary.scalar('learning_rate-summary', lr)
        # The schedule is for a total batch of REFERENCE_TOTAL_BATCH images whose gradients are
        # summed (not averaged) over towers and accumulation steps; dividing makes that the average.
        opt = tf.train.MomentumOptimizer(lr / float(REFERENCE_TOTAL_BATCH), 0.9)
        accumulate_steps = self.params.train.accumulate_steps
        if accumulate_steps > 1:
            # ours, not tensorpack's: that one applies at racy steps, which lets Horovod ranks drift apart
            opt = AccumGradOptimizer(opt, accumulate_steps)
        if self.params.train.amp and amp_compute_dtype() == 'float16':
            # float16 gradients underflow without loss scaling; bfloat16 has float32's range and needs none.
            opt = with_dynamic_loss_scaling(opt)
        return opt

    def get_inference_tensor_names(self):
        """(input names, output names) of the inference graph, for predictors."""
        outputs = names.OUTPUT_NAMES_WITH_MASKS if self.params.mode_mask else names.OUTPUT_NAMES
        return [names.IMAGE], list(outputs)

    def build_graph(self, *inputs):
        inputs = dict(zip(self.input_names, inputs))
        if self.batch_size > 1:
            if self.training:
                return self._build_batched_training_graph(inputs)
            # Inference stays one image. Not set_shape: the input may be the very placeholder that
            # tensorpack's QueueInput feeds batches through (EvalCallback's predictor reuses it by name).
            inputs[names.IMAGE] = tf.ensure_shape(inputs[names.IMAGE], [None, None, 3])
        image_shape_hw = tf.shape(inputs[names.IMAGE])[:2]
        image = image_preprocess(inputs[names.IMAGE], self.params.pixel_mean, self.params.pixel_std,
                                 self.data_format)
        features = self.backbone(image)
        proposals, rpn_loss_list = self.rpn(features, image_shape_hw, inputs)

        if not self.training:
            self.roi_heads(features, proposals, image_shape_hw, None)
            self._check_outputs_exist()
            return None

        gt_masks = None
        if self.params.mode_mask:
            gt_masks = tf.identity(unpackbits_masks(inputs[names.GT_MASKS_PACKED], image_shape_hw), name='gt_masks')
        targets = GroundTruth(inputs[names.GT_BOXES], inputs[names.GT_LABELS], gt_masks)
        gt_areas = area(targets.boxes)
        add_moving_summary(tf.where(tf.size(gt_areas) > 0, tf.reduce_mean(gt_areas), 0., name='mean_gt_box_area'))

        head_loss_list = self.roi_heads(features, proposals, image_shape_hw, targets)
        wd_cost = regularize_cost('.*/W', l2_regularizer(self.params.train.weight_decay), name='wd_cost')
        total_cost = tf.add_n(rpn_loss_list + head_loss_list + [wd_cost], 'total_cost')
        add_moving_summary(total_cost, wd_cost)
        return total_cost

    def _build_batched_training_graph(self, inputs):
        """The training graph of batch_size images (NOTES.md, "Several images per tower")."""
        batch_size, frcnn = self.batch_size, self.params.frcnn
        image = tf.ensure_shape(inputs[names.IMAGE], [batch_size, None, None, 3])   # see build_graph
        valid_hw = inputs[names.IMAGE_VALID_HW]
        batch_hw = tf.shape(image)[1:3]
        image = image_preprocess(image, self.params.pixel_mean, self.params.pixel_std, self.data_format)
        # Zero outside each image after normalizing, as the one-image graph pads its normalized image.
        image = image * valid_pixel_mask(valid_hw, batch_hw, self.data_format)
        features = self.backbone(image)
        image_proposals, rpn_loss_list = self.batched_rpn(features, valid_hw, inputs)

        per_image_gt, gt_boxes, gt_labels, gt_offsets = per_image_ground_truth(inputs, batch_size)
        gt_masks = None
        if self.params.mode_mask:
            counts = inputs[names.GT_COUNTS]
            packed = tf.concat([inputs[names.GT_MASKS_PACKED][i, :counts[i]] for i in range(batch_size)], axis=0)
            gt_masks = tf.identity(unpackbits_masks(packed, batch_hw), name='gt_masks')
        targets = GroundTruth(gt_boxes, gt_labels, gt_masks, image_indices([labels for _, labels in per_image_gt]))
        gt_areas = area(gt_boxes)
        add_moving_summary(tf.where(tf.size(gt_areas) > 0, tf.reduce_mean(gt_areas), 0., name='mean_gt_box_area'))

        sampled = []
        for i, (boxes, (image_gt_boxes, image_gt_labels)) in enumerate(zip(image_proposals, per_image_gt)):
            sampled.append(sample_fast_rcnn_targets(
                boxes, image_gt_boxes, image_gt_labels, batch_per_im=frcnn.batch_per_im,
                fg_ratio=frcnn.fg_ratio, fg_thresh=frcnn.fg_thresh))
        proposals = BoxProposals(
            tf.concat([s.boxes for s in sampled], axis=0), tf.concat([s.labels for s in sampled], axis=0),
            tf.concat([s.fg_inds_wrt_gt + gt_offsets[i] for i, s in enumerate(sampled)], axis=0),
            image_indices([s.labels for s in sampled]))
        head_loss_list = self._roi_head_losses(features, proposals, valid_hw, targets)
        wd_cost = regularize_cost('.*/W', l2_regularizer(self.params.train.weight_decay), name='wd_cost')
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

    def _roi_head_losses(self, features, proposals, image_shape_hw, targets):
        """Losses of the box (and mask) heads on sampled `proposals` (BoxProposals with targets).

        With several images, the proposals of all images come concatenated with their image_inds,
        fg_inds_wrt_gt index the concatenated gt of `targets`, and each loss averages over them all;
        image_shape_hw is then int32 [B, 2], the valid size of each image (the cascade clips to it).
        """
        box_head, mask_roi_features = self.box_head(features, proposals, image_shape_hw, targets)
        losses = box_head.losses()
        if self.params.mode_mask:
            mask_logits = run_on_nonempty_batch(
                self.mask_head, mask_roi_features.of_sampled_foreground(proposals))
            target_masks = crop_and_resize(
                tf.expand_dims(tf.cast(targets.masks, tf.float32), 3), proposals.fg_boxes,
                proposals.fg_inds_wrt_gt, self.ROI_SIZES.mask_size, 'NHWC', pad_border=False)
            target_masks = tf.squeeze(target_masks, 3, name='sampled_fg_mask_targets')
            losses.append(maskrcnn_loss(mask_logits, proposals.fg_labels, target_masks))
        return losses

    def roi_heads(self, features, proposals, image_shape_hw, targets):
        """Box (and mask) heads. Training: returns their losses; inference: creates the outputs."""
        frcnn = self.params.frcnn
        if self.training:
            proposals = sample_fast_rcnn_targets(
                proposals.boxes, targets.boxes, targets.labels, batch_per_im=frcnn.batch_per_im,
                fg_ratio=frcnn.fg_ratio, fg_thresh=frcnn.fg_thresh)
            return self._roi_head_losses(features, proposals, image_shape_hw, targets)
        box_head, mask_roi_features = self.box_head(features, proposals, image_shape_hw, targets)

        all_boxes = clip_boxes(box_head.decoded_output_boxes(), image_shape_hw, name=names.FASTRCNN_ALL_BOXES)
        all_scores = box_head.output_scores(name=names.FASTRCNN_ALL_SCORES)
        test = self.params.test
        boxes, scores, labels = fastrcnn_predictions(
            all_boxes, all_scores, score_thresh=test.result_score_thresh,
            nms_thresh=test.frcnn_nms_thresh, results_per_im=test.results_per_im)
        tf.identity(boxes, name=names.OUTPUT_BOXES)
        tf.identity(scores, name=names.OUTPUT_SCORES)
        tf.identity(labels, name=names.OUTPUT_LABELS)
        if self.params.mode_mask:
            # Only the (at most RESULTS_PER_IM) final detections go through the mask head.
            mask_logits = run_on_nonempty_batch(self.mask_head, mask_roi_features.of_detections(boxes))
            tf.sigmoid(select_class_masks(mask_logits, labels), name=names.OUTPUT_MASKS)
        return []


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

    def rpn(self, features, image_shape_hw, inputs):
        featuremap = features[0]
        rpn = self.params.rpn
        label_logits, box_logits = rpn_head('rpn', featuremap, rpn.head_dim, rpn.num_anchors_c4, self.data_format)
        all_anchors = get_all_anchors(rpn.anchor_stride, rpn.anchor_sizes, rpn.anchor_ratios, self.params.max_size)
        if self.training:
            anchors = RPNAnchors(all_anchors, inputs[names.C4_ANCHOR_LABELS], inputs[names.C4_ANCHOR_BOXES])
        else:
            anchors = RPNAnchors(all_anchors, None, None)
        anchors = anchors.narrow_to(featuremap, self.data_format)

        pred_boxes = anchors.decode_logits(box_logits, clip=self.params.decode_clip)  # [fH, fW, A, 4]
        topk = rpn.topk(self.training)
        proposal_boxes, _ = generate_rpn_proposals(
            tf.reshape(pred_boxes, [-1, 4]), tf.reshape(label_logits, [-1]), image_shape_hw,
            topk.pre_nms_topk, topk.post_nms_topk, rpn.proposal_nms_thresh, rpn.min_size)
        losses = []
        if self.training:
            losses = rpn_losses(anchors.gt_labels, anchors.encoded_gt_boxes(), label_logits, box_logits,
                                rpn.batch_per_im)
        return BoxProposals(proposal_boxes), losses

    def batched_rpn(self, features, valid_hw, inputs):
        """The RPN of a batch: (a list of the proposal boxes of each image, [label_loss, box_loss])."""
        featuremap = features[0]
        rpn = self.params.rpn
        label_logits, box_logits = rpn_head('rpn', featuremap, rpn.head_dim, rpn.num_anchors_c4, self.data_format,
                                            keep_batch=True)
        map_hw = tf.shape(label_logits)[1:3]
        anchors = batched_anchors(
            get_all_anchors(rpn.anchor_stride, rpn.anchor_sizes, rpn.anchor_ratios, self.params.max_size),
            inputs[names.C4_ANCHOR_LABELS], inputs[names.C4_ANCHOR_BOXES], map_hw)
        pred_boxes = anchors.decode_logits(box_logits, clip=self.params.decode_clip)  # [B, fH, fW, A, 4]
        topk = rpn.topk(True)
        proposals = []
        for i in range(self.batch_size):
            cells = tf.minimum(own_feature_cells(valid_hw[i], rpn.anchor_stride, 1), map_hw)
            boxes, _ = generate_rpn_proposals(
                tf.reshape(pred_boxes[i, :cells[0], :cells[1]], [-1, 4]),
                tf.reshape(label_logits[i, :cells[0], :cells[1]], [-1]), valid_hw[i],
                topk.pre_nms_topk, topk.post_nms_topk, rpn.proposal_nms_thresh, rpn.min_size)
            proposals.append(boxes)
        losses = rpn_losses(anchors.gt_labels, anchors.encoded_gt_boxes(), label_logits, box_logits,
                            self.batch_size * rpn.batch_per_im)
        return proposals, losses

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

    def rpn(self, features, image_shape_hw, inputs):
        rpn, fpn = self.params.rpn, self.params.fpn
        all_anchors = get_all_anchors_fpn(fpn.anchor_strides, rpn.anchor_sizes, rpn.anchor_ratios,
                                          self.params.max_size)
        multilevel_anchors = []
        for level, level_anchors, featuremap in zip(self._levels(), all_anchors, features):
            if self.training:
                anchors = RPNAnchors(level_anchors, inputs[names.fpn_anchor_labels(level)],
                                     inputs[names.fpn_anchor_boxes(level)])
            else:
                anchors = RPNAnchors(level_anchors, None, None)
            multilevel_anchors.append(anchors.narrow_to(featuremap, self.data_format,
                                                        name_scope='FPN_slice_lvl{}'.format(level)))

        # One rpn head, its variables shared by all levels.
        rpn_outputs = [rpn_head('rpn', p, fpn.num_channel, rpn.num_anchors_fpn, self.data_format)
                       for p in features]
        label_logits = [out[0] for out in rpn_outputs]
        box_logits = [out[1] for out in rpn_outputs]
        pred_boxes = [anchors.decode_logits(logits, clip=self.params.decode_clip)
                      for anchors, logits in zip(multilevel_anchors, box_logits)]
        topk = rpn.topk(self.training)
        proposal_boxes, _ = generate_fpn_proposals(
            pred_boxes, label_logits, image_shape_hw, proposal_mode=fpn.proposal_mode,
            pre_nms_topk=topk.pre_nms_topk, post_nms_topk=topk.post_nms_topk, per_level_topk=topk.per_level_topk,
            nms_thresh=rpn.proposal_nms_thresh, min_size=rpn.min_size)
        losses = []
        if self.training:
            losses = multilevel_rpn_losses(multilevel_anchors, label_logits, box_logits, rpn.batch_per_im)
        return BoxProposals(proposal_boxes), losses

    def batched_rpn(self, features, valid_hw, inputs):
        """The RPN of a batch: (a list of the proposal boxes of each image, [label_loss, box_loss])."""
        rpn, fpn = self.params.rpn, self.params.fpn
        grids = get_all_anchors_fpn(fpn.anchor_strides, rpn.anchor_sizes, rpn.anchor_ratios, self.params.max_size)
        multilevel_anchors, label_logits, box_logits, pred_boxes, map_sizes = [], [], [], [], []
        for level, grid, featuremap in zip(self._levels(), grids, features):
            level_labels, level_boxes = rpn_head('rpn', featuremap, fpn.num_channel, rpn.num_anchors_fpn,
                                                 self.data_format, keep_batch=True)
            map_hw = tf.shape(level_labels)[1:3]
            with tf.name_scope('FPN_slice_lvl{}'.format(level)):
                anchors = batched_anchors(grid, inputs[names.fpn_anchor_labels(level)],
                                          inputs[names.fpn_anchor_boxes(level)], map_hw)
            multilevel_anchors.append(anchors)
            label_logits.append(level_labels)
            box_logits.append(level_boxes)
            pred_boxes.append(anchors.decode_logits(level_boxes, clip=self.params.decode_clip))
            map_sizes.append(map_hw)
        topk = rpn.topk(True)
        proposals = []
        for i in range(self.batch_size):
            # Only the cells the image has when alone: the padding of the batch adds no candidates.
            cells = [tf.minimum(own_feature_cells(valid_hw[i], stride, fpn.resolution_requirement), map_hw)
                     for stride, map_hw in zip(fpn.anchor_strides, map_sizes)]
            boxes, _ = generate_fpn_proposals(
                [pred[i, :c[0], :c[1]] for pred, c in zip(pred_boxes, cells)],
                [logits[i, :c[0], :c[1]] for logits, c in zip(label_logits, cells)], valid_hw[i],
                proposal_mode=fpn.proposal_mode, pre_nms_topk=topk.pre_nms_topk, post_nms_topk=topk.post_nms_topk,
                per_level_topk=topk.per_level_topk, nms_thresh=rpn.proposal_nms_thresh, min_size=rpn.min_size)
            proposals.append(boxes)
        losses = multilevel_rpn_losses(multilevel_anchors, label_logits, box_logits,
                                       self.batch_size * rpn.batch_per_im)
        return proposals, losses

    def box_head(self, features, proposals, image_shape_hw, targets):
        params, fpn, data_format = self.params, self.params.fpn, self.data_format
        p2345 = features[:4]
        head_func = get_box_head(fpn.box_head)

        def box_head_func(scope, roi_features):
            def head(features):
                return head_func(scope, features, conv_dim=fpn.conv_head_dim, fc_dim=fpn.fc_head_dim,
                                 data_format=data_format)
            return run_on_nonempty_batch(head, roi_features)

        def roi_func(boxes, box_indices=None):
            return multilevel_roi_align(p2345, boxes, self.ROI_SIZES.box_roi_resolution, data_format,
                                        box_indices=box_indices)

        gt_boxes = targets.boxes if targets else None
        if fpn.cascade:
            head = CascadeRCNNHead(
                proposals, roi_func, box_head_func, gt_boxes, targets.labels if targets else None,
                image_shape_hw, params.num_category, ious=params.cascade.ious,
                bbox_reg_weights=params.cascade.bbox_reg_weights, decode_clip=params.decode_clip,
                training=self.training, gt_image_inds=targets.image_inds if targets else None)
        else:
            head_feature = box_head_func('fastrcnn', roi_func(proposals.boxes, proposals.image_inds))
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
