"""The tensor-name contract shared by the dataflow, the model and the predictors.

The dataflow yields dicts keyed by these names, the model declares its inputs
with them, and predictors / exported graphs are looked up by them. They match
tensorpack's FasterRCNN example so its checkpoints and tooling keep working.
"""

# Inputs ---------------------------------------------------------------------
IMAGE = 'image'                    # float32 [H, W, 3], BGR, already resized
GT_BOXES = 'gt_boxes'              # float32 [N, 4], x1y1x2y2, resized-image pixels
GT_LABELS = 'gt_labels'            # int64 [N], classes 1..K
GT_MASKS_PACKED = 'gt_masks_packed'  # uint8 [N, H, ceil(W / 8)], np.packbits along W

# C4 has one anchor level; FPN has levels 2..6 (strides 4..64).
C4_ANCHOR_LABELS = 'anchor_labels'  # int32 [H', W', A]: 1 fg, 0 bg, -1 ignore
C4_ANCHOR_BOXES = 'anchor_boxes'    # float32 [H', W', A, 4]: matched gt box per anchor
FPN_LEVELS = (2, 3, 4, 5, 6)


def fpn_anchor_labels(level):
    """Name of the anchor-label input of FPN level `level` (2..6)."""
    return 'anchor_labels_lvl{}'.format(level)


def fpn_anchor_boxes(level):
    """Name of the matched-gt-box input of FPN level `level` (2..6)."""
    return 'anchor_boxes_lvl{}'.format(level)


# Outputs of the inference graph ----------------------------------------------
OUTPUT_BOXES = 'output/boxes'      # float32 [R, 4], x1y1x2y2, resized-image pixels
OUTPUT_SCORES = 'output/scores'    # float32 [R]
OUTPUT_LABELS = 'output/labels'    # int32 [R], classes 1..K
OUTPUT_MASKS = 'output/masks'      # float32 [R, M, M], probabilities (M=28 FPN, 14 C4)

OUTPUT_NAMES = (OUTPUT_BOXES, OUTPUT_SCORES, OUTPUT_LABELS)
OUTPUT_NAMES_WITH_MASKS = OUTPUT_NAMES + (OUTPUT_MASKS,)

# Intermediate tensors of the inference graph, for predict.py --visualize ------------------
FASTRCNN_ALL_SCORES = 'fastrcnn_all_scores'   # float32 [P, K + 1], one row per proposal


def proposal_tensor_names(fpn):
    """(boxes, probabilities) of the RPN proposals: float32 [P, 4] and [P]."""
    scope = FPN_PROPOSALS_SCOPE if fpn else RPN_PROPOSALS_SCOPE
    return scope + '/boxes', scope + '/probs'


# Model-side names --------------------------------------------------------------------------------
# Name scopes of the RPN proposals: C4 (and each FPN level inside the FPN scope) and FPN.
RPN_PROPOSALS_SCOPE = 'generate_rpn_proposals'
FPN_PROPOSALS_SCOPE = 'generate_fpn_proposals'
FASTRCNN_ALL_BOXES = 'fastrcnn_all_boxes'     # float32 [P, K + 1, 4], clipped, one row per proposal

# Suffixes draw_visualization_grid (viz.py) looks for among the fetched tensors -------------------
PROPOSAL_BOXES_SUFFIX = 'proposals/boxes'                        # generate_{rpn,fpn}_proposals/boxes
PROPOSAL_SCORES_SUFFIXES = ('proposals/probs', 'proposals/scores')


# Several images per tower (TRAIN.BATCH_SIZE_PER_GPU = N > 1) ----------------------------------------
# A batched training datapoint has the inputs above with a leading axis of N, padded to the batch:
# image [N, Hp, Wp, 3] (0 outside each image), anchor labels [N, fH, fW, A] (padded -1),
# anchor boxes [N, fH, fW, A, 4] (padded 0), gt_boxes [N, Mmax, 4], gt_labels [N, Mmax] (padded 0),
# gt_masks_packed [N, Mmax, Hp, ceil(Wp / 8)]; and these two:
IMAGE_VALID_HW = 'image_valid_hw'   # int32 [N, 2], each image's own resized (h, w)
GT_COUNTS = 'gt_counts'             # int32 [N], how many of the Mmax gt rows of each image are real
