"""The dataset interface (`DatasetSplit`) and the name -> split registry.

Everything downstream (data.py, eval.py, the entry scripts) sees a dataset only through
these two classes: it asks the registry for a split by the name given in
`cfg.DATA.TRAIN` / `cfg.DATA.VAL` and reads roidbs from it.

Shape shorthand: N instances in one image, P points in one polygon, K foreground classes.
"""
import re

from utils import logs as logger

__all__ = ['DatasetSplit', 'DatasetRegistry', 'file_label']


class DatasetSplit:
    """One split of a dataset (e.g. "coco_val2017"): loads roidbs and evaluates results.

    A roidb is a list with one dict per image:

      file_name:    str, absolute path of the image file
      image_id:     the dataset's own id of the image (int for COCO); results are written
                    back with it
      height, width: int, size of the original image in pixels
      boxes:        float32 [N, 4], x1y1x2y2 in absolute pixels of the original image;
                    continuous coordinates, pixel i covers [i, i+1), so width = x2 - x1
      class:        int32 [N], in 1..K (0 is the background and never appears)
      is_crowd:     int8 [N], 1 for crowd regions (ignored by the losses)
      segmentation: only if the dataset has masks; a list of N items, one per instance,
                    each a list of polygons float32 [P, 2] (x, y in absolute pixels, P >= 3).
                    A crowd instance may have `None` instead (its mask is RLE-only).

    Images without any instance are kept (N = 0); data.py filters them when
    `DATA.FILTER_EMPTY_ANNOTATIONS` is set. To use a dataset in another format, subclass this.
    """

    def training_roidbs(self):
        """list[dict]: roidbs with all the keys above, for training."""
        raise NotImplementedError()

    def inference_roidbs(self):
        """list[dict]: roidbs with at least `file_name` and `image_id` (`height`/`width`
        optional), the images to run inference on."""
        raise NotImplementedError()

    def eval_inference_results(self, results, output=None):
        """Score detections against this split's ground truth.

        Args:
            results: list of dicts, one per detected instance:
                image_id: the id from `inference_roidbs`;
                category_id: int, the class in 1..K;
                bbox: [x, y, w, h], floats, pixels of the original image;
                score: float;
                segmentation (optional): the mask in COCO RLE, a dict {size, counts (str)}.
            output: optional path of a json file to save the results to
                (in the dataset's own category ids).

        Returns:
            dict: metric name -> float.
        """
        raise NotImplementedError()


class _LazyValue:
    """A zero-argument callable evaluated on first use; the value is then cached."""

    def __init__(self, func):
        self.func = func
        self.evaluated = False
        self.value = None

    def get(self):
        if not self.evaluated:
            self.value = self.func()
            self.evaluated = True
            self.func = None   # release whatever the closure holds
        return self.value


def _names_list(names):
    return ', '.join(sorted(names)) or '(none)'


class DatasetRegistry:
    """Process-wide map: split name -> factory of a `DatasetSplit`, plus per-split metadata.

    Registering a name that exists already replaces it (with a log line): entry scripts call
    `register_*` at start-up, and doing that twice must be harmless.

    Besides fixed names, a family may claim every name that starts with a prefix
    (`register_prefix`), e.g. 'coco_' for any split in COCO's layout: such a name is registered
    the first time it is asked for.
    """

    _registry = {}
    _metadata = {}   # name -> {key: _LazyValue}
    _prefixes = {}   # prefix -> (resolve, description)

    @staticmethod
    def register(name, func):
        """Register `func`, a zero-argument callable returning a `DatasetSplit`, as `name`.

        `func` is only called by `get`, so registration never touches the disk.
        """
        if not callable(func):
            raise TypeError("DatasetRegistry.register('{}', func): func must be a callable "
                            "returning a DatasetSplit, got {!r}".format(name, func))
        if name in DatasetRegistry._registry:
            logger.info("Dataset '{}' was registered already; replacing it.".format(name))
        DatasetRegistry._registry[name] = func

    @staticmethod
    def register_prefix(prefix, resolve, description):
        """Let `resolve(name)` register any not yet registered name that starts with `prefix`.

        `resolve` is called by `get` / `get_metadata` with the full name and must register it
        (with `register` and its metadata) or raise ValueError saying what is wrong with the
        name. `description` shows the form in error messages, e.g. 'coco_<split>'. The longest
        matching prefix wins.
        """
        if not callable(resolve):
            raise TypeError("register_prefix('{}', resolve): resolve must be a callable".format(prefix))
        DatasetRegistry._prefixes[prefix] = (resolve, description)

    @staticmethod
    def _resolve(name):
        """Register `name` through its prefix if it is not registered yet and a prefix claims it."""
        if name in DatasetRegistry._registry or not isinstance(name, str):
            return
        claims = [prefix for prefix in DatasetRegistry._prefixes if name.startswith(prefix) and name != prefix]
        if claims:
            DatasetRegistry._prefixes[max(claims, key=len)][0](name)

    @staticmethod
    def _forms():
        forms = sorted(description for _, description in DatasetRegistry._prefixes.values())
        return ' Names of the forms {} are resolved too.'.format(', '.join(forms)) if forms else ''

    @staticmethod
    def get(name):
        """Build and return the `DatasetSplit` registered as `name`. KeyError if unknown."""
        DatasetRegistry._resolve(name)
        if name not in DatasetRegistry._registry:
            raise KeyError("Dataset '{}' is not registered. Registered datasets: {}.{} Register it "
                           "with one of the dataset.register_* functions first.".format(
                               name, _names_list(DatasetRegistry._registry), DatasetRegistry._forms()))
        return DatasetRegistry._registry[name]()

    @staticmethod
    def names():
        """list[str]: all registered split names, sorted."""
        return sorted(DatasetRegistry._registry)

    @staticmethod
    def register_metadata(name, key, value):
        """Attach `value` to split `name` under `key` (e.g. 'class_names'), replacing any old one."""
        DatasetRegistry._metadata.setdefault(name, {})[key] = _LazyValue(lambda: value)

    @staticmethod
    def register_lazy_metadata(name, key, func):
        """Like `register_metadata`, but the value is `func()`, computed on the first
        `get_metadata(name, key)` and cached (e.g. class names read from a json)."""
        if not callable(func):
            raise TypeError("register_lazy_metadata('{}', '{}', func): func must be a zero-argument "
                            "callable, got {!r}".format(name, key, func))
        DatasetRegistry._metadata.setdefault(name, {})[key] = _LazyValue(func)

    @staticmethod
    def get_metadata(name, key):
        """The metadata `key` of split `name`. KeyError naming what is missing if unknown."""
        DatasetRegistry._resolve(name)
        entries = DatasetRegistry._metadata.get(name)
        if entries is None:
            raise KeyError("No metadata for dataset '{}'. Datasets with metadata: {}.{}".format(
                name, _names_list(DatasetRegistry._metadata), DatasetRegistry._forms()))
        if key not in entries:
            raise KeyError("Dataset '{}' has no metadata '{}'. Its metadata keys: {}.".format(
                name, key, _names_list(entries)))
        return entries[key].get()


def file_label(name):
    """`name` made safe as part of a file name or a summary tag: characters other than
    letters, digits and `_.+-` (e.g. the slashes of a path in the name) become '_'."""
    return re.sub(r'[^A-Za-z0-9_.+-]+', '_', name).strip('_') or '_'
