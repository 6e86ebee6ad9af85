"""Typed configuration for catdog runs, and the four stage presets.

A run is described by one :class:`Config` (data, model, training). It is
written as ``config.json`` into the run's ``model_dir`` so any result can be
rerun from its model dir alone (:func:`Config.from_dict`).

Stage presets are plain functions (:func:`baseline`, :func:`augmented`,
:func:`feature_extraction`, :func:`fine_tuning`); :func:`for_stage` picks one
by name. A stage has the same name in its script, its preset, its model dir
and its report.

Every field is declared once with :func:`catdog.options.option`: its default
and help, which are also its command-line flag (``catdog.cli``) and its entry
in the section's docstring.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Optional, Sequence

from catdog.class_weighting import CLASS_WEIGHT_MODES, class_weights  # noqa: F401
# The values each setting may take, and the checks of Config.validate.
from catdog.config_checks import (  # noqa: F401
    CACHE_CHOICES, FILL_MODES, FLIPS, HEADS, JIT_CHOICES, PRECISIONS, STAGES, STRATEGIES,
    check_writes_outside_data, validate)
from catdog.control_settings import LR_SCHEDULES, OPTIMIZERS
from catdog.decode import COLOR_MODES, INTERPOLATIONS, RESIZE_MODES
from catdog.options import document_options, flag_error, option

DEFAULT_MAX_PIXELS = 89_478_485  # ~90 MP, as Pillow's decompression-bomb limit.


_fail = flag_error


def parse_image_size(value: Sequence) -> tuple:
    """Parses ``"160"``, ``"160,128"``, ``[160]`` or ``(160, 128)`` into (h, w)."""
    if isinstance(value, str):
        parts = [p for p in value.replace("x", ",").split(",") if p.strip()]
    elif isinstance(value, int):
        parts = [value]
    else:
        parts = list(value)
    try:
        ints = [int(p) for p in parts]
    except (TypeError, ValueError):
        _fail("image_size", value, "must be one or two integers (height,width)")
    if len(ints) == 1:
        ints = ints * 2
    if len(ints) != 2:
        _fail("image_size", value, "must be one or two integers (height,width)")
    return tuple(ints)


def _size_text(size: Sequence) -> str:
    return ",".join(str(s) for s in size)


def _names_tuple(names: Optional[Sequence]) -> Optional[tuple]:
    return tuple(names) if names else None


def _names_list(names: Optional[Sequence]) -> Optional[list]:
    return list(names) if names else None


# --------------------------------------------------------------------------
# The three sections of a run's Config. Options with flag_default=None have
# flags that stay unset (None) until given: the stage preset's value stays.
# --------------------------------------------------------------------------

@document_options
@dataclasses.dataclass
class DataConfig:
    """Where images come from and how they are batched."""

    train_dir: str = option(
        "", "Folder with one subfolder of images per class (e.g. "
        "training_set/ with cats/ and dogs/). Nested subfolders "
        "count for their top-level class.", flag_default=None)
    val_dir: str = option(
        "", "Validation folder with the same class subfolders. When "
        "unset, --validation_split of --train_dir is held out.", flag_default=None)
    validation_split: float = option(
        0.2, "Fraction of each class of --train_dir held out for validation "
        "when no --val_dir is given (chosen by --seed; adding or removing "
        "a file moves at most one other file between the splits).")
    class_names: Optional[tuple] = option(
        None, "Class subfolder names in label order (default: all "
        "subfolders, alphanumeric order).", kind="list",
        to_field=_names_tuple, to_flag=_names_list)
    image_size: tuple = option(
        (160, 160), "Image size after resizing: 'SIZE' or 'HEIGHT,WIDTH'.", kind="string",
        to_field=parse_image_size, to_flag=_size_text)
    batch_size: int = option(
        32, "GLOBAL batch size, summed over all replicas (GPUs); must "
        "divide evenly by the number of replicas. The learning "
        "rate is never rescaled for you.")
    cache: str = option(
        "memory", "Cache of decoded uint8 images: 'memory' (the whole split in "
        "RAM), 'none' (decode every epoch), or a folder for cache "
        "files (for data larger than memory). run_pipeline.py without "
        "--cache: one file cache in <model_dir>/cache for all its stages.")
    seed: int = option(
        1337, "Seed for the validation split, shuffling, augmentation "
        "and initialisation.")
    shuffle_buffer: int = option(
        0, "Shuffle buffer in decoded images. 0: the whole split with "
        "--cache=memory; otherwise 1024 images, so memory does not "
        "grow with the split (--cache=none shuffles the file list "
        "before decoding; a file cache is read in chunks in a new "
        "order every epoch).")
    whole_split_shuffle: bool = option(
        False, "With shuffle_buffer=0, shuffle the whole split every epoch "
        "whatever the cache, as --cache=memory does. Set by run_pipeline "
        "when its stages share one file cache in place of --cache=memory.",
        flag=False)
    max_pixels: int = option(
        DEFAULT_MAX_PIXELS, "Images whose header declares more pixels are skipped "
        "(decompression-bomb guard).")
    deterministic: bool = option(
        False, "Same batches in the same order on every run with the same "
        "--seed (slower); the default favours speed.")
    # Input sources other than a folder (catdog.sources.tfrecords, catdog.sources.tfds).
    train_tfrecords: str = option(
        "", "Glob of training TFRecord shards written by "
        "scripts/build_tfrecords.py (e.g. 'shards/train-*.tfrecord'); "
        "class names come from the manifest.json next to them. "
        "Instead of --train_dir; needs --val_tfrecords.", flag_default=None)
    val_tfrecords: str = option(
        "", "Glob of validation TFRecord shards (with --train_tfrecords).",
        flag_default=None)
    tfds_name: str = option(
        "", "TensorFlow Datasets image-classification dataset (e.g. "
        "cats_vs_dogs) instead of --train_dir.", flag_default=None)
    tfds_data_dir: str = option(
        "", "TFDS data dir holding the prepared dataset (default: TFDS' "
        "own, ~/tensorflow_datasets). Without network, run `tfds build "
        "NAME --data_dir=DIR` elsewhere and copy DIR here.", flag_default=None)
    train_split: str = option(
        "train[:80%]", "TFDS split for training (with --tfds_name).")
    val_split: str = option(
        "train[80%:]", "TFDS split for validation (with --tfds_name).")
    # Labels from a CSV file (catdog.sources.csv_labels).
    train_csv: str = option(
        "", "CSV file of training images and their labels (e.g. Kaggle's "
        "labels.csv), instead of --train_dir: one row per image, a file name "
        "(or an id whose one image file has that stem) and a label; classes "
        "are the label column's values, sorted, unless --class_names. "
        "Without --val_csv, --validation_split of each class is held out.",
        flag_default=None)
    val_csv: str = option(
        "", "Validation CSV file with the same columns (with --train_csv).",
        flag_default=None)
    image_dir: str = option(
        "", "Folder the file names of --train_csv / --val_csv are relative to "
        "(default: the folder of each CSV file). Paths leaving it are never read.",
        flag_default=None)
    filename_column: str = option(
        "", "Column of the CSV holding the file name or id (default: the first "
        "column of the header).")
    label_column: str = option(
        "", "Column of the CSV holding the label (default: the second column "
        "of the header).")
    label_separator: str = option(
        "", "With --train_csv: the label column holds a set of labels per image, "
        "separated by this character (e.g. '|'): multi-label training, one "
        "sigmoid output per label. Classes are the union of the labels, sorted, "
        "unless --class_names. Empty: one label per image.")
    dct_scaling: bool = option(
        False, "Training split only: decode JPEGs at least 2x/4x/8x the image "
        "size on both sides at 1/2, 1/4 or 1/8 scale in the DCT domain "
        "(faster decode; pixels differ slightly from the exact decode "
        "that validation, evaluation, prediction and export use).")
    exif_orientation: bool = option(
        True, "Turn JPEGs upright by their EXIF orientation tag, as photo viewers "
        "show them, before resizing. Recorded in config.json: evaluation, "
        "prediction and export of the model decode the same way (a config.json "
        "without it means off, the decode of older catdog versions).")
    resize_mode: str = option(
        "stretch", "How an image reaches --image_size: 'stretch' (aspect ratio not "
        "kept), 'crop' the centred largest box of that aspect ratio first, or "
        "'pad': resize keeping the aspect ratio, centred on black "
        "(image_dataset_from_directory's crop_to_aspect_ratio / "
        "pad_to_aspect_ratio). Recorded in config.json.",
        choices=RESIZE_MODES)
    interpolation: str = option(
        "bilinear", "Resize method (tf.image.resize): bilinear, nearest, bicubic, "
        "area, lanczos3, lanczos5, gaussian, mitchellcubic; rounded and clipped "
        "to 0..255. Recorded in config.json.", choices=INTERPOLATIONS)
    color_mode: str = option(
        "rgb", "Channels images are decoded to: 'rgb' (3) or 'grayscale' (1, "
        "image_dataset_from_directory's color_mode='grayscale'). Grayscale trains "
        "the baseline/augmented CNN on 1-channel input; the pretrained backbones "
        "of feature_extraction/fine_tuning need rgb. Recorded in config.json "
        "(without it: rgb).", choices=COLOR_MODES)
    follow_links: bool = option(
        False, "Folder input: descend into symlinked subfolders of the class "
        "folders (each folder listed once; a link back up is not followed).")
    data_service: str = option(
        "", "tf.data service dispatcher as grpc://HOST:PORT (started with "
        "scripts/data_service.py): the training split is read, decoded, "
        "shuffled and batched on the service's workers, each file once per "
        "epoch (dynamic sharding); validation stays in this process. Folder "
        "input only; the training split is then not cached (--cache applies "
        "to validation). Empty: off.")


@document_options
@dataclasses.dataclass
class ModelConfig:
    """Which network a stage trains."""

    stage: str = option(
        "baseline", "The stage, one of STAGES; set by the stage preset (each "
        "script trains its own stage).", flag=False)
    backbone: str = option(
        "vgg16", "ImageNet backbone for feature_extraction / fine_tuning: "
        "vgg16, vgg19, resnet50, mobilenet, mobilenet_v2, "
        "efficientnet_b0.")
    backbone_alpha: float = option(
        1.0, "Width multiplier of mobilenet / mobilenet_v2 (e.g. 0.25).")
    weights: str = option(
        "imagenet", "Backbone weights: 'imagenet' (Keras download, cached in "
        "~/.keras/models), 'none' (random init) or a .h5 file path.")
    head: str = option(
        "avg", "How backbone features reach the new head: global 'avg' or "
        "'max' pooling, or 'flatten'.", choices=HEADS)
    dropout: float = option(
        0.5, "Dropout rate before the last layer (default: the stage preset: "
        "0.5, but 0.25 for augmented, whose augmentation already regularizes; "
        "fine_tuning keeps its --init_from model's).", flag_default=None)
    augment: bool = option(
        False, "Put the augmentation block in front of the network (default: "
        "the stage preset: off for baseline, on for augmented and "
        "feature_extraction; fine_tuning keeps the block of its --init_from "
        "model).", flag_default=None, to_field=bool)
    flip: str = option(
        "horizontal", "Augmentation: RandomFlip mode ('none': no flip).", choices=FLIPS)
    rotation: float = option(
        0.1, "Augmentation: RandomRotation factor, a fraction of a full turn "
        "(0.1: up to +-36 degrees); 0: off.")
    zoom: float = option(
        0.2, "Augmentation: RandomZoom height factor (0.2: the image is zoomed "
        "in or out by up to 20%); 0: off.")
    zoom_width: Optional[float] = option(
        None, "Augmentation: RandomZoom width factor, drawn independently of the "
        "height's (as ImageDataGenerator zooms x and y); unset: the width "
        "follows the height's zoom, keeping the aspect ratio.", kind="float",
        flag_default=None)
    translation: float = option(
        0.0, "Augmentation: RandomTranslation factor of height and width (0.1: "
        "shifts of up to 10% of the image size); 0: off.")
    shear: float = option(
        0.0, "Augmentation: RandomShear x_factor, the horizontal shear (0.2: "
        "pixels move up to 20% of the height across); 0: off.")
    brightness: float = option(
        0.0, "Augmentation: RandomBrightness factor, a fraction of the 0..255 "
        "value range added or taken (0.2: up to +-51); 0: off.")
    contrast: float = option(
        0.0, "Augmentation: RandomContrast factor (0.2: contrast scaled by "
        "0.8..1.2); 0: off.")
    fill_mode: str = option(
        "reflect", "Augmentation: how rotation, zoom, translation and shear fill "
        "pixels from outside the image (Keras' default 'reflect'; "
        "ImageDataGenerator's was 'nearest').", choices=FILL_MODES)
    fill_value: float = option(
        0.0, "Augmentation: the pixel value (0..255) of --fill_mode=constant.")
    rand_augment: bool = option(
        False, "Augmentation: Keras' RandAugment after the other layers: each training "
        "batch gets --rand_augment_num_ops of its 11 operations (shear, rotation, "
        "color, solarization, ...), each image its own strength.")
    rand_augment_magnitude: float = option(
        0.5, "Augmentation: RandAugment's factor, the strength of its "
        "operations, in [0, 1] (with --rand_augment).")
    rand_augment_num_ops: int = option(
        2, "Augmentation: RandAugment operations applied one after the other "
        "to each training batch, 1..11 (with --rand_augment).")
    fine_tune_layers: int = option(
        0, "Top backbone layers fine_tuning unfreezes; 0: the "
        "backbone's top block (vgg16: block5, its last 4 layers).")
    init_from: str = option(
        "", "fine_tuning: model_dir of the finished feature_extraction "
        "run to start from. Its split (split.json) is used, and data "
        "flags not given take that run's values.", flag_default=None)


@document_options
@dataclasses.dataclass
class TrainConfig:
    """How a stage is trained and where its results go."""

    model_dir: str = option(
        "", "Folder for every result of the run (created if missing).", flag_default=None)
    epochs: int = option(
        10, "Epochs to train (default: the stage preset: baseline 30, "
        "augmented 30, feature_extraction 15, fine_tuning 10).", flag_default=None)
    learning_rate: float = option(
        1e-3, "Base learning rate of the optimizer (default: the stage preset: "
        "1e-3, 1e-3, 5e-3, 1e-4).", flag_default=None)
    mixed_precision: str = option(
        "auto", "Dtype policy: 'auto' is mixed_float16 on GPUs, mixed_bfloat16 "
        "on TPUs, float32 on CPUs.", choices=PRECISIONS)
    strategy: str = option(
        "auto", "tf.distribute strategy: 'auto' mirrors over several local "
        "GPUs, else the default strategy.", choices=STRATEGIES)
    tpu: str = option("", "TPU address for --strategy=tpu.")
    jit_compile: str = option(
        "auto", "XLA compilation of the training step.", choices=JIT_CHOICES)
    verbose: int = option(
        2, "Keras progress output: 0 silent, 1 progress bar, 2 one "
        "line per epoch (best for batch-job logs).")
    # Only stage 3 has a frozen backbone to extract features with; run_pipeline
    # shares one config across stages, so the other stages ignore it.
    fast_features: bool = option(
        False, "feature_extraction: run the frozen backbone once over the "
        "data and train the head on the cached features (many times "
        "faster per epoch). The head then trains WITHOUT augmentation "
        "(a warning says so); the saved model.keras is still the full "
        "model, augmentation block included for fine-tuning.")
    worker_timeout_seconds: float = option(
        120.0, "--strategy=multi_worker: seconds another worker may not "
        "answer before it counts as gone; this worker then stops "
        "with exit code 75 (rerun every worker to resume). A "
        "worker busy in a slow phase still answers.")
    data_service_timeout_seconds: float = option(
        600.0, "--data_service: seconds a training step may wait for its batch "
        "from the service before this run stops with exit code 75. The service "
        "does not recover a worker lost mid-epoch (the run would wait for ever): "
        "bring the workers up and rerun to resume from the last completed epoch. "
        "The first step of a run, which also builds the training step, may wait "
        "the larger of this and 600 s. Validation, read locally, is not timed.")
    class_weight: str = option(
        "none", "Loss weight of each class in training (never in validation): "
        "'none'; 'balanced', n_samples / (n_classes * count) from the "
        "training split's class counts (folder and CSV inputs); or every class "
        "by name, e.g. 'cats=1,dogs=3'. The weights used are in "
        "metrics.json.")
    # They mix labels too, so they act in tf.data (augment.mix_batches), not the model.
    mixup: float = option(
        0.0, "MixUp alpha: each training image and its label are blended with another "
        "of its batch by a weight from Beta(alpha, alpha) (0.2 is common); 0: off. "
        "With --cutmix too, each batch gets one of the two at random.")
    cutmix: float = option(
        0.0, "CutMix alpha in (0, 1]: a random box of each training image is replaced "
        "by another image's of its batch, labels mixed by area; the share kept is "
        "drawn from Beta(alpha, alpha) (1.0 is common); 0: off.")
    label_smoothing: float = option(
        0.0, "Training labels y become y * (1 - s) + s / classes (two classes: "
        "s / 2), as Keras' label_smoothing; validation labels and val_loss stay "
        "plain. 0: off.")
    # Training controls (catdog.controls); the defaults train as the presets
    # always did: constant Adam rate, best model by val_accuracy, every epoch.
    lr_schedule: str = option(
        "constant", "Learning-rate schedule: 'constant'; 'cosine' (decays to 0 at "
        "the last step of --epochs); 'step' (times --lr_decay_factor every "
        "--lr_step_epochs epochs); 'plateau' (times --lr_decay_factor when "
        "--monitor has not improved for --lr_plateau_patience epochs). "
        "history.csv's learning_rate column holds each epoch's last rate "
        "(default: the stage preset: constant for baseline, cosine for the others).",
        choices=LR_SCHEDULES, flag_default=None)
    warmup_epochs: float = option(
        0.0, "Epochs of linear learning-rate warm-up from 0, counted in steps "
        "(e.g. 0.5); 0: none. Not with --lr_schedule=plateau (default: the "
        "stage preset: 0 for baseline, 1 for the others).", flag_default=None)
    lr_step_epochs: int = option(
        10, "--lr_schedule=step: epochs between two decays.")
    lr_decay_factor: float = option(
        0.1, "--lr_schedule=step and plateau: the rate's multiplier at each decay.")
    lr_plateau_patience: int = option(
        2, "--lr_schedule=plateau: epochs without improvement of --monitor "
        "before the rate is lowered.")
    monitor: str = option(
        "val_accuracy", "Validation metric that picks the best model (model.keras), "
        "early stopping and the plateau: val_loss (lower is better) or any other "
        "val_ metric the run logs (val_auc, ...: higher is better).")
    early_stopping_patience: int = option(
        0, "Stop training when --monitor has not improved for this many epochs "
        "(model.keras keeps the best epoch; metrics.json says why training "
        "stopped); 0: off.")
    optimizer: str = option(
        "adam", "Optimizer: 'adam', 'adamw' (decoupled weight decay) or 'sgd' "
        "(with --momentum).", choices=OPTIMIZERS)
    weight_decay: Optional[float] = option(
        None, "Decoupled weight decay of the optimizer (unset: AdamW's 0.004 "
        "with --optimizer=adamw, none with adam and sgd).", kind="float",
        flag_default=None)
    momentum: float = option(
        0.9, "--optimizer=sgd: momentum (0: plain SGD).")
    top_k: Optional[int] = option(
        None, "Also report top-k accuracy (top_k_accuracy) with more than two "
        "classes (unset: 5 with more than 5 classes, else off; 0: off).",
        kind="integer", flag_default=None)
    steps_per_execution: int = option(
        1, "Training steps per call of the compiled function (compile's); more "
        "cuts the per-step overhead on GPUs and TPUs; 1 suits CPUs.")


@dataclasses.dataclass
class Config:
    """A whole run: data, model and training settings."""

    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)

    @property
    def stage(self) -> str:
        return self.model.stage

    def to_dict(self) -> dict:
        """Returns a JSON-ready dict (tuples become lists)."""
        return json.loads(json.dumps(dataclasses.asdict(self)))

    @classmethod
    def from_dict(cls, d: dict) -> "Config":
        """Builds a Config from :meth:`to_dict` output (unknown keys are errors)."""
        def build(klass, values):
            values = dict(values or {})
            names = {f.name for f in dataclasses.fields(klass)}
            unknown = sorted(set(values) - names)
            if unknown:
                raise ValueError(
                    f"Unknown {klass.__name__} keys {unknown}; expected some of "
                    f"{sorted(names)}.")
            for key in ("image_size", "class_names"):
                if key in values and isinstance(values[key], list):
                    values[key] = tuple(values[key])
            return klass(**values)

        return cls(data=build(DataConfig, d.get("data")),
                   model=build(ModelConfig, d.get("model")),
                   train=build(TrainConfig, d.get("train")))

    def validate(self) -> None:
        """Checks every value a user can set; raises ValueError naming it."""
        validate(self)


# --------------------------------------------------------------------------
# Which settings shape a run: checked when fine-tuning and (with
# catdog.resume_check.RESUME_SETTINGS) when resuming.
# --------------------------------------------------------------------------

def split_fields(data: DataConfig) -> tuple:
    """The DataConfig fields that decide which examples are trained and validated on.

    Fine-tuning must use the split of its ``init_from`` run, so these must
    not differ from that run's. The seed and the fraction shape the split
    only when it is held out of the training folder; ``max_pixels`` decides
    which files of a folder are usable.
    """
    fields = ["train_dir", "val_dir", "train_tfrecords", "val_tfrecords", "tfds_name",
              "train_csv", "val_csv", "class_names"]
    if data.tfds_name:
        fields += ["tfds_data_dir", "train_split", "val_split"]
    elif not data.train_tfrecords:
        fields.append("max_pixels")
        if data.train_csv:
            fields += ["image_dir", "filename_column", "label_column", "label_separator"]
        if not (data.val_dir or data.val_csv):
            fields += ["validation_split", "seed"]
    return tuple(fields)


#: The augmentation settings: ModelConfig fields and the arguments of
#: catdog.augment.build_augmentation, by the same names.
AUGMENTATION_SETTINGS = ("flip", "rotation", "zoom", "zoom_width", "translation", "shear",
                         "brightness", "contrast", "fill_mode", "fill_value", "rand_augment",
                         "rand_augment_magnitude", "rand_augment_num_ops")

# --------------------------------------------------------------------------
# Stage presets. Each returns a fresh Config; callers override fields.
# --------------------------------------------------------------------------

def baseline() -> Config:
    """Stage 1: the small CNN from scratch, no augmentation, constant Adam 1e-3.

    It overfits (training accuracy near 1 within 30 epochs): the reference the
    other stages are measured against.
    """
    return Config(model=ModelConfig(stage="baseline", augment=False),
                  train=TrainConfig(epochs=30, learning_rate=1e-3))


def augmented() -> Config:
    """Stage 2: the same CNN behind the in-model augmentation block.

    Augmented images are a harder task: at a constant rate the CNN still
    underfits at epoch 30, so the rate warms up for an epoch and decays on a
    cosine to 0, which lets it converge within the same 30 epochs as stage 1.
    The augmentation regularizes, so the head's dropout is half stage 1's
    (0.25): at 0.5 the CNN still underfits at epoch 30.
    """
    return Config(model=ModelConfig(stage="augmented", augment=True, dropout=0.25),
                  train=TrainConfig(epochs=30, learning_rate=1e-3,
                                    lr_schedule="cosine", warmup_epochs=1.0))


def feature_extraction() -> Config:
    """Stage 3: augmentation -> frozen ImageNet backbone -> new head."""
    # Only the head trains: a linear layer on pooled features converges in
    # few steps at a higher rate than a network trained from scratch; the
    # cosine decay then settles it instead of leaving it to wander at 5e-3.
    return Config(model=ModelConfig(stage="feature_extraction", augment=True),
                  train=TrainConfig(epochs=15, learning_rate=5e-3,
                                    lr_schedule="cosine", warmup_epochs=1.0))


def fine_tuning() -> Config:
    """Stage 4: stage 3's model with the backbone's top block unfrozen, Adam 1e-4.

    The warm-up keeps the first steps from wrecking pretrained features the
    new head's gradients have not settled on yet.
    """
    return Config(model=ModelConfig(stage="fine_tuning", augment=True),
                  train=TrainConfig(epochs=10, learning_rate=1e-4,
                                    lr_schedule="cosine", warmup_epochs=1.0))


#: The settings each stage preset chooses (a field of ``train`` unless
#: :func:`preset_section` says otherwise). A stage script or ``run_pipeline``
#: keeps the preset's value unless the setting is given.
PRESET_SETTINGS = ("epochs", "learning_rate", "lr_schedule", "warmup_epochs", "dropout")
_PRESET_SECTIONS = {"dropout": "model"}


def preset_section(setting: str) -> str:
    """The Config section (``"train"`` or ``"model"``) of a preset setting."""
    return _PRESET_SECTIONS.get(setting, "train")


def preset_value(config: Config, setting: str):
    """The value of the preset setting ``setting`` in ``config``, in its section."""
    return getattr(getattr(config, preset_section(setting)), setting)


_PRESETS = {
    "baseline": baseline,
    "augmented": augmented,
    "feature_extraction": feature_extraction,
    "fine_tuning": fine_tuning,
}


def for_stage(stage: str) -> Config:
    """Returns the preset of ``stage``; raises ValueError for an unknown name."""
    if stage not in _PRESETS:
        raise ValueError(f"Unknown stage {stage!r}; expected one of {STAGES}.")
    return _PRESETS[stage]()


def quick(config: Config) -> Config:
    """Shrinks a config for smoke runs and tests (small images, few epochs)."""
    config = dataclasses.replace(config)
    config.data = dataclasses.replace(config.data, image_size=(64, 64), batch_size=16)
    config.train = dataclasses.replace(config.train, epochs=2)
    return config

