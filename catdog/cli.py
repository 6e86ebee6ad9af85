"""Command-line glue shared by the scripts: one set of training flags.

Nothing here runs at import: :func:`define_training_flags` defines the flags
(once per process) and :func:`config_from_flags` turns parsed values into a
:class:`catdog.config.Config`. The library itself never reads flags.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import traceback

from absl import flags
from absl import logging

from catdog import config as config_lib
from catdog import errors
from catdog import rundir
# Exit codes a scheduler can act on (documented in README.md and catdog.errors).
from catdog.errors import EXIT_FAILURE, EXIT_OK, EXIT_USAGE  # noqa: F401


def define_training_flags(flag_values=flags.FLAGS) -> None:
    """Defines the flags every training script shares (idempotent)."""
    if "train_dir" in flag_values:
        return
    d = config_lib.DataConfig()
    m = config_lib.ModelConfig()
    t = config_lib.TrainConfig()
    fv = dict(flag_values=flag_values)
    # Data.
    flags.DEFINE_string("train_dir", None,
                        "Folder with one subfolder of images per class (e.g. "
                        "training_set/ with cats/ and dogs/). Nested subfolders "
                        "count for their top-level class.", **fv)
    flags.DEFINE_string("val_dir", None,
                        "Validation folder with the same class subfolders. When "
                        "unset, --validation_split of --train_dir is held out.", **fv)
    flags.DEFINE_float("validation_split", d.validation_split,
                       "Fraction of each class of --train_dir held out for validation "
                       "when no --val_dir is given (chosen by --seed; adding or removing "
                       "a file moves at most one other file between the splits).", **fv)
    flags.DEFINE_list("class_names", None,
                      "Class subfolder names in label order (default: all "
                      "subfolders, alphanumeric order).", **fv)
    flags.DEFINE_string("image_size", f"{d.image_size[0]},{d.image_size[1]}",
                        "Image size after resizing: 'SIZE' or 'HEIGHT,WIDTH'.", **fv)
    flags.DEFINE_integer("batch_size", d.batch_size,
                         "GLOBAL batch size, summed over all replicas (GPUs); must "
                         "divide evenly by the number of replicas. The learning "
                         "rate is never rescaled for you.", **fv)
    flags.DEFINE_string("cache", d.cache,
                        "Cache of decoded uint8 images: 'memory' (the whole split in "
                        "RAM), 'none' (decode every epoch), or a folder for cache "
                        "files (for data larger than memory).", **fv)
    flags.DEFINE_integer("seed", d.seed,
                         "Seed for the validation split, shuffling, augmentation "
                         "and initialisation.", **fv)
    flags.DEFINE_integer("shuffle_buffer", d.shuffle_buffer,
                         "Shuffle buffer in decoded images. 0: the whole split with "
                         "--cache=memory; otherwise 1024 images, so memory does not "
                         "grow with the split (--cache=none shuffles the file list "
                         "before decoding; a file cache is read in chunks in a new "
                         "order every epoch).", **fv)
    flags.DEFINE_integer("max_pixels", d.max_pixels,
                         "Images whose header declares more pixels are skipped "
                         "(decompression-bomb guard).", **fv)
    flags.DEFINE_boolean("deterministic", d.deterministic,
                         "Same batches in the same order on every run with the same "
                         "--seed (slower); the default favours speed.", **fv)
    # Other input sources (instead of --train_dir).
    flags.DEFINE_string("train_tfrecords", None,
                        "Glob of training TFRecord shards written by "
                        "scripts/build_tfrecords.py (e.g. 'shards/train-*.tfrecord'); "
                        "class names come from the manifest.json next to them. "
                        "Instead of --train_dir; needs --val_tfrecords.", **fv)
    flags.DEFINE_string("val_tfrecords", None,
                        "Glob of validation TFRecord shards (with --train_tfrecords).", **fv)
    flags.DEFINE_string("tfds_name", None,
                        "TensorFlow Datasets image-classification dataset (e.g. "
                        "cats_vs_dogs) instead of --train_dir.", **fv)
    flags.DEFINE_string("tfds_data_dir", None,
                        "TFDS data dir holding the prepared dataset (default: TFDS' "
                        "own, ~/tensorflow_datasets). Without network, run `tfds build "
                        "NAME --data_dir=DIR` elsewhere and copy DIR here.", **fv)
    flags.DEFINE_string("train_split", d.train_split,
                        "TFDS split for training (with --tfds_name).", **fv)
    flags.DEFINE_string("val_split", d.val_split,
                        "TFDS split for validation (with --tfds_name).", **fv)
    flags.DEFINE_boolean("dct_scaling", d.dct_scaling,
                         "Training split only: decode JPEGs at least 2x/4x/8x the image "
                         "size on both sides at 1/2, 1/4 or 1/8 scale in the DCT domain "
                         "(faster decode; pixels differ slightly from the exact decode "
                         "that validation, evaluation, prediction and export use).", **fv)
    # Model.
    flags.DEFINE_string("backbone", m.backbone,
                        "ImageNet backbone for feature_extraction / fine_tuning: "
                        "vgg16, vgg19, resnet50, mobilenet, mobilenet_v2, "
                        "efficientnet_b0.", **fv)
    flags.DEFINE_float("backbone_alpha", m.backbone_alpha,
                       "Width multiplier of mobilenet / mobilenet_v2 (e.g. 0.25).", **fv)
    flags.DEFINE_string("weights", m.weights,
                        "Backbone weights: 'imagenet' (Keras download, cached in "
                        "~/.keras/models), 'none' (random init) or a .h5 file path.", **fv)
    flags.DEFINE_enum("head", m.head, list(config_lib.HEADS),
                      "How backbone features reach the new head: global 'avg' or "
                      "'max' pooling, or 'flatten'.", **fv)
    flags.DEFINE_float("dropout", m.dropout, "Dropout rate before the last layer.", **fv)
    flags.DEFINE_integer("fine_tune_layers", m.fine_tune_layers,
                         "Top backbone layers fine_tuning unfreezes; 0: the "
                         "backbone's top block (vgg16: block5, its last 4 layers).", **fv)
    flags.DEFINE_string("init_from", None,
                        "fine_tuning: model_dir of the finished feature_extraction "
                        "run to start from. Its split (split.json) is used, and data "
                        "flags not given take that run's values.", **fv)
    # Training.
    flags.DEFINE_string("model_dir", None,
                        "Folder for every result of the run (created if missing).", **fv)
    flags.DEFINE_integer("epochs", None,
                         "Epochs to train (default: the stage preset: baseline 30, "
                         "augmented 50, feature_extraction 20, fine_tuning 20).", **fv)
    flags.DEFINE_float("learning_rate", None,
                       "Adam learning rate (default: the stage preset: 1e-3, 1e-3, "
                       "5e-3, 1e-4).", **fv)
    flags.DEFINE_enum("mixed_precision", t.mixed_precision, list(config_lib.PRECISIONS),
                      "Dtype policy: 'auto' is mixed_float16 on GPUs, mixed_bfloat16 "
                      "on TPUs, float32 on CPUs.", **fv)
    flags.DEFINE_enum("strategy", t.strategy, list(config_lib.STRATEGIES),
                      "tf.distribute strategy: 'auto' mirrors over several local "
                      "GPUs, else the default strategy.", **fv)
    flags.DEFINE_string("tpu", "", "TPU address for --strategy=tpu.", **fv)
    flags.DEFINE_enum("jit_compile", t.jit_compile, list(config_lib.JIT_CHOICES),
                      "XLA compilation of the training step.", **fv)
    flags.DEFINE_integer("verbose", t.verbose,
                         "Keras progress output: 0 silent, 1 progress bar, 2 one "
                         "line per epoch (best for batch-job logs).", **fv)
    flags.DEFINE_boolean("fast_features", t.fast_features,
                         "feature_extraction: run the frozen backbone once over the "
                         "data and train the head on the cached features (many times "
                         "faster per epoch). The head then trains WITHOUT augmentation "
                         "(a warning says so); the saved model.keras is still the full "
                         "model, augmentation block included for fine-tuning.", **fv)
    flags.DEFINE_float("worker_timeout_seconds", t.worker_timeout_seconds,
                       "--strategy=multi_worker: seconds another worker may not "
                       "answer before it counts as gone; this worker then stops "
                       "with exit code 75 (rerun every worker to resume). A "
                       "worker busy in a slow phase still answers.", **fv)


def config_from_flags(stage: str, flag_values=flags.FLAGS) -> config_lib.Config:
    """Builds the Config of ``stage`` from parsed flags (preset + overrides).

    For ``fine_tuning`` with ``--init_from``, every data flag not given on
    the command line first takes the value of that run (see
    :func:`inherit_data_flags`).
    """
    f = flag_values
    if stage == "fine_tuning" and f.init_from:
        inherit_data_flags(f.init_from, f)
    config = config_lib.for_stage(stage)
    d, m, t = config.data, config.model, config.train
    d.train_dir = f.train_dir or ""
    d.val_dir = f.val_dir or ""
    d.validation_split = f.validation_split
    d.class_names = tuple(f.class_names) if f.class_names else None
    d.image_size = config_lib.parse_image_size(f.image_size)
    d.batch_size = f.batch_size
    d.cache = f.cache
    d.seed = f.seed
    d.shuffle_buffer = f.shuffle_buffer
    d.max_pixels = f.max_pixels
    d.deterministic = f.deterministic
    d.train_tfrecords = f.train_tfrecords or ""
    d.val_tfrecords = f.val_tfrecords or ""
    d.tfds_name = f.tfds_name or ""
    d.tfds_data_dir = f.tfds_data_dir or ""
    d.train_split = f.train_split
    d.val_split = f.val_split
    d.dct_scaling = f.dct_scaling
    m.backbone = f.backbone
    m.backbone_alpha = f.backbone_alpha
    m.weights = f.weights
    m.head = f.head
    m.dropout = f.dropout
    m.fine_tune_layers = f.fine_tune_layers
    m.init_from = f.init_from or ""
    t.model_dir = f.model_dir or ""
    if f.epochs is not None:
        t.epochs = f.epochs
    if f.learning_rate is not None:
        t.learning_rate = f.learning_rate
    t.mixed_precision = f.mixed_precision
    t.strategy = f.strategy
    t.tpu = f.tpu
    t.jit_compile = f.jit_compile
    t.verbose = f.verbose
    # Only stage 3 has a frozen backbone to extract features with; run_pipeline
    # shares one config across stages, so the other stages ignore the flag.
    t.fast_features = f.fast_features
    t.worker_timeout_seconds = f.worker_timeout_seconds
    return config


def inherit_data_flags(init_dir: str, flag_values=flags.FLAGS) -> list:
    """Sets the data flags not given on the command line to those of ``init_dir``'s run.

    Fine-tuning validates on exactly the split of the run it starts from, so
    a user need not repeat that run's data flags; flags given explicitly keep
    their value (and ``train.run`` refuses one that would change the split).
    The flag values themselves change, so ``flags.txt`` records what the run
    uses. A missing or unreadable ``config.json`` changes nothing (the
    training run then says what ``--init_from`` must be).

    Returns:
      The names of the flags whose value was taken over.
    """
    try:
        data = rundir.read_config(init_dir).get("data") or {}
    except (OSError, ValueError, AttributeError):
        return []
    taken = []
    for field in dataclasses.fields(config_lib.DataConfig):
        name = field.name
        if name not in flag_values or flag_values[name].present or name not in data:
            continue
        value = data[name]
        if name == "image_size":
            value = ",".join(str(v) for v in value)
        elif name == "class_names":
            value = list(value) if value else None
        elif value == "" and flag_values[name].default is None:
            value = None
        if value == flag_values[name].value:
            continue
        setattr(flag_values, name, value)
        taken.append(name)
    if taken:
        logging.info("Data flags taken from --init_from %s: %s", init_dir,
                     " ".join(flag_values[n].serialize() or f"--{n}" for n in taken))
    return taken


def flagfile_text(flag_values=flags.FLAGS) -> str:
    """The run's flags as ``--flagfile`` text: catdog's and the script's own."""
    # Only catdog's own flags and the script's: flags other libraries define
    # at import time are not known to a fresh process reading the file.
    ours = []
    for module, module_flags in flag_values.flags_by_module_dict().items():
        if (module.startswith("catdog") or module == "__main__"
                or os.path.abspath(module) == os.path.abspath(sys.argv[0])):
            ours.extend(module_flags)
    lines = sorted({flag.serialize() for flag in ours
                    if flag.value is not None and flag.name not in ("flagfile", "undefok")})
    return "\n".join(line for line in lines if line) + "\n"


