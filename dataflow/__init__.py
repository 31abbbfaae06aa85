"""The pieces of the training and evaluation dataflows; `data.py` and `common.py` are their faces.

    image_io        read an image file, with clear errors for missing, corrupt, truncated or mis-sized ones
    resize          the short-edge resize of training and inference
    geometry        boxes as corner points, polygons to masks, boxes inside the image
    anchor_targets  RPN anchor labels and matched gt boxes (numpy)
    mapper          TrainingMapper: roidb -> training datapoint, picklable for spawned workers
    build           the frozen settings record, read from the config in one place, and the builders

Nothing here reads the global config; `build.TrainDataSettings.from_config(cfg)` is the one step
that turns a config into the values the builders take.
"""
