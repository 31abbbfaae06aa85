"""The training and evaluation dataflows.

A training datapoint is a dict keyed by the names in utils/tensor_names.py:

    image            float32 [H, W, 3] BGR, resized (and maybe flipped), integer values (uint8 in transit)
    anchor_labels    int32 [fH, fW, A]     (C4; FPN: anchor_labels_lvl2..6 [fH_l, fW_l, A_l])
    anchor_boxes     float32 [fH, fW, A, 4] (C4; FPN: anchor_boxes_lvl2..6), the gt box of each fg anchor
    gt_boxes         float32 [N, 4] x1y1x2y2, pixels of the resized image, crowd boxes removed
    gt_labels        int64 [N], classes 1..K
    gt_masks_packed  uint8 [N, H, ceil(W / 8)] (MODE_MASK only), np.packbits of the masks along W

Anchor grids cover exactly the image's own feature map (fH x fW cells: FPN ceil(Hp / stride) with
Hp = H padded to FPN.RESOLUTION_REQUIREMENT, C4 floor(H / 16)); the model's crop to its feature
map is then a no-op. Anchor labels: 1 foreground, 0 background, -1 ignored.

Workers: with DATA.NUM_WORKERS > 0 the per-image work runs in processes started with the
*spawn* method, whatever the platform default is. Fork would copy the parent's TensorFlow
runtime and, under Horovod, its MPI state, which is unsafe; spawn starts clean interpreters.
Such a worker does not see the parent's config overrides or dataset registry, so the map
function (`TrainingMapper`) is a picklable object that carries every value it uses, and the
roidbs are sent to it by the parent. Spawn re-imports the parent's main script in each worker,
so entry scripts must keep their work under `if __name__ == '__main__':`. Horovod ranks use the
same spawned workers (tensorpack used threads there only because MPI breaks under fork).

This module is the face of the dataflow/ package (which see for the pieces). Its
`get_train_dataflow` reads the global config when no settings are passed; nothing below it does.
"""
from dataflow.anchor_targets import (AnchorLabelParams, MalformedData, anchor_input_entries, get_anchor_labels,
                                     get_multilevel_rpn_anchor_input, match_to_best_gt)
from dataflow.build import TrainDataSettings, class_histogram_table, get_eval_dataflow, training_mapper
from dataflow.build import get_train_dataflow as _build_train_dataflow
from dataflow.image_io import recorded_size
from dataflow.mapper import MapperParams, TrainingMapper

__all__ = ['MalformedData', 'AnchorLabelParams', 'match_to_best_gt', 'get_anchor_labels',
           'get_multilevel_rpn_anchor_input', 'anchor_input_entries', 'MapperParams', 'TrainingMapper',
           'TrainDataSettings', 'training_mapper', 'class_histogram_table', 'get_train_dataflow',
           'get_eval_dataflow', 'recorded_size']


def get_train_dataflow(rank=0, settings=None):
    """The training DataFlow (see dataflow.build.get_train_dataflow) of `settings`, by default
    `TrainDataSettings.from_config` of the global config (after finalize_configs)."""
    if settings is None:
        from config import config as cfg
        settings = TrainDataSettings.from_config(cfg)
    return _build_train_dataflow(settings, rank=rank)
