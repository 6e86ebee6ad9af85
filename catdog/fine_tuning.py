"""Fine-tuning's start: the stage-3 run it continues, and the settings it takes over.

Stage 4 starts from a finished feature_extraction run (``--init_from``):
it takes that run's image size, backbone and head, and validates on
exactly that run's split (its ``split.json``). A data setting that would
give another split is refused before anything is built, because validation
accuracy would then be measured on images stage 3 trained on.
"""

from __future__ import annotations

import json
import os

from absl import logging

from catdog import config as config_lib
from catdog import rundir


def resolve_fine_tuning(config: config_lib.Config):
    """Takes image size, backbone, head and the split from the stage-3 run it starts from.

    Returns:
      ``(init, split)``: the stage-3 ``config.json`` and ``split.json``.

    Raises:
      ValueError: ``init_from`` is not a finished feature_extraction run, or
        a data setting of ``config`` would give another split than its own.
    """
    init_dir = config.model.init_from
    path = os.path.join(init_dir, rundir.CONFIG_FILE)
    if not os.path.isfile(os.path.join(init_dir, rundir.MODEL_FILE)) or not os.path.isfile(path):
        raise ValueError(
            f"`--init_from` must be the model_dir of a finished feature_extraction "
            f"run (with {rundir.MODEL_FILE} and {rundir.CONFIG_FILE}). Received: init_from={init_dir!r}")
    with open(path, encoding="utf-8") as f:
        init = json.load(f)
    init_cfg = config_lib.Config.from_dict(init)
    if init_cfg.model.stage not in ("feature_extraction", "fine_tuning"):
        raise ValueError(
            f"`--init_from` {init_dir!r} holds a {init_cfg.model.stage!r} model; "
            "fine-tuning starts from a feature_extraction run.")
    require_same_split_settings(config.data, init_cfg.data,
                                 init.get("class_names"), init_dir)
    split_path = os.path.join(init_dir, rundir.SPLIT_FILE)
    if not os.path.isfile(split_path):
        raise ValueError(
            f"`--init_from` {init_dir!r} has no {rundir.SPLIT_FILE} (it was trained by an "
            "earlier catdog), so fine-tuning cannot validate on exactly its split. "
            "Train feature_extraction again with this catdog.")
    with open(split_path, encoding="utf-8") as f:
        split = json.load(f)
    m = config.model
    for field in ("backbone", "backbone_alpha", "head"):
        setattr(m, field, getattr(init_cfg.model, field))
    if tuple(config.data.image_size) != tuple(init_cfg.data.image_size):
        logging.warning("Fine-tuning uses the image size of %s: %s (not %s).",
                        init_dir, init_cfg.data.image_size, config.data.image_size)
        config.data.image_size = tuple(init_cfg.data.image_size)
    return init, split


def require_same_split_settings(data, init_data, init_class_names, init_dir) -> None:
    """Refuses data settings that would not give the split of the init_from run."""
    def same(field):
        ours, theirs = getattr(data, field), getattr(init_data, field)
        if field == "class_names":
            # An explicit list equal to the classes the init run resolved is the same.
            return (tuple(ours or ()) == tuple(theirs or ()) or
                    (ours is not None and list(ours) == list(init_class_names or [])))
        if field in ("train_dir", "val_dir", "train_csv", "val_csv", "image_dir") \
                and ours and theirs:
            return os.path.normpath(ours) == os.path.normpath(theirs)
        return ours == theirs

    differ = [f for f in config_lib.split_fields(init_data) if not same(f)]
    if differ:
        given = ", ".join(f"`--{f}` {getattr(data, f)!r} (there: {getattr(init_data, f)!r})"
                          for f in differ)
        raise ValueError(
            f"Fine-tuning validates on exactly the split of --init_from {init_dir!r}, "
            f"but {given} would give another split, and validation accuracy would be "
            "measured on images that run trained on. Leave these flags out (they are "
            "then taken from that run) or give its values.")
