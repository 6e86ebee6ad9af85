"""The resume check: a backup in model_dir is resumed only by the same training.

Every commit of the backup records a fingerprint of the run: the settings
of :data:`RESUME_SETTINGS` the stage uses, the resolved dtype
policy, a digest of the split and its sizes. A rerun whose fingerprint
differs is refused (ValueError) before anything is written or trained,
with what changed; every worker of a multi-worker job decides the same.
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Optional

from absl import logging

from catdog import callbacks as callbacks_lib
from catdog import config as config_lib
from catdog import data as data_lib
from catdog import distribute
from catdog import fileio
from catdog import rundir
from catdog.control_settings import control_resume_fields


#: Settings that shape what a run learns. A rerun into a model_dir resumes
#: from its backup only with the same values (train.run checks before
#: training); which files are trained and validated on is checked through the
#: split itself, so the data may move. Model settings count only for the
#: stages that use them (run_pipeline shares one config across stages), the
#: augmentation strengths only with augmentation on. Not listed, so free to
#: change on a resume: epochs (a larger value trains the remaining epochs;
#: except with --lr_schedule=cosine, which decays over them), where data and
#: results live (train_dir, val_dir, the TFRecord globs, the CSV files,
#: tfds_data_dir, cache, data_service, model_dir), deterministic, verbose, strategy, tpu,
#: jit_compile, early_stopping_patience (when to stop, not what a step
#: learns), top_k (a metric) and steps_per_execution. The parameters of a
#: schedule count with that schedule, momentum with sgd. The dtype policy is
#: checked as resolved, not as asked.
RESUME_SETTINGS = {
    "data": ("image_size", "batch_size", "seed", "shuffle_buffer", "dct_scaling",
             "exif_orientation", "resize_mode", "interpolation", "color_mode"),
    "train": ("learning_rate", "class_weight", "mixup", "cutmix", "label_smoothing",
              "lr_schedule", "warmup_epochs", "monitor", "optimizer", "weight_decay"),
    "model": {
        "baseline": ("stage", "dropout", "augment"),
        "augmented": ("stage", "dropout", "augment"),
        "feature_extraction": ("stage", "backbone", "backbone_alpha", "weights", "head",
                               "dropout", "augment"),
        # The rest of the model comes with init_from's model.keras.
        "fine_tuning": ("stage", "backbone", "backbone_alpha", "head",
                        "fine_tune_layers", "init_from"),
    },
}
# Always in the fingerprint with the block on (a backup that lacks a setting,
# from before it existed, still resumes: a missing setting stands for its
# default, see resume_problem).
_AUGMENTATION_SETTINGS = (config_lib.AUGMENTATION_SETTINGS[:3]
                          + config_lib.AUGMENTATION_SETTINGS[10:])


def resume_settings(config) -> dict:
    """``{field: value}`` of :data:`RESUME_SETTINGS` for ``config``'s stage (JSON-ready)."""
    record = config.to_dict()
    out = {name: record["data"][name] for name in RESUME_SETTINGS["data"]}
    out.update((name, record["train"][name]) for name in RESUME_SETTINGS["train"])
    model = RESUME_SETTINGS["model"].get(config.stage, ())
    if "augment" in model and config.model.augment:
        model += _AUGMENTATION_SETTINGS
        # Later settings count only when set: a backup made before they
        # existed (with their defaults) still resumes.
        defaults = config_lib.ModelConfig()
        model += tuple(name for name in config_lib.AUGMENTATION_SETTINGS[3:10]
                       if getattr(config.model, name) != getattr(defaults, name))
    out.update((name, record["model"][name]) for name in model)
    out.update((name, record["train"][name]) for name in control_resume_fields(config.train))
    if config.stage == "feature_extraction":
        # Only stage 3 trains differently with fast features (the others ignore it).
        out["fast_features"] = bool(config.train.fast_features)
    return out


