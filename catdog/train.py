"""Training one stage: data, strategy, precision, compile, fit, artifacts.

:func:`run` is the library entry point every stage script calls. It takes a
:class:`catdog.config.Config` and writes into ``config.train.model_dir``:

- ``config.json``: every setting, class names and library versions;
- ``split.json``: the exact training and validation inputs (see
  :func:`catdog.data.split_record`);
- ``history.csv``: one row per epoch with every metric and the learning rate;
- ``model.keras``: the best epoch by ``--monitor`` (validation accuracy by default);
- ``logs/``: TensorBoard logs;
- ``learning_curves.png``: train/validation accuracy and loss;
- ``metrics.json``: the summary a scheduler or a comparison reads;
- ``backup/``: the last completed epoch, from which a rerun resumes.

Only the chief of a multi-worker job writes these; other workers write into
a private scratch folder that is removed at the end.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import time
from typing import Optional

from absl import logging
import keras
import tensorflow as tf

from catdog import augment
from catdog import batching
from catdog import callbacks as callbacks_lib
from catdog import config as config_lib
from catdog import controls
from catdog import data as data_lib
from catdog import distribute
from catdog import figures
from catdog import fileio
from catdog import fine_tuning
from catdog import fit_wrappers
from catdog import keras_patches
from catdog import models
from catdog import precision
from catdog import resume_check
from catdog import rundir
from catdog import tfdata
from catdog import watchdog as watchdog_lib


def resolve_class_weight(config: config_lib.Config, index) -> Optional[dict]:
    """``{class name: weight}`` of ``--class_weight`` for ``index``, or ``None``.

    ``balanced`` counts the training split's labels, which only folder and
    CSV inputs list; TFRecord and TFDS inputs take explicit weights.
    """
    value = config.train.class_weight
    counts = None
    if isinstance(index.train, batching.SplitFiles):
        counts = [index.train.labels.count(i) for i in range(index.num_classes)]
    elif str(value).strip().lower() == "balanced":
        names = ",".join(f"{name}=1" for name in index.class_names)
        raise ValueError(
            f"`--class_weight` 'balanced' needs the class counts of the training "
            f"split, which catdog knows for --train_dir and --train_csv inputs only; give each "
            f"class its weight instead, as in --class_weight={names} with "
            f"your weights. "
            f"Received: class_weight={value!r}")
    return config_lib.class_weights(value, index.class_names, counts)


def with_class_weights(dataset: tf.data.Dataset, weights) -> tf.data.Dataset:
    """``(images, labels)`` batches -> ``(images, labels, weight of each label)``.

    What ``fit(class_weight=...)`` does, for the inputs Keras cannot map
    itself (a multi-worker job's distributed datasets are built per worker).
    Labels are catdog's encoding: float ``(batch, 1)`` for two classes,
    int ``(batch,)`` for more.
    """
    table = tf.constant(list(weights), tf.float32)

    def add(images, labels):
        classes = labels
        if labels.shape.rank == 2 and labels.shape[-1] != 1:  # one-hot (label smoothing)
            classes = tf.argmax(labels, axis=-1)
        elif labels.shape.rank == 2:
            classes = tf.squeeze(labels, axis=-1)
        return images, labels, tf.gather(table, tf.cast(tf.round(classes), tf.int32))

    return dataset.map(add, num_parallel_calls=tfdata.parallel_calls())


def _fit_inputs(config: config_lib.Config, index, strategy, weights=None):
    """The (train, validation) inputs ``fit`` reads under ``strategy``.

    Plain datasets, except in a multi-worker job: there each worker builds,
    reads and decodes only its own share of each split
    (``distribute_datasets_from_function`` hands catdog the worker's
    ``InputContext``; the data is sharded before decoding and tf.distribute
    does not shard again), so an epoch uses every training example once
    across the workers and validation evaluates every example once.
    """
    if not distribute.is_multi_worker(strategy) or (
            config.train.fast_features and config.stage == "feature_extraction"):
        # Fast feature extraction reads both splits itself (fast_features.py).
        train_ds, val_ds, _ = data_lib.build_datasets(config.data, index)
        return (_training_batches(train_ds, config, index.num_classes),
                _validation_batches(val_ds, config, index.num_classes))
    data_lib.check_batch_size(config.data, index)

    def split_fn(split, training):
        def build(context):
            ds = data_lib.build_split(config.data, index, split, training,
                                      input_context=context)
            if not training:
                return _validation_batches(ds, config, index.num_classes)
            # Only training is weighted; validation metrics stay plain.
            ds = _training_batches(ds, config, index.num_classes, context)
            return with_class_weights(ds, weights) if weights else ds
        return build

    return (strategy.distribute_datasets_from_function(split_fn("train", True)),
            strategy.distribute_datasets_from_function(split_fn("val", False)))


def soft_labels(config: config_lib.Config) -> bool:
    """Whether ``--mixup``, ``--cutmix`` or ``--label_smoothing`` make training labels soft."""
    t = config.train
    return bool(t.mixup or t.cutmix or t.label_smoothing)


def _training_batches(ds, config, num_classes: int, input_context=None):
    """The training batches, mixed by ``--mixup`` / ``--cutmix`` and smoothed, if set.

    Every worker of a multi-worker job mixes with its own seed, so workers
    holding alike batches do not mix them alike. Smoothing is Keras' own
    (``y * (1 - s) + s / classes``, two classes for a binary label), done on
    the labels so that validation keeps plain labels and a plain ``val_loss``.
    """
    t = config.train
    if t.mixup or t.cutmix:
        worker = input_context.input_pipeline_id if input_context is not None else 0
        ds = augment.mix_batches(ds, num_classes, mixup=t.mixup, cutmix=t.cutmix,
                                 seed=config.data.seed + augment.MIX_SEED_OFFSET + 10 * worker)
    elif t.label_smoothing:
        ds = ds.map(lambda x, y: (x, augment.soft_label_encoding(y, num_classes)),
                    num_parallel_calls=tfdata.parallel_calls())
    if t.label_smoothing:
        s, k = float(t.label_smoothing), 2 if num_classes == 2 else num_classes
        ds = ds.map(lambda x, y: (x, y * (1.0 - s) + s / k),
                    num_parallel_calls=tfdata.parallel_calls())
    return ds


def _validation_batches(ds, config, num_classes: int):
    """Validation batches, hard labels always; one-hot when the loss takes soft labels."""
    if not soft_labels(config) or num_classes == 2:
        return ds
    return ds.map(lambda images, labels: (images, augment.soft_label_encoding(
        labels, num_classes)), num_parallel_calls=tfdata.parallel_calls())


@dataclasses.dataclass
class RunResult:
    """What :func:`run` returns: the summary written to ``metrics.json`` and the model."""

    metrics: dict
    model: Optional[keras.Model] = None


def run(config: config_lib.Config, progress: bool = True,
        weights_note: str = "", extra_files: Optional[dict] = None) -> RunResult:
    """Trains one stage end to end and writes its artifacts.

    Rerunning the same config into the same ``model_dir`` resumes from the
    last completed epoch (a finished run trains nothing more; a larger
    ``epochs`` trains the remaining ones). A rerun whose split or training
    settings (:data:`catdog.resume_check.RESUME_SETTINGS`) differ from the backup's
    is refused before training, as is a second live run into the same
    ``model_dir``. Fine-tuning uses exactly the split of its ``init_from``
    run (its ``split.json``).

    Args:
      config: the run's settings; ``config.train.model_dir`` receives results.
      progress: show progress of the file check (Keras' own output follows
        ``config.train.verbose``).
      weights_note: recorded in ``metrics.json`` (e.g. why a backbone runs
        without pretrained weights).
      extra_files: ``{file name: text}`` written into ``model_dir`` with
        ``config.json`` once the run is accepted (the scripts' ``flags.txt``).

    Returns:
      A :class:`RunResult`.

    Raises:
      ValueError: bad settings or data, or a backup of another training in
        ``model_dir``, before any training.
      catdog.models.WeightsError: backbone weights cannot be obtained.
      catdog.errors.ModelDirLockedError: another live run holds model_dir.
      catdog.errors.TrainingPreempted: SIGTERM stopped training; rerun
        the same command to resume.
      catdog.errors.WorkerLostError: another worker of a multi-worker
        job is gone; rerun every worker to resume.
    """
    start = time.time()
    config = config_lib.Config.from_dict(config.to_dict())  # private copy
    config.validate()
    # The strategy comes first: a multi-worker or TPU strategy must be set up
    # before any other TensorFlow op of the process.
    strategy = distribute.build_strategy(config.train.strategy, tpu=config.train.tpu or None)
    keras_patches.apply_keras_multiworker_fix(strategy)
    distribute.global_batch_check(config.data.batch_size, strategy)
    distribute.steps_per_execution_check(config.train.steps_per_execution, strategy)
    # From here to the end of fit: a worker of a multi-worker job that is gone
    # stops this one within the timeout (exit 75), in whatever phase.
    watchdog = watchdog_lib.WorkerWatchdog(
        strategy, config.train.worker_timeout_seconds).start()
    init, init_split = (fine_tuning.resolve_fine_tuning(config) if config.stage == "fine_tuning"
                        else (None, None))
    model_dir = config.train.model_dir
    os.makedirs(model_dir, exist_ok=True)

    keras.utils.set_random_seed(config.data.seed)
    if init is not None:
        where = f"--init_from {config.model.init_from!r}"
        index = data_lib.index_from_split(config.data, init_split, where, progress=progress)
        logging.info("Fine-tuning on the split of %s (its %s): %d training and %d "
                     "validation inputs.", config.model.init_from, rundir.SPLIT_FILE,
                     len(index.train), len(index.val))
    else:
        index = data_lib.index_source(config.data, progress=progress)
    if init is not None and list(init.get("class_names", [])) != list(index.class_names):
        raise ValueError(
            f"Classes {index.class_names} differ from those of --init_from "
            f"{config.model.init_from!r}: {init.get('class_names')}.")
    multi_label = bool(config.data.label_separator)  # label sets: no top-k
    top_k = 0 if multi_label else models.resolve_top_k(config.train.top_k, index.num_classes)
    # Before anything is built: an unknown metric would fail after an epoch.
    controls.check_monitor(config.train.monitor, models.validation_metric_names(
        index.num_classes, top_k, multi_label=multi_label))
    class_weight = resolve_class_weight(config, index)
    if class_weight:
        logging.info("Class weights in training: %s", class_weight)
    train_ds, val_ds = _fit_inputs(config, index, strategy,
                                   list(class_weight.values()) if class_weight else None)
    policy = precision.resolve_policy(config.train.mixed_precision, strategy)
    chief = distribute.is_chief(strategy)

    with watchdog, rundir.ModelDirLock(model_dir, task=distribute.task_name(strategy)):
        out = distribute.artifact_dir(model_dir, strategy)
        try:
            result = _fit_and_write(config, index, train_ds, val_ds, strategy, policy,
                                    out, start, weights_note, extra_files or {},
                                    watchdog, class_weight, top_k)
        finally:
            distribute.cleanup_artifact_dir(out, model_dir)
    if chief:
        m = result.metrics
        logging.info("%s done (%s): best %s %.4f at epoch %s (val_accuracy %.4f); "
                     "results in %s", config.stage, m["stopped"], m["monitor"],
                     m["best_monitor_value"] if m["best_monitor_value"] is not None
                     else float("nan"), m["best_epoch"],
                     m["model_val_accuracy"] if m["model_val_accuracy"] is not None
                     else float("nan"), model_dir)
    return result


def _steps_per_epoch(config, index, train_ds) -> int:
    """Optimizer steps per epoch: the training dataset's batches (last partial dropped)."""
    if isinstance(train_ds, tf.data.Dataset):
        steps = int(train_ds.cardinality())
        if steps > 0:
            return steps
    # A multi-worker job's distributed dataset: every worker runs as many
    # steps as the global batch allows.
    return max(1, len(index.train) // config.data.batch_size)


def _make_optimizer(config, steps_per_epoch):
    """``(optimizer factory, schedule or None)`` of the run's training controls."""
    t = config.train
    rate = controls.learning_rate(t, steps_per_epoch)
    schedule = None if isinstance(rate, float) else rate
    return (lambda: models.training_optimizer(rate, t.optimizer, t.weight_decay,
                                              t.momentum)), schedule


def _control_callbacks(config):
    """``(plateau or None, early stopping or None)`` of ``--lr_schedule`` and
    ``--early_stopping_patience``, on ``--monitor``."""
    t = config.train
    plateau = early = None
    if t.lr_schedule == "plateau":
        plateau = controls.ResumableReduceLROnPlateau(
            monitor=t.monitor, mode=controls.monitor_mode(t.monitor),
            factor=t.lr_decay_factor, patience=t.lr_plateau_patience,
            verbose=int(t.verbose > 0))
    if t.early_stopping_patience:
        early = controls.ResumableEarlyStopping(t.monitor, t.early_stopping_patience)
    return plateau, early


def _fit_and_write(config, index, train_ds, val_ds, strategy, policy, out,
                   start, weights_note, extra_files, watchdog, class_weight,
                   top_k=0) -> RunResult:
    """Builds, compiles and fits under the strategy; writes artifacts into ``out``.

    ``out`` is ``model_dir`` on the chief and a private scratch folder on
    other workers (every worker saves, since saving may involve collectives;
    only the chief's files are kept). Nothing is written before the model is
    built and the resume check has passed. ``class_weight`` (``{class name:
    weight}`` or ``None``) weights the training loss only.
    """
    model_dir = config.train.model_dir
    replicas = strategy.num_replicas_in_sync
    split = data_lib.split_record(config.data, index)

    gpu = bool(tf.config.list_physical_devices("GPU"))
    with precision.policy_scope(policy), strategy.scope():
        if config.stage == "fine_tuning":
            model = models.load_for_fine_tuning(config.model.init_from, policy)
            unfrozen = models.unfreeze_top(model, config.model.backbone,
                                           config.model.fine_tune_layers)
            logging.info("Fine-tuning: %d backbone layers unfrozen.", unfrozen)
        else:
            model = models.build_model(config, index.num_classes)
        train_model, jit, xla_note = fit_wrappers.xla_training_model(
            model, config.train.jit_compile, gpu, replicas)
        if replicas > 1:
            # A last validation batch smaller than the replicas leaves some
            # replica with zero images; they must not reach the network.
            train_model = fit_wrappers.empty_batch_safe(train_model)
        steps_per_epoch = _steps_per_epoch(config, index, train_ds)
        make_optimizer, schedule = _make_optimizer(config, steps_per_epoch)
        models.compile_model(train_model, index.num_classes,
                             config.train.learning_rate, jit_compile=jit,
                             soft_labels=soft_labels(config),
                             optimizer=make_optimizer(), top_k=top_k,
                             steps_per_execution=config.train.steps_per_execution,
                             multi_label=bool(config.data.label_separator))
    logging.info("%s", xla_note)
    # After the model is built (a missing-weights error comes first), before
    # anything is written or trained.
    fingerprint, resuming = resume_check.check_resume(config, split, policy, strategy)
    record = config.to_dict()
    record.update(stage=config.stage, class_names=index.class_names,
                  versions=rundir.versions(), dtype_policy=policy,
                  strategy=type(strategy).__name__, replicas=replicas,
                  argv=list(sys.argv),
                  # Label sets: one sigmoid per class (evaluate, predict, export read it).
                  multi_label=bool(config.data.label_separator))
    fileio.write_json(os.path.join(out, rundir.CONFIG_FILE), record)
    fileio.write_json(os.path.join(out, rundir.SPLIT_FILE), split)
    for name, text in extra_files.items():
        fileio.write_text(os.path.join(out, name), text)
    monitor = config.train.monitor
    plateau, early = _control_callbacks(config)
    stateful = [c for c in (plateau, early) if c is not None]
    backup = callbacks_lib.ResumableBackupAndRestore(
        os.path.join(model_dir, rundir.BACKUP_DIR), write_dir=os.path.join(out, rundir.BACKUP_DIR),
        fingerprint=fingerprint, start_time=start, state_callbacks=stateful)
    callbacks = [
        # First, so it stops before any other callback sees a partial epoch.
        callbacks_lib.PreemptionCallback(strategy),
        # Stops watching the other workers when fit ends (the last collective).
        watchdog,
        # A service worker lost mid-epoch would leave fit waiting for ever.
        *([watchdog_lib.InputStallGuard(config.data.data_service,
                                        config.train.data_service_timeout_seconds)]
          if config.data.data_service else []),
        # Before the plateau lowers the rate and before the CSV and TensorBoard.
        controls.LearningRateLogger(schedule),
        callbacks_lib.BestModelCheckpoint(os.path.join(out, rundir.MODEL_FILE),
                                       monitor=monitor, mode=controls.monitor_mode(monitor),
                                       model_to_save=model, start_over=not resuming),
        *stateful,
        callbacks_lib.ResumableCSVLogger(os.path.join(out, rundir.HISTORY_FILE)),
        controls.TensorBoard(os.path.join(out, rundir.LOGS_DIR)),
        # Last: writing the backup is the commit point of an epoch.
        backup,
    ]
    # A run that stopped early stays stopped when run again: fit to the
    # committed epoch trains nothing (as for a finished run).
    epochs = config.train.epochs
    committed = callbacks_lib.read_backup_metadata(os.path.join(model_dir, rundir.BACKUP_DIR))
    if early is not None and committed and (committed.get("callbacks") or {}).get(
            early.state_key, {}).get("stopped_epoch"):
        epochs = min(epochs, int(committed["epoch"]))
    by_label = (dict(enumerate(class_weight.values())) if class_weight else None)
    if config.train.fast_features and config.stage == "feature_extraction":
        # catdog.fast_features: the frozen backbone runs once over the images
        # (training split unshuffled and complete), the head trains on the
        # cached features; model.keras is still the full model (the best
        # checkpoint saves `model`, which shares the head's layers).
        from catdog import fast_features  # pylint: disable=import-outside-toplevel
        fast_features.fit_head_on_features(
            model, data_lib.build_split(config.data, index, "train", training=False),
            val_ds, config, index.num_classes, callbacks, strategy,
            class_weight=by_label, make_optimizer=make_optimizer, top_k=top_k,
            epochs=epochs)
    else:
        # Keras maps a plain dataset's labels to weights (training data only);
        # a multi-worker job's inputs carry them already (_fit_inputs).
        train_model.fit(train_ds, validation_data=val_ds, epochs=epochs,
                        callbacks=callbacks, verbose=config.train.verbose,
                        class_weight=None if distribute.is_multi_worker(strategy)
                        else by_label,
                        shuffle=False)  # the dataset shuffles itself

    rows = rundir.read_history(os.path.join(out, rundir.HISTORY_FILE))
    metrics = {
        "stage": config.stage,
        **rundir.summarize_history(rows),
        # best_epoch: the epoch of model.keras, by --monitor.
        **rundir.summarize_monitor(rows, monitor, controls.monitor_mode(monitor)),
        "epochs_requested": config.train.epochs,
        "stopped": (early.reason() if early is not None and early.stopped
                    else "completed all epochs"),
        "train_examples": len(index.train),
        "val_examples": len(index.val),
        "class_names": index.class_names,
        "multi_label": bool(config.data.label_separator),
        "skipped_files": index.skipped,
        # CSV input: rows read, files used and every kind of bad row, per CSV.
        "csv_report": index.csv_report,
        "class_weight": class_weight,  # {class name: weight} in training, or None
        # Time up to the last committed epoch, summed over attempts: a rerun
        # of a finished job adds nothing, a resumed one its own time.
        "seconds": round(backup.seconds, 2),
        "backbone": config.model.backbone if config.stage in (
            "feature_extraction", "fine_tuning") else None,
        "weights": config.model.weights if config.stage == "feature_extraction" else (
            f"from {config.model.init_from}" if config.stage == "fine_tuning" else None),
        "weights_note": weights_note,
        "trainable_params": models.count_params(model.trainable_weights),
        "total_params": models.count_params(model.weights),
        "dtype_policy": models.dtype_policy_name(model),  # what the layers use
        "strategy": type(strategy).__name__,
        "replicas": replicas,
        "xla": xla_note,
        "final": rows[-1] if rows else {},
    }
    fileio.write_json(os.path.join(out, rundir.METRICS_FILE), metrics)
    figures.learning_curves(rows, os.path.join(out, rundir.CURVES_FILE),
                          title=f"{config.stage} — {model_dir}")
    return RunResult(metrics, model)
