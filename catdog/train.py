"""Training one stage: data, strategy, precision, compile, fit, artifacts.

:func:`run` is the library entry point every stage script calls. It takes a
:class:`catdog.config.Config` and writes into ``config.train.model_dir``:

- ``config.json``: every setting, class names and library versions;
- ``history.csv``: one row per epoch with every metric;
- ``model.keras``: the best epoch by validation accuracy;
- ``logs/``: TensorBoard logs;
- ``learning_curves.png``: train/validation accuracy and loss;
- ``metrics.json``: the summary a scheduler or a comparison reads;
- ``backup/``: the last completed epoch, from which a rerun resumes.

Only the chief of a multi-worker job writes these; other workers write into
a private scratch folder that is removed at the end.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import os
import platform
import sys
import time
from typing import Optional

from absl import logging
import keras
import numpy as np
import tensorflow as tf

import catdog
from catdog import config as config_lib
from catdog import data as data_lib
from catdog import distribute
from catdog import models
from catdog import plots
from catdog import precision
from catdog import resilience

CONFIG_FILE = "config.json"
HISTORY_FILE = "history.csv"
MODEL_FILE = "model.keras"
METRICS_FILE = "metrics.json"
CURVES_FILE = "learning_curves.png"
LOGS_DIR = "logs"
BACKUP_DIR = "backup"


def versions() -> dict:
    """Versions of the libraries a result depends on."""
    import absl
    out = {"catdog": catdog.__version__, "python": platform.python_version(),
           "tensorflow": tf.__version__, "keras": keras.__version__,
           "numpy": np.__version__}
    try:
        import tensorflow_datasets as tfds
        out["tensorflow_datasets"] = tfds.__version__
    except Exception:  # optional at run time
        pass
    out["absl"] = getattr(absl, "__version__", "")
    return out


def write_json(path: str, obj) -> None:
    """Writes JSON atomically (temp file + rename), so readers never see half a file."""
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(obj, f, indent=2, ensure_ascii=False, default=_json_default)
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        # A failed write leaves the previous file and no stray temporary.
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def _json_default(o):
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, tuple):
        return list(o)
    raise TypeError(f"not JSON serializable: {type(o).__name__}")


def read_history(path: str) -> list:
    """Reads ``history.csv`` into a list of dicts with float values."""
    if not os.path.exists(path):
        return []
    with open(path, newline="", encoding="utf-8") as f:
        rows = []
        for row in csv.DictReader(f):
            rows.append({k: (int(v) if k == "epoch" else float(v))
                         for k, v in row.items() if v not in (None, "")})
        return rows


def summarize_history(rows: list) -> dict:
    """Best and final validation accuracy and the best epoch (1-based)."""
    if not rows:
        return {"best_val_accuracy": None, "best_epoch": None,
                "final_val_accuracy": None, "epochs_completed": 0}
    accs = [r.get("val_accuracy", float("nan")) for r in rows]
    best = int(np.nanargmax(accs)) if not all(np.isnan(accs)) else len(rows) - 1
    return {"best_val_accuracy": float(accs[best]),
            "best_epoch": int(rows[best]["epoch"]) + 1,
            "final_val_accuracy": float(accs[-1]),
            "epochs_completed": len(rows)}


def _resolve_fine_tuning(config: config_lib.Config) -> dict:
    """Takes image size, backbone and head from the stage-3 run it starts from."""
    init_dir = config.model.init_from
    path = os.path.join(init_dir, CONFIG_FILE)
    if not os.path.isfile(os.path.join(init_dir, MODEL_FILE)) or not os.path.isfile(path):
        raise ValueError(
            f"`--init_from` must be the model_dir of a finished feature_extraction "
            f"run (with {MODEL_FILE} and {CONFIG_FILE}). Received: init_from={init_dir!r}")
    with open(path, encoding="utf-8") as f:
        init = json.load(f)
    init_cfg = config_lib.Config.from_dict(init)
    if init_cfg.model.stage not in ("feature_extraction", "fine_tuning"):
        raise ValueError(
            f"`--init_from` {init_dir!r} holds a {init_cfg.model.stage!r} model; "
            "fine-tuning starts from a feature_extraction run.")
    m = config.model
    for field in ("backbone", "backbone_alpha", "head"):
        setattr(m, field, getattr(init_cfg.model, field))
    if tuple(config.data.image_size) != tuple(init_cfg.data.image_size):
        logging.warning("Fine-tuning uses the image size of %s: %s (not %s).",
                        init_dir, init_cfg.data.image_size, config.data.image_size)
        config.data.image_size = tuple(init_cfg.data.image_size)
    return init


def _shard_policies(data_config):
    """(train, val) auto-shard policies for a multi-worker job."""
    if data_config.train_tfrecords:
        cluster = distribute.parse_tf_config(os.environ.get("TF_CONFIG", "")).get("cluster", {})
        workers = sum(len(cluster.get(k, [])) for k in ("chief", "worker")) or 1
        return tuple(
            distribute.shard_policy("tfrecord", len(tf.io.gfile.glob(pattern)), workers)
            for pattern in (data_config.train_tfrecords, data_config.val_tfrecords))
    source = "tfds" if data_config.tfds_name else "folder"
    return distribute.shard_policy(source), distribute.shard_policy(source)


@dataclasses.dataclass
class RunResult:
    """What :func:`run` returns: the summary written to ``metrics.json`` and the model."""

    metrics: dict
    model: Optional[keras.Model] = None


def run(config: config_lib.Config, progress: bool = True,
        weights_note: str = "") -> RunResult:
    """Trains one stage end to end and writes its artifacts.

    Rerunning the same config into the same ``model_dir`` resumes from the
    last completed epoch (a finished run trains nothing more); a second live
    run into the same ``model_dir`` is refused.

    Args:
      config: the run's settings; ``config.train.model_dir`` receives results.
      progress: show progress of the file check (Keras' own output follows
        ``config.train.verbose``).
      weights_note: recorded in ``metrics.json`` (e.g. why a backbone runs
        without pretrained weights).

    Returns:
      A :class:`RunResult`.

    Raises:
      ValueError: bad settings or data, before any training.
      catdog.models.WeightsError: backbone weights cannot be obtained.
      catdog.resilience.ModelDirLockedError: another live run holds model_dir.
      catdog.resilience.TrainingPreempted: SIGTERM stopped training; rerun
        the same command to resume.
      catdog.resilience.WorkerLostError: another worker of a multi-worker
        job is gone; rerun every worker to resume.
    """
    start = time.time()
    config = config_lib.Config.from_dict(config.to_dict())  # private copy
    config.validate()
    # The strategy comes first: a multi-worker or TPU strategy must be set up
    # before any other TensorFlow op of the process.
    strategy = distribute.build_strategy(config.train.strategy, tpu=config.train.tpu or None)
    distribute.apply_keras_multiworker_fix(strategy)
    distribute.global_batch_check(config.data.batch_size, strategy)
    # From here to the end of fit: a worker of a multi-worker job that is gone
    # stops this one within the timeout (exit 75), in whatever phase.
    watchdog = resilience.WorkerWatchdog(
        strategy, config.train.worker_timeout_seconds).start()
    init = _resolve_fine_tuning(config) if config.stage == "fine_tuning" else None
    model_dir = config.train.model_dir
    os.makedirs(model_dir, exist_ok=True)

    keras.utils.set_random_seed(config.data.seed)
    index = data_lib.index_source(config.data, progress=progress)
    if init is not None and list(init.get("class_names", [])) != list(index.class_names):
        raise ValueError(
            f"Classes {index.class_names} differ from those of --init_from "
            f"{config.model.init_from!r}: {init.get('class_names')}.")
    train_ds, val_ds, index = data_lib.build_datasets(config.data, index)
    if distribute.is_multi_worker(strategy):
        # Explicit input sharding: TFRecord shards by file (each worker reads
        # its own files), folders and TFDS by element.
        policies = _shard_policies(config.data)
        train_ds = distribute.with_shard_policy(train_ds, policies[0])
        val_ds = distribute.with_shard_policy(val_ds, policies[1])
    policy = precision.resolve_policy(config.train.mixed_precision, strategy)
    chief = distribute.is_chief(strategy)

    with watchdog, resilience.ModelDirLock(model_dir, task=distribute.task_name(strategy)):
        out = distribute.artifact_dir(model_dir, strategy)
        try:
            result = _fit_and_write(config, index, train_ds, val_ds, strategy, policy,
                                    out, start, weights_note, watchdog)
        finally:
            distribute.cleanup_artifact_dir(out, model_dir)
    if chief:
        logging.info("%s done: best val_accuracy %.4f at epoch %s; results in %s",
                     config.stage, result.metrics["best_val_accuracy"] or float("nan"),
                     result.metrics["best_epoch"], model_dir)
    return result


def _fit_and_write(config, index, train_ds, val_ds, strategy, policy, out,
                   start, weights_note, watchdog) -> RunResult:
    """Builds, compiles and fits under the strategy; writes artifacts into ``out``.

    ``out`` is ``model_dir`` on the chief and a private scratch folder on
    other workers (every worker saves, since saving may involve collectives;
    only the chief's files are kept).
    """
    model_dir = config.train.model_dir
    replicas = strategy.num_replicas_in_sync
    record = config.to_dict()
    record.update(stage=config.stage, class_names=index.class_names,
                  versions=versions(), dtype_policy=policy,
                  strategy=type(strategy).__name__, replicas=replicas,
                  argv=list(sys.argv))
    write_json(os.path.join(out, CONFIG_FILE), record)

    gpu = bool(tf.config.list_physical_devices("GPU"))
    with precision.policy_scope(policy), strategy.scope():
        if config.stage == "fine_tuning":
            model = models.load_model(config.model.init_from)
            unfrozen = models.unfreeze_top(model, config.model.backbone,
                                           config.model.fine_tune_layers)
            logging.info("Fine-tuning: %d backbone layers unfrozen.", unfrozen)
        else:
            model = models.build_model(config, index.num_classes)
        train_model, jit, xla_note = models.xla_training_model(
            model, config.train.jit_compile, gpu, replicas)
        models.compile_model(train_model, index.num_classes,
                             config.train.learning_rate, jit_compile=jit)
    logging.info("%s", xla_note)
    callbacks = [
        # First, so it stops before any other callback sees a partial epoch.
        resilience.PreemptionCallback(strategy),
        # Stops watching the other workers when fit ends (the last collective).
        watchdog,
        resilience.BestModelCheckpoint(os.path.join(out, MODEL_FILE),
                                       monitor="val_accuracy", mode="max",
                                       model_to_save=model),
        resilience.ResumableCSVLogger(os.path.join(out, HISTORY_FILE)),
        keras.callbacks.TensorBoard(os.path.join(out, LOGS_DIR)),
        # Last: writing the backup is the commit point of an epoch.
        resilience.ResumableBackupAndRestore(os.path.join(model_dir, BACKUP_DIR),
                                             write_dir=os.path.join(out, BACKUP_DIR)),
    ]
    if config.train.fast_features and config.stage == "feature_extraction":
        # catdog.features: the frozen backbone runs once over the images
        # (training split unshuffled and complete), the head trains on the
        # cached features; model.keras is still the full model (the best
        # checkpoint saves `model`, which shares the head's layers).
        from catdog import features  # pylint: disable=import-outside-toplevel
        features.fit_head_on_features(
            model, data_lib.build_split(config.data, index, "train", training=False),
            val_ds, config, index.num_classes, callbacks, strategy)
    else:
        train_model.fit(train_ds, validation_data=val_ds, epochs=config.train.epochs,
                        callbacks=callbacks, verbose=config.train.verbose,
                        shuffle=False)  # the dataset shuffles itself

    rows = read_history(os.path.join(out, HISTORY_FILE))
    metrics = {
        "stage": config.stage,
        **summarize_history(rows),
        "epochs_requested": config.train.epochs,
        "train_examples": len(index.train),
        "val_examples": len(index.val),
        "class_names": index.class_names,
        "skipped_files": index.skipped,
        "seconds": round(time.time() - start, 2),
        "backbone": config.model.backbone if config.stage in (
            "feature_extraction", "fine_tuning") else None,
        "weights": config.model.weights if config.stage == "feature_extraction" else (
            f"from {config.model.init_from}" if config.stage == "fine_tuning" else None),
        "weights_note": weights_note,
        "trainable_params": models.count_params(model.trainable_weights),
        "total_params": models.count_params(model.weights),
        "dtype_policy": policy,
        "strategy": type(strategy).__name__,
        "replicas": replicas,
        "xla": xla_note,
        "final": rows[-1] if rows else {},
    }
    write_json(os.path.join(out, METRICS_FILE), metrics)
    plots.learning_curves(rows, os.path.join(out, CURVES_FILE),
                          title=f"{config.stage} — {model_dir}")
    return RunResult(metrics, model)
