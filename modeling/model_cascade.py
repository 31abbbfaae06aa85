"""Cascade R-CNN: a chain of class-agnostic box heads, each refining the previous stage's boxes.

Shape shorthand:
    N  rois entering the first stage (later stages may see fewer in training, see below),
    M  ground-truth boxes, K categories, C = K + 1 classes including background,
    B  images of a batched training graph (TRAIN.BATCH_SIZE_PER_GPU; 1 without image indices).
Boxes are float32 x1y1x2y2 in pixels of the resized image.
"""
from utils.tf_compat import tf

from .model_box import area, clip_boxes, pairwise_iou
from .model_frcnn import BoxProposals, FastRCNNHead, fastrcnn_outputs, match_boxes_to_best_gt


def _scaled_gradient(scale):
    """Identity whose gradient is multiplied by `scale`."""
    @tf.custom_gradient
    def identity(x):
        return tf.identity(x), lambda dy: dy * scale
    return identity


def match_boxes_with_gt(boxes, gt_boxes, gt_labels, iou_threshold, box_image_inds=None, gt_image_inds=None):
    """Label each box with the class of its best gt when that IoU >= iou_threshold (no sampling).

    boxes: float32 [R, 4]; gt_boxes: float32 [M, 4] (M may be 0); gt_labels: int64 [M], 1..K.
    Several images: box_image_inds int32 [R] and gt_image_inds int32 [M] give the image of each box
    and gt (the gt of all images concatenated); a box is matched only against its own image's gt.
    Returns BoxProposals(boxes, labels int64 [R] (0 = background), fg_inds_wrt_gt int64 [F]:
    the matched gt of each foreground box, in box order, image_inds: box_image_inds), targets
    without gradient.
    """
    iou = pairwise_iou(boxes, gt_boxes)  # [R, M]
    if box_image_inds is not None:
        if not iou_threshold > -1:
            raise ValueError('A re-matching IoU threshold must be > -1, got {}'.format(iou_threshold))
        # Pairs of different images get IoU -1: below any real IoU and any threshold, so the best
        # gt of a box is the one of its own image alone (ties too: its gt keep their order), and a
        # box whose image has no gt is background, as in match_boxes_to_best_gt with M == 0.
        same_image = tf.equal(box_image_inds[:, None], gt_image_inds[None, :])
        iou = tf.where(same_image, iou, -tf.ones_like(iou))
    best_gt, fg_mask = match_boxes_to_best_gt(iou, iou_threshold)
    # best_gt is 0 for every box when M == 0; a trailing background label keeps that gather valid.
    padded_gt_labels = tf.concat([gt_labels, tf.zeros([1], tf.int64)], axis=0)
    labels = tf.gather(padded_gt_labels, best_gt) * tf.cast(fg_mask, tf.int64)
    fg_inds_wrt_gt = tf.boolean_mask(best_gt, fg_mask)
    return BoxProposals(boxes, tf.stop_gradient(labels), tf.stop_gradient(fg_inds_wrt_gt), box_image_inds)


