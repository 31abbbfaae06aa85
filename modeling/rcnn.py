"""The model assembly shared by C4 and FPN: a tensorpack ModelDesc for Faster/Mask/Cascade R-CNN.

The models take a `ModelParams` record (modeling/params.py) in their constructor and pass plain
values from it down to the pure functions of the other modules. rcnn_c4.py and rcnn_fpn.py hold
the two meta-architectures; generalized_rcnn.py picks one (`build_model(cfg)`).

One path: training runs on a batch of B = TRAIN.BATCH_SIZE_PER_GPU images, B = 1 being the batch
of one (modeling/batching.py); inference runs on one image, the batch of one.

Shape shorthand: B images; H, W resized image size; M gt boxes; N proposals; R final detections;
K categories; A anchors per cell. Boxes are float32 x1y1x2y2 in pixels of the resized image.
Inputs and outputs are named by utils/tensor_names.py.
"""
from collections import namedtuple

from utils.tf_compat import amp_compute_dtype, tf  # noqa: I001  (must come before tensorpack)

from tensorpack import ModelDesc
from tensorpack.models import l2_regularizer, regularize_cost
from tensorpack.tfutils.summary import add_moving_summary

from utils import tensor_names as names
from utils.lr_schedule import REFERENCE_TOTAL_BATCH
from utils.optimizers import AccumGradOptimizer, with_dynamic_loss_scaling

from .backbone import image_preprocess
from .batching import (batch_of_one, batched_input_specs, image_indices, per_image_ground_truth,
                       run_on_nonempty_batch, valid_pixel_mask)
from .model_box import area, clip_boxes, crop_and_resize
from .model_frcnn import BoxProposals, fastrcnn_predictions, sample_fast_rcnn_targets
from .model_mrcnn import maskrcnn_loss, select_class_masks, unpackbits_masks
from .params import ModelParams

GroundTruth = namedtuple('GroundTruth', ['boxes', 'labels', 'masks', 'image_inds'])
GroundTruth.__doc__ = """Training targets of a batch: the gt of all images concatenated, boxes
float32 [M, 4], labels int64 [M], masks uint8 [M, H, W] or None (no mask head), and image_inds
int32 [M], the image of each."""

MaskRoiFeatures = namedtuple('MaskRoiFeatures', ['of_sampled_foreground', 'of_detections'])
MaskRoiFeatures.__doc__ = """How a box head hands ROI features to the mask head, per mode.

of_sampled_foreground(proposals): training, the foreground rois of the sampled BoxProposals;
of_detections(boxes float32 [R, 4]): inference, the final detections. Both return the mask
head's input, float32 [F or R, S, S, C] (or NCHW)."""


class GeneralizedRCNN(ModelDesc):
    """What C4 and FPN share: inputs, losses, inference outputs, optimizer.

    Subclasses provide `backbone`, `rpn`, `box_head`, `mask_head`, `_anchor_inputs` and `ROI_SIZES`.
    rpn(features, valid_hw, inputs) runs on a batch: features of B images, valid_hw int32 [B, 2],
    inputs the batched inputs by name (None at inference); it returns (a list of the proposal
    boxes float32 [N_i, 4] of each image, the RPN losses or [] at inference).

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
        """Training images per tower (TRAIN.BATCH_SIZE_PER_GPU); with 1 the inputs have no batch axis."""
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
        if not self.training:
            return self._build_inference_graph(inputs[names.IMAGE])
        if self.batch_size == 1:
            inputs = batch_of_one(inputs)
        return self._build_training_graph(inputs)

    def _build_inference_graph(self, image):
        # One image. Not set_shape: with several images per tower the input may be the very
        # placeholder that tensorpack's QueueInput feeds batches through (EvalCallback's predictor
        # reuses it by name).
        image = tf.ensure_shape(image, [None, None, 3])
        image_shape_hw = tf.shape(image)[:2]
        features = self.backbone(image_preprocess(image, self.params.pixel_mean, self.params.pixel_std,
                                                  self.data_format))
        proposal_boxes, _ = self.rpn(features, tf.expand_dims(image_shape_hw, 0), None)
        self._inference_outputs(features, BoxProposals(proposal_boxes[0]), image_shape_hw)
        self._check_outputs_exist()

    def _build_training_graph(self, inputs):
        """The training graph of a batch (NOTES.md, "Several images per tower"); returns the total cost."""
        batch_size, frcnn = self.batch_size, self.params.frcnn
        image = tf.ensure_shape(inputs[names.IMAGE], [batch_size, None, None, 3])   # see _build_inference_graph
        valid_hw = inputs[names.IMAGE_VALID_HW]
        batch_hw = tf.shape(image)[1:3]
        image = image_preprocess(image, self.params.pixel_mean, self.params.pixel_std, self.data_format)
        # Zero outside each image after normalizing, as the backbone pads a lone normalized image.
        image = image * valid_pixel_mask(valid_hw, batch_hw, self.data_format)
        features = self.backbone(image)
        image_proposals, rpn_loss_list = self.rpn(features, valid_hw, inputs)

        gt = per_image_ground_truth(inputs, batch_size)
        gt_masks = None
        if self.params.mode_mask:
            counts = inputs[names.GT_COUNTS]
            packed = tf.concat([inputs[names.GT_MASKS_PACKED][i, :counts[i]] for i in range(batch_size)], axis=0)
            gt_masks = tf.identity(unpackbits_masks(packed, batch_hw), name='gt_masks')
        targets = GroundTruth(gt.boxes, gt.labels, gt_masks, image_indices([labels for _, labels in gt.per_image]))
        gt_areas = area(gt.boxes)
        add_moving_summary(tf.where(tf.size(gt_areas) > 0, tf.reduce_mean(gt_areas), 0., name='mean_gt_box_area'))

        sampled = [sample_fast_rcnn_targets(boxes, image_gt_boxes, image_gt_labels, batch_per_im=frcnn.batch_per_im,
                                            fg_ratio=frcnn.fg_ratio, fg_thresh=frcnn.fg_thresh)
                   for boxes, (image_gt_boxes, image_gt_labels) in zip(image_proposals, gt.per_image)]
        proposals = BoxProposals(
            tf.concat([s.boxes for s in sampled], axis=0), tf.concat([s.labels for s in sampled], axis=0),
            tf.concat([s.fg_inds_wrt_gt + gt.offsets[i] for i, s in enumerate(sampled)], axis=0),
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

    def _roi_head_losses(self, features, proposals, valid_hw, targets):
        """Losses of the box (and mask) heads on sampled `proposals` (BoxProposals with targets).

        The proposals of all images come concatenated with their image_inds, fg_inds_wrt_gt index
        the concatenated gt of `targets`, and each loss averages over them all; valid_hw is
        int32 [B, 2], the size of each image (the cascade clips to it).
        """
        box_head, mask_roi_features = self.box_head(features, proposals, valid_hw, targets)
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

    def _inference_outputs(self, features, proposals, image_shape_hw):
        """Box (and mask) heads of one image (image_shape_hw int32 [2]): creates the named outputs."""
        box_head, mask_roi_features = self.box_head(features, proposals, image_shape_hw, None)
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
