"""The checks of a run's settings (``catdog.config.Config.validate``).

Every value a user can set is checked here, before anything is read or
trained, and a bad one raises ValueError naming its flag, the value and
what is expected (the scripts exit 2 on it). The functions take the
sections of a :class:`catdog.config.Config` (duck-typed: this module sits
below ``catdog.config``), and the tuples of allowed values live here so
``catdog.config`` declares its fields with them.
"""

from __future__ import annotations

import math
import re

from catdog import fileio
from catdog import label_sets
from catdog.class_weighting import class_weights
from catdog.class_weighting import parse_class_weight as _parse_class_weight
from catdog.control_settings import validate_controls
from catdog.decode import COLOR_MODES, INTERPOLATIONS, RESIZE_MODES
from catdog.options import flag_error as _fail

STAGES = ("baseline", "augmented", "feature_extraction", "fine_tuning")
CACHE_CHOICES = ("memory", "none")  # or a file path prefix
HEADS = ("avg", "max", "flatten")
PRECISIONS = ("auto", "float32", "mixed_float16", "mixed_bfloat16")
STRATEGIES = ("auto", "default", "one_device", "mirrored", "multi_worker", "tpu")
JIT_CHOICES = ("auto", "true", "false")
FLIPS = ("horizontal", "vertical", "horizontal_and_vertical", "none")
FILL_MODES = ("reflect", "wrap", "constant", "nearest")


def validate(config) -> None:
    """Checks ranges and choices, before any data is read or model built.

    Raises:
      ValueError: naming the flag, its value and what is expected.
    """
    d, m, t = config.data, config.model, config.train
    if m.stage not in STAGES:
        _fail("stage", m.stage, f"must be one of {STAGES}")
    size = tuple(d.image_size)
    if len(size) != 2 or not all(isinstance(s, int) and 16 <= s <= 2048 for s in size):
        _fail("image_size", d.image_size,
              "must be one or two integers between 16 and 2048 (height,width)")
    if not isinstance(d.batch_size, int) or not 1 <= d.batch_size <= 65536:
        _fail("batch_size", d.batch_size, "must be an integer between 1 and 65536")
    if not isinstance(t.epochs, int) or not 1 <= t.epochs <= 100000:
        _fail("epochs", t.epochs, "must be an integer of at least 1")
    if not (d.val_dir or d.val_csv) and not 0.0 < d.validation_split < 1.0:
        _fail("validation_split", d.validation_split,
              "must be strictly between 0 and 1 when no --val_dir or --val_csv is given")
    if (d.val_dir or d.val_csv) and not 0.0 <= d.validation_split < 1.0:
        _fail("validation_split", d.validation_split, "must be in [0, 1)")
    if not (math.isfinite(t.learning_rate) and t.learning_rate > 0):
        _fail("learning_rate", t.learning_rate, "must be a positive number")
    if d.cache == "":
        _fail("cache", d.cache, "must be 'memory', 'none' or a file path prefix")
    if d.shuffle_buffer < 0:
        _fail("shuffle_buffer", d.shuffle_buffer,
              "must be >= 0 (0: the default, see --help)")
    if not isinstance(d.exif_orientation, bool):
        _fail("exif_orientation", d.exif_orientation, "must be true or false")
    if d.resize_mode not in RESIZE_MODES:
        _fail("resize_mode", d.resize_mode, f"must be one of {RESIZE_MODES}")
    if d.interpolation not in INTERPOLATIONS:
        _fail("interpolation", d.interpolation, f"must be one of {INTERPOLATIONS}")
    if d.color_mode not in COLOR_MODES:
        _fail("color_mode", d.color_mode, f"must be one of {COLOR_MODES}")
    if d.color_mode != "rgb" and m.stage in ("feature_extraction", "fine_tuning"):
        raise ValueError(
            f"--color_mode={d.color_mode} cannot be used with the {m.stage} stage: its "
            f"pretrained --backbone={m.backbone} takes 3-channel images. Use "
            "--color_mode=rgb (the default; grayscale photos are then decoded to 3 "
            "equal channels), or a baseline/augmented stage for 1-channel input.")
    if d.max_pixels < 1:
        _fail("max_pixels", d.max_pixels, "must be a positive number of pixels")
    if m.head not in HEADS:
        _fail("head", m.head, f"must be one of {HEADS}")
    if not 0.0 <= m.dropout < 1.0:
        _fail("dropout", m.dropout, "must be in [0, 1)")
    _validate_augmentation(m)
    if m.backbone_alpha <= 0:
        _fail("backbone_alpha", m.backbone_alpha, "must be positive")
    if m.fine_tune_layers < 0:
        _fail("fine_tune_layers", m.fine_tune_layers, "must be >= 0 (0: backbone default)")
    if m.stage == "fine_tuning" and not m.init_from:
        _fail("init_from", m.init_from,
              "must name the model_dir of a finished feature_extraction run "
              "for the fine_tuning stage")
    if t.mixed_precision not in PRECISIONS:
        _fail("mixed_precision", t.mixed_precision, f"must be one of {PRECISIONS}")
    if t.strategy not in STRATEGIES:
        _fail("strategy", t.strategy, f"must be one of {STRATEGIES}")
    if t.jit_compile not in JIT_CHOICES:
        _fail("jit_compile", t.jit_compile, f"must be one of {JIT_CHOICES}")
    if not t.model_dir:
        _fail("model_dir", t.model_dir, "must name a folder for the run's results")
    for name in ("worker_timeout_seconds", "data_service_timeout_seconds"):
        value = getattr(t, name)
        if (isinstance(value, bool) or not isinstance(value, (int, float))
                or not math.isfinite(value) or value <= 0):
            _fail(name, value, "must be a positive number of seconds")
    validate_controls(t)
    parsed = _parse_class_weight(t.class_weight)
    if isinstance(parsed, dict) and d.class_names:
        class_weights(t.class_weight, d.class_names, None)
    _validate_mixing(t)
    _validate_sources(config)
    check_writes_outside_data(d, t.model_dir)
    if d.cache not in CACHE_CHOICES:
        check_writes_outside_data(d, d.cache, flag="cache")
    _validate_data_service(config)
    label_sets.validate(config)


