r"""Draws what training-time augmentation does to your images, before training.

Example:
  python scripts/show_augmentation.py --data_dir=training_set --out=augmentation.png
  python scripts/show_augmentation.py --data_dir=training_set --model_dir=runs/augmented

Each row is one image: the original (decoded and resized as in training),
then --n_variants random augmentations by the same augmentation block the
model trains with; with --mixup or --cutmix, a last column shows the images
mixed as one training batch, each with the share of its own image. With
--model_dir, the image size and augmentation settings come from that run's
config.json; flags given explicitly win.

Exit status: 0 done, 1 unexpected failure, 2 usage error.
"""

import json
import os
import sys

from absl import app
from absl import flags

from catdog import cli
from catdog import config as config_lib
from catdog import options
from catdog import rundir

_D = config_lib.DataConfig()

_DATA_DIR = flags.DEFINE_string(
    "data_dir", None,
    "Folder of images (searched recursively, e.g. training_set/ with cats/ and "
    "dogs/) or one image file; --n_images are picked across it.")
_OUT = flags.DEFINE_string("out", "augmentation.png", "PNG file to write.")
_MODEL_DIR = flags.DEFINE_string(
    "model_dir", None,
    "Optional training run folder: take --image_size and the augmentation "
    "settings (--flip, --rotation, --zoom, ...) from its config.json (flags "
    "given explicitly still win).")
_IMAGE_SIZE = flags.DEFINE_string(
    "image_size", f"{_D.image_size[0]},{_D.image_size[1]}",
    "Image size after resizing: 'SIZE' or 'HEIGHT,WIDTH'.")
# --flip, --rotation, --zoom, ..., --mixup, --cutmix with the training scripts'
# help and checks.
_MIXING = ("mixup", "cutmix")  # TrainConfig: they mix batches in tf.data
for _spec in options.flag_specs(config_lib.Config()):
    if _spec.field in config_lib.AUGMENTATION_SETTINGS + _MIXING:
        if _spec.kind == "enum":
            flags.DEFINE_enum(_spec.flag, _spec.flag_default, list(_spec.choices), _spec.help)
        else:
            getattr(flags, f"DEFINE_{_spec.kind}")(_spec.flag, _spec.flag_default, _spec.help)
_SEED = flags.DEFINE_integer("seed", _D.seed, "Seed: the same picture on every run.")
_N_IMAGES = flags.DEFINE_integer("n_images", 4, "Images (rows) to show.")
_N_VARIANTS = flags.DEFINE_integer("n_variants", 6,
                                   "Augmented versions of each image (columns).")


def _settings():
    """Image size and augmentation settings: flags, or the run's config.json."""
    values = {"image_size": config_lib.parse_image_size(_IMAGE_SIZE.value)}
    values.update((name, flags.FLAGS[name].value)
                  for name in config_lib.AUGMENTATION_SETTINGS + _MIXING)
    if _MODEL_DIR.value:
        path = os.path.join(_MODEL_DIR.value, rundir.CONFIG_FILE)
        if not os.path.isfile(path):
            raise FileNotFoundError(
                f"`--model_dir` {_MODEL_DIR.value!r} has no {rundir.CONFIG_FILE}; pass the "
                "folder of a training run, or leave --model_dir out.")
        with open(path, encoding="utf-8") as f:
            run = config_lib.Config.from_dict(
                {k: v for k, v in json.load(f).items() if k in ("data", "model", "train")})
        from_run = {"image_size": tuple(run.data.image_size)}
        from_run.update((name, getattr(run.model, name))
                        for name in config_lib.AUGMENTATION_SETTINGS)
        from_run.update((name, getattr(run.train, name)) for name in _MIXING)
        for name, value in from_run.items():
            if not flags.FLAGS[name].present:
                values[name] = value
        if not run.model.augment:
            print(f"note: the {run.model.stage} model in {_MODEL_DIR.value} does not "
                  "augment; showing its augmentation settings anyway.", file=sys.stderr)
    # The config's own checks, so messages match the training scripts'.
    check = config_lib.Config()
    check.data.image_size = values["image_size"]
    for name in config_lib.AUGMENTATION_SETTINGS:
        setattr(check.model, name, values[name])
    for name in _MIXING:
        setattr(check.train, name, values[name])
    check.train.model_dir = "-"  # only the image and augmentation values matter
    check.validate()
    return values


def _show():
    if not _DATA_DIR.value:
        raise ValueError("`--data_dir` is required: a folder of images or an image file.")
    if not os.path.exists(_DATA_DIR.value):
        raise FileNotFoundError(f"`--data_dir` {_DATA_DIR.value!r} does not exist.")
    if _N_IMAGES.value < 1 or _N_VARIANTS.value < 1:
        raise ValueError("`--n_images` and `--n_variants` must be at least 1. "
                         f"Received: n_images={_N_IMAGES.value}, "
                         f"n_variants={_N_VARIANTS.value}")
    values = _settings()
    from catdog import figures  # TensorFlow loads only after the flags are fine

    path = figures.augmentation_grid(
        _DATA_DIR.value, _OUT.value, image_size=values["image_size"],
        n_images=_N_IMAGES.value, n_variants=_N_VARIANTS.value, seed=_SEED.value,
        **{name: values[name] for name in config_lib.AUGMENTATION_SETTINGS + _MIXING})
    print(f"Wrote {path}")


if __name__ == "__main__":
    app.run(cli.script_main(_show), flags_parser=cli.parse_flags)