class CascadeRCNNHead:
    """Runs the stages `cascade_rcnn_stage{1,2,...}` (variables head/..., outputs/{class,box}).

    Args:
        proposals: BoxProposals for stage 1 (sampled, with labels, in training).
        roi_func: boxes float32 [R, 4] -> pooled ROI features of those boxes.
        box_head_func: (scope, roi_features) -> float32 [R, D], the FPN box head.
        gt_boxes: float32 [M, 4]; gt_labels: int64 [M] (training only; may be None at inference).
        image_shape_hw: int32 [2], to clip the refined boxes.
        num_categories: K.
        ious: foreground IoU of each stage (stage 1's rois were sampled with ious[0] already).
        bbox_reg_weights: one 4-float box-target weight per stage.
        decode_clip: cap on the decoded log-scale deltas, as in decode_bbox_target.
        training: build the training (losses, re-matching) or the inference graph.
        gt_image_inds: int32 [M], the image of each gt box; only with several images.

    Several images (training): proposals.image_inds gives the image of each roi, image_shape_hw is
    int32 [B, 2], the valid size of each image, and gt_boxes / gt_labels / gt_image_inds are the
    concatenated gt of all images. Each stage pools every box from its own image, clips it to that
    image's size and re-matches it to that image's gt; its losses average over all its rois.
    """

    def __init__(self, proposals, roi_func, box_head_func, gt_boxes, gt_labels, image_shape_hw,
                 num_categories, *, ious, bbox_reg_weights, decode_clip, training, gt_image_inds=None):
        if len(ious) != len(bbox_reg_weights):
            raise ValueError('Cascade needs one IoU and one bbox weight per stage, got {} and {}'
                             .format(len(ious), len(bbox_reg_weights)))
        assert not training or (proposals.image_inds is None) == (gt_image_inds is None), \
            'several images need both the image of each roi and of each gt'
        self.roi_func = roi_func
        self.box_head_func = box_head_func
        self.gt_boxes = gt_boxes
        self.gt_labels = gt_labels
        self.gt_image_inds = gt_image_inds
        self.image_shape_hw = image_shape_hw
        self.num_categories = num_categories
        self.bbox_reg_weights = bbox_reg_weights
        self.decode_clip = decode_clip
        self.training = training
        self.num_stages = len(ious)
        # The stages share the backbone features; each passes back 1/num_stages of its gradient
        # so the backbone sees the average of the stages (as in the paper's implementation).
        self._scale_gradient = _scaled_gradient(1.0 / self.num_stages) if training else tf.identity

        self._heads = []
        self._stage_boxes = []
        stage_proposals, image_inds = proposals, proposals.image_inds
        for stage in range(self.num_stages):
            with tf.variable_scope('cascade_rcnn_stage{}'.format(stage + 1)):
                if stage > 0:
                    stage_proposals = self._match_boxes_with_gt(self._stage_boxes[-1], image_inds, ious[stage])
                head, refined_boxes, image_inds = self._run_stage(stage_proposals, stage)
            self._heads.append(head)
            self._stage_boxes.append(refined_boxes)

    def _run_stage(self, proposals, stage):
        """-> (FastRCNNHead, refined boxes float32 [R', 4] without gradient, their image_inds int32
        [R'] or None with one image)."""
        image_inds = proposals.image_inds
        if image_inds is None:
            roi_features = self._scale_gradient(self.roi_func(proposals.boxes))
        else:
            roi_features = self._scale_gradient(self.roi_func(proposals.boxes, image_inds))
        head_feature = self.box_head_func('head', roi_features)
        label_logits, box_logits = fastrcnn_outputs(
            'outputs', head_feature, self.num_categories, class_agnostic_regression=True)
        head = FastRCNNHead(proposals, box_logits, label_logits, self.gt_boxes,
                            self.bbox_reg_weights[stage], self.decode_clip)
        # One image: its size; several: the valid size of each box's image.
        windows_hw = self.image_shape_hw if image_inds is None else tf.gather(self.image_shape_hw, image_inds)
        refined_boxes = clip_boxes(head.decoded_output_boxes_class_agnostic(), windows_hw)
        if self.training:
            # Degenerate boxes carry no signal for the next stage's targets.
            keep = area(refined_boxes) > 0
            refined_boxes = tf.boolean_mask(refined_boxes, keep)
            if image_inds is not None:
                image_inds = tf.identity(tf.boolean_mask(image_inds, keep), name='output_image_inds')
        return head, tf.stop_gradient(refined_boxes, name='output_boxes'), image_inds

    def _match_boxes_with_gt(self, boxes, image_inds, iou_threshold):
        """Training: the stage's boxes labelled by match_boxes_with_gt; inference: just the boxes."""
        if not self.training:
            return BoxProposals(boxes)
        with tf.name_scope('match_box_with_gt_{}'.format(iou_threshold)):
            return match_boxes_with_gt(boxes, self.gt_boxes, self.gt_labels, iou_threshold,
                                       box_image_inds=image_inds, gt_image_inds=self.gt_image_inds)

    def losses(self):
        """[label_loss, box_loss] of every stage, stage 1 first."""
        losses = []
        for stage, head in enumerate(self._heads):
            with tf.name_scope('cascade_loss_stage{}'.format(stage + 1)):
                losses.extend(head.losses())
        return losses

    def decoded_output_boxes(self):
        """float32 [N, K + 1, 4]: the last stage's boxes, the same for every class."""
        boxes = tf.expand_dims(self._stage_boxes[-1], 1)
        return tf.tile(boxes, [1, self.num_categories + 1, 1])

    def output_scores(self, name=None):
        """float32 [N, K + 1]: the stages' softmax scores, averaged."""
        scores = [head.output_scores('cascade_scores_stage{}'.format(stage + 1))
                  for stage, head in enumerate(self._heads)]
        return tf.multiply(tf.add_n(scores), 1.0 / self.num_stages, name=name)
