"""Stand-ins for a predictor and a DataFlow, shared by the inference tests."""
import numpy as np


class FakeModel:
    """Stands in for the predictor: known detections in resized-image pixels."""

    def __init__(self, with_masks):
        self.with_masks = with_masks
        self.seen_shapes = []

    def __call__(self, resized_img):
        self.seen_shapes.append(resized_img.shape)
        boxes = np.array([[20, 10, 100, 60], [-10, 100, 170, 130]], np.float32)
        outputs = [boxes, np.array([0.9, 0.61234567], np.float32), np.array([2, 1], np.int32)]
        if self.with_masks:
            outputs.append(np.ones((2, 4, 4), np.float32))
        return outputs


# The fast paste of an all-ones mask is exactly the box's pixels (the accurate one rounds corners).
SETTINGS = dict(short_edge_size=120, max_size=1000, accurate_paste=False)


class ListDataFlow:
    """The part of the DataFlow protocol predict_dataflow uses."""

    def __init__(self, items):
        self.items = items

    def reset_state(self):
        pass

    def __len__(self):
        return len(self.items)

    def __iter__(self):
        return iter(self.items)