def resume_problem(model_dir: str, fingerprint: dict, split: dict) -> Optional[str]:
    """Why ``model_dir/backup`` cannot be resumed by this run, or None if it can."""
    backup_dir = os.path.join(model_dir, rundir.BACKUP_DIR)
    metadata = callbacks_lib.read_backup_metadata(backup_dir)
    if metadata is None:
        return None
    old = metadata.get("fingerprint")
    if not isinstance(old, dict):
        logging.warning("%s was written without a record of its settings and split; "
                        "resuming it unchecked.", backup_dir)
        return None
    changes, data_changed = [], False
    before, now = old.get("settings", {}), fingerprint["settings"]
    defaults = _setting_defaults()
    for key in sorted(set(before) | set(now)):
        # A setting recorded on one side only (recorded when set, or newer
        # than the backup) stands for its default on the other.
        if key not in defaults and not (key in before and key in now):
            continue
        was, is_now = before.get(key, defaults.get(key)), now.get(key, defaults.get(key))
        if was != is_now:
            changes.append(f"{key} {json.dumps(was)} -> {json.dumps(is_now)}")
    if old.get("split_digest") != fingerprint["split_digest"]:
        previous = fileio.read_json(os.path.join(model_dir, rundir.SPLIT_FILE))
        if previous and data_lib.split_digest(previous) == old.get("split_digest"):
            what = data_lib.describe_split_change(previous, split)
        else:
            sizes = old.get("split_sizes", {})
            what = (f"training {sizes.get('train')} -> {len(split['train'])}, "
                    f"validation {sizes.get('val')} -> {len(split['val'])} inputs")
        changes.append(f"the data: {what}")
        data_changed = True
    if not changes:
        return None
    epochs = int(metadata.get("epoch", 0))
    if data_changed:
        # The earlier command would now read the changed data too.
        going_on = (f"the earlier run can only be resumed on the inputs it trained on "
                    f"(listed in {os.path.join(model_dir, rundir.SPLIT_FILE)}).")
    else:
        earlier = os.path.join(model_dir, rundir.FLAGS_FILE)
        earlier = f" (--flagfile={earlier})" if os.path.isfile(earlier) else ""
        going_on = f"rerunning the earlier command{earlier} resumes the earlier run."
    return (f"{model_dir} holds a backup of {epochs} epoch(s) trained with other settings "
            f"or data, and resuming it would mix two trainings. Changed since: "
            f"{'; '.join(changes)}. Either pass a new --model_dir for this run, or "
            f"delete {backup_dir}/ to train from scratch in this model_dir; {going_on}")


def _setting_defaults() -> dict:
    """``{field: default}`` of every section's settings, as config.json records them."""
    record = config_lib.Config().to_dict()
    out = {}
    for section in ("data", "model", "train"):
        out.update(record[section])
    return out


def check_resume(config, split: dict, policy: str, strategy):
    """Refuses (ValueError) to resume a backup of another training.

    Returns:
      ``(fingerprint, resuming)``: what the backup records for this run, and
      whether a backup exists to resume from.

    Every worker of a multi-worker job decides the same: one that finds a
    mismatch stops them all.
    """
    settings = resume_settings(config)
    settings["dtype_policy"] = policy
    fingerprint = {
        "settings": settings,
        "settings_digest": hashlib.sha256(
            json.dumps(settings, sort_keys=True).encode("utf-8")).hexdigest(),
        "split_digest": data_lib.split_digest(split),
        "split_sizes": {"train": len(split["train"]), "val": len(split["val"])},
    }
    try:
        problem = resume_problem(config.train.model_dir, fingerprint, split)
    except ValueError as e:  # a corrupt backup: still agree before stopping
        problem = str(e)
    if distribute.any_worker(strategy, problem is not None) and problem is None:
        problem = ("another worker of this job found that the backup in "
                   f"{config.train.model_dir} belongs to another training (its log "
                   "says what changed); stopping before training.")
    if problem:
        raise ValueError(problem)
    backup_dir = os.path.join(config.train.model_dir, rundir.BACKUP_DIR)
    return fingerprint, callbacks_lib.read_backup_metadata(backup_dir) is not None