def _validate_augmentation(m) -> None:
    """The augmentation strengths, in the ranges their Keras layers accept."""
    number = _number
    if m.flip not in FLIPS:
        _fail("flip", m.flip, f"must be one of {FLIPS}")
    if m.fill_mode not in FILL_MODES:
        _fail("fill_mode", m.fill_mode, f"must be one of {FILL_MODES}")
    if not (number(m.rotation) and 0.0 <= m.rotation <= 1.0):
        _fail("rotation", m.rotation, "must be in [0, 1] (fraction of a full turn)")
    for name in ("zoom", "zoom_width"):
        value = getattr(m, name)
        if value is None and name == "zoom_width":
            continue
        if not (number(value) and 0.0 <= value < 1.0):
            _fail(name, value, "must be in [0, 1)")
    for name in ("translation", "shear", "brightness", "contrast"):
        value = getattr(m, name)
        if not (number(value) and 0.0 <= value <= 1.0):
            _fail(name, value, "must be in [0, 1] (0: off)")
    if not (number(m.fill_value) and 0.0 <= m.fill_value <= 255.0):
        _fail("fill_value", m.fill_value, "must be a pixel value in [0, 255]")
    if not (number(m.rand_augment_magnitude) and 0.0 <= m.rand_augment_magnitude <= 1.0):
        _fail("rand_augment_magnitude", m.rand_augment_magnitude, "must be in [0, 1]")
    if (isinstance(m.rand_augment_num_ops, bool) or not isinstance(m.rand_augment_num_ops, int)
            or not 1 <= m.rand_augment_num_ops <= 11):
        _fail("rand_augment_num_ops", m.rand_augment_num_ops,
              "must be an integer from 1 to 11 (RandAugment's operations)")


def _validate_mixing(t) -> None:
    """MixUp / CutMix alphas, label smoothing, and what soft labels cannot go with."""
    for name, ok, expected in (
            ("mixup", lambda v: v >= 0, "0 (off) or a positive alpha"),
            ("cutmix", lambda v: 0 <= v <= 1, "0 (off) or a positive alpha up to 1"),
            ("label_smoothing", lambda v: 0 <= v < 1, "in [0, 1) (0: off)")):
        value = getattr(t, name)
        if not (_number(value) and ok(value)):
            _fail(name, value, f"must be {expected}")
        if value and name != "label_smoothing" and _parse_class_weight(t.class_weight):
            _fail(name, value, "cannot go with --class_weight (a mixed label has no one "
                  "class to weight); give one of the two")
        if value and t.fast_features:
            _fail(name, value, "cannot go with --fast_features (the head would train on "
                  "features computed once from plain images); give one of the two")


def _number(value) -> bool:
    return (not isinstance(value, bool) and isinstance(value, (int, float))
            and math.isfinite(value))