def write_flagfile(model_dir: str, flag_values=flags.FLAGS) -> str:
    """Writes the run's flags so ``--flagfile=model_dir/flags.txt`` repeats it."""
    path = os.path.join(model_dir, rundir.FLAGS_FILE)
    os.makedirs(model_dir, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        f.write(flagfile_text(flag_values))
    return path


def run_main(fn, *args, **kwargs) -> int:
    """Runs ``fn`` and maps failures to exit codes with a one-line message.

    ValueError / FileNotFoundError (bad flags or data: nothing was trained)
    exit with :data:`EXIT_USAGE` and no traceback; preemption (SIGTERM) and
    a lost worker of a multi-worker job with ``EXIT_PREEMPTED`` (75: rerun to
    resume); a model_dir held by a live run
    with ``EXIT_LOCKED`` (73); anything else with :data:`EXIT_FAILURE` and
    its traceback in the log.
    """
    try:
        fn(*args, **kwargs)
    except KeyboardInterrupt as e:
        print("interrupted", file=sys.stderr)
        return errors.exit_code_for(e)
    except Exception as e:  # pylint: disable=broad-except
        code = errors.exit_code_for(e)
        if isinstance(e, errors.TrainingPreempted):
            print(f"preempted: {e}. Rerun the same command to resume.", file=sys.stderr)
        elif code == EXIT_FAILURE:  # the job failed; say what and where
            traceback.print_exc()
            logging.error("failed: %s", e)
        else:
            print(f"error: {e}", file=sys.stderr)
        return code
    return EXIT_OK


def train_stage(stage: str, flag_values=flags.FLAGS) -> None:
    """The body of a stage script: flags -> config -> :func:`catdog.train.run`."""
    from catdog import train  # heavy import only when training
    config = config_from_flags(stage, flag_values)
    config.validate()
    # flags.txt is written by the run once accepted: a refused rerun leaves
    # the flags of the run the model_dir holds.
    train.run(config, extra_files={rundir.FLAGS_FILE: flagfile_text(flag_values)})


def refuse_positional(argv):
    """Usage-error exit code when a script got positional arguments, else None."""
    if len(argv) > 1:
        return usage_error(f"unexpected arguments {argv[1:]}; all settings are "
                           "--flags.")
    return None


def script_main(fn, *args):
    """Returns an absl ``main`` that refuses positional arguments and runs
    ``fn(*args)`` through :func:`run_main` (exit codes included)."""
    def main(argv):
        refused = refuse_positional(argv)
        return refused if refused is not None else run_main(fn, *args)
    return main


def stage_script_main(stage: str):
    """Returns an absl ``main`` that trains ``stage`` and exits with a code."""
    return script_main(train_stage, stage)


def usage_error(message: str) -> int:
    """Prints a one-line usage error (no traceback); returns :data:`EXIT_USAGE`."""
    print(f"{os.path.basename(sys.argv[0])}: error: {message}\n"
          "Run with --help for the flags.", file=sys.stderr)
    return EXIT_USAGE


def parse_flags(argv, flag_values=flags.FLAGS):
    """absl's flag parser, but an unknown or malformed flag exits with 2."""
    try:
        return flag_values(argv)
    except flags.Error as e:
        sys.exit(usage_error(str(e)))