def _validate_sources(config) -> None:
    """Exactly one input source; TFRecord training shards need validation shards."""
    d = config.data
    given = [name for name, value in (("train_dir", d.train_dir),
                                      ("train_tfrecords", d.train_tfrecords),
                                      ("tfds_name", d.tfds_name),
                                      ("train_csv", d.train_csv)) if value]
    if len(given) > 1:
        raise ValueError(
            f"Give exactly one input source; received {', '.join('--' + g for g in given)}. "
            f"Received: train_dir={d.train_dir!r}, train_tfrecords={d.train_tfrecords!r}, "
            f"tfds_name={d.tfds_name!r}, train_csv={d.train_csv!r}")
    _validate_csv(d)
    if d.train_tfrecords and not d.val_tfrecords:
        _fail("val_tfrecords", d.val_tfrecords,
              "must name the validation shards when --train_tfrecords is given "
              "(build them from the validation folder with scripts/build_tfrecords.py)")
    if d.val_tfrecords and not d.train_tfrecords:
        _fail("train_tfrecords", d.train_tfrecords,
              "must name the training shards when --val_tfrecords is given")
    if d.tfds_name and not (d.train_split and d.val_split):
        _fail("val_split" if d.train_split else "train_split",
              d.val_split if d.train_split else d.train_split,
              "must be a TFDS split such as 'train[:80%]' with --tfds_name")


def check_writes_outside_data(d, path: str, flag: str = "model_dir") -> None:
    """Refuses ``path`` (what ``--flag`` writes) inside a class folder tree.

    Files written there would be listed as images of a class on the next
    run (or make a class folder with no image), and catdog never writes
    into a user's data folder.
    """
    if not path or fileio.is_remote(path):
        return
    for name in ("train_dir", "val_dir"):
        folder = getattr(d, name)
        if folder and not fileio.is_remote(folder) and fileio.is_within(path, folder):
            _fail(flag, path, f"is inside the data folder --{name}={folder}; catdog never "
                  "writes into a data folder (the next run would list what it wrote "
                  "as images): choose a folder outside it")


def _validate_csv(d) -> None:
    """The CSV settings go with --train_csv; the two columns differ."""
    for name in ("val_csv", "image_dir", "filename_column", "label_column"):
        if getattr(d, name) and not d.train_csv:
            _fail(name, getattr(d, name), "goes with --train_csv (labels from a CSV file)")
    if d.train_csv and d.val_dir:
        _fail("val_dir", d.val_dir, "goes with --train_dir; with --train_csv give the "
              "validation rows as --val_csv (or hold out --validation_split)")
    if d.filename_column and d.filename_column == d.label_column:
        _fail("label_column", d.label_column,
              "must be another column than --filename_column")


def _validate_data_service(config) -> None:
    """--data_service: the address, and what it cannot be combined with."""
    d, t = config.data, config.train
    if not d.data_service:
        return
    # The form catdog.data_service.parse_address accepts.
    if not re.match(r"^grpc://([^:/\s]+|\[[0-9a-fA-F:.]+\]):\d{1,5}$", d.data_service) or not (
            0 < int(d.data_service.rsplit(":", 1)[1]) < 65536):
        _fail("data_service", d.data_service,
              "must be the tf.data service dispatcher as grpc://HOST:PORT "
              "(see scripts/data_service.py)")
    other = [name for name, value in (("train_tfrecords", d.train_tfrecords),
                                      ("tfds_name", d.tfds_name)) if value]
    if other:
        raise ValueError(
            f"`--data_service` reads a folder (--train_dir); it cannot be combined with "
            f"--{other[0]}. Use --train_dir, or drop --data_service. "
            f"Received: data_service={d.data_service!r}, {other[0]}={getattr(d, other[0])!r}")
    if t.strategy in ("multi_worker", "tpu"):
        raise ValueError(
            f"`--data_service` is for one trainer process; --strategy={t.strategy} "
            "is not supported with it (each trainer would need its own share of the "
            "service's jobs). Use --strategy=auto, default, one_device or mirrored, or "
            f"drop --data_service. Received: data_service={d.data_service!r}, "
            f"strategy={t.strategy!r}")
    if d.deterministic:
        raise ValueError(
            "`--deterministic` cannot hold with --data_service: the service deals files "
            "out to whichever worker asks first, so the order of training batches "
            "differs between runs. Drop one of them. "
            f"Received: data_service={d.data_service!r}, deterministic=True")
    if t.fast_features:
        raise ValueError(
            "`--fast_features` reads the training split once in this process to compute "
            "its features; it cannot be combined with --data_service. Drop one of them. "
            f"Received: data_service={d.data_service!r}, fast_features=True")
