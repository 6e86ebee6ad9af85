"""The Keras callbacks of a restartable, preemption-safe ``model.fit``.

A cluster job can be killed (SIGKILL), asked to stop (SIGTERM) or started
twice. These callbacks make the same command, run again, continue where the
last consistent state left off:

* ``ResumableBackupAndRestore``: Keras ``BackupAndRestore`` (weights,
  optimizer state, epoch) with an atomic commit, kept after the run so a
  finished job run again is a no-op.
* ``BestModelCheckpoint``: saves the best model and remembers the best value
  across restarts.
* ``ResumableCSVLogger``: ``history.csv`` with each epoch exactly once.
* ``PreemptionCallback``: SIGTERM stops training after the current step, all
  workers agreeing; the caller exits with ``EXIT_PREEMPTED``
  (:mod:`catdog.errors`).

One live run per model_dir is :class:`catdog.rundir.ModelDirLock`'s job; a
lost worker of a multi-worker job is :class:`catdog.watchdog.WorkerWatchdog`'s.

Callback order matters: an epoch is committed when the backup callback
writes its metadata, so it must come LAST, after every callback that writes
per-epoch state::

    callbacks = [PreemptionCallback(strategy), BestModelCheckpoint(...),
                 ResumableCSVLogger(...), <other callbacks>,
                 ResumableBackupAndRestore(...)]

Epochs are numbered from 0, as Keras passes them to callbacks.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import os
import signal
import threading
import time

import keras
import tensorflow as tf

from catdog import distribute
from catdog import fileio
from catdog.errors import TrainingPreempted

_log = logging.getLogger(__name__)

# --------------------------------------------------------------------------
# Weights / optimizer / epoch backup


class ResumableBackupAndRestore(keras.callbacks.BackupAndRestore):
    """Keras ``BackupAndRestore`` with an atomic commit and multi-worker dirs.

    Stock Keras 3 writes ``latest.weights.h5`` and then
    ``training_metadata.json`` in place: a kill between (or during) the two
    writes leaves weights of one epoch labelled with another, or a corrupt
    file. Here every save writes a new weights file and then atomically
    replaces the metadata, which names the weights file: the metadata rename
    is the commit point of an epoch. Backups are kept after training by
    default, so rerunning a finished job trains zero epochs.

    On restart, ``on_train_begin`` restores weights and optimizer state and
    sets the epoch fit() continues from. Put this callback LAST in the list.

    The metadata also records ``seconds``, the wall time of every attempt up
    to its last committed epoch, summed over attempts (:attr:`seconds`), and
    optionally a ``fingerprint`` of what the run trains, which a caller
    compares before resuming (:func:`read_backup_metadata`).

    Keras 3 restores only the epoch, not the step: a mid-epoch backup
    (``save_freq=<int>``) makes the resumed run repeat that whole epoch on
    weights that have already seen part of it. Keep the default
    ``save_freq="epoch"`` unless epochs are very long.

    Args:
      backup_dir: where the backup is read from (``model_dir/backup``); the
        same directory on every worker of a job.
      write_dir: where this process writes backups; defaults to
        ``backup_dir``. Non-chief workers pass a private directory (all
        workers save, only the chief's copy is kept).
      save_freq: ``"epoch"`` or a number of steps.
      delete_checkpoint: delete the backup when training ends.
      fingerprint: JSON-ready dict saved with every commit (what the run
        trains: settings, split), for the check before a resume.
      start_time: ``time.time()`` when this attempt started (default: when
        training begins); each commit adds the time since to :attr:`seconds`.
      state_callbacks: callbacks whose counters are committed with every
        backup and restored with it (``state_key``, ``resume_state()``,
        ``restore_state(dict)``; e.g. :mod:`catdog.controls`' early stopping).
    """

    _METADATA = "training_metadata.json"

    def __init__(self, backup_dir: str, write_dir: str | None = None,
                 save_freq="epoch", delete_checkpoint: bool = False,
                 fingerprint: dict | None = None,
                 start_time: float | None = None, state_callbacks=()):
        super().__init__(backup_dir=backup_dir, save_freq=save_freq,
                         double_checkpoint=False,
                         delete_checkpoint=delete_checkpoint)
        self.write_dir = write_dir or backup_dir
        self.fingerprint = fingerprint
        self._start_time = start_time
        self.state_callbacks = tuple(state_callbacks)
        self._saves = 0
        self._seconds_before = 0.0  # committed by earlier attempts
        self._seconds = 0.0

    @property
    def seconds(self) -> float:
        """Wall time up to the last committed epoch, summed over attempts.

        A resumed attempt adds its own time up to its last commit; an attempt
        that commits nothing (a rerun of a finished job, or one killed before
        its first epoch ended) adds nothing.
        """
        return self._seconds

    def on_train_begin(self, logs=None):
        if self._start_time is None:
            self._start_time = time.time()
        super().on_train_begin(logs)

    def _load_model(self):
        metadata_path = os.path.join(self.backup_dir, self._METADATA)
        raw = fileio.read_text(metadata_path)
        metadata = json.loads(raw) if raw else {}
        weights_name = metadata.get("weights")
        if not weights_name:
            # Nothing committed by this class: a fresh run, or a backup
            # written by stock Keras, which the parent class reads.
            return super()._load_model()
        if not self.model.built:
            return super()._load_model()  # raises Keras' clear error
        weights_path = os.path.join(self.backup_dir, weights_name)
        if self.model.optimizer is not None and not self.model.optimizer.built:
            self.model.optimizer.build(self.model.trainable_variables)
        self.model.load_weights(weights_path)
        self.model._initial_epoch = metadata["epoch"]  # pylint: disable=protected-access
        self._saves = int(metadata.get("save", 0))
        self._seconds_before = self._seconds = float(metadata.get("seconds", 0.0))
        states = metadata.get("callbacks") or {}
        for callback in self.state_callbacks:  # after their own on_train_begin
            if callback.state_key in states:
                callback.restore_state(states[callback.state_key])
        _log.info("Resuming from backup %s: epoch %d.", weights_path,
                  metadata["epoch"])

    def _save_model(self):
        tf.io.gfile.makedirs(self.write_dir)
        metadata_path = os.path.join(self.write_dir, self._METADATA)
        raw = fileio.read_text(metadata_path)
        old = (json.loads(raw) if raw else {}).get("weights")
        self._saves += 1
        name = f"ckpt-{self._saves}.weights.h5"
        self.model.save_weights(os.path.join(self.write_dir, name),
                                overwrite=True)
        # Rounded once, here: a rerun reports exactly what was committed.
        seconds = round(self._seconds_before + time.time() -
                        (self._start_time or time.time()), 3)
        metadata = {
            "epoch": self._current_epoch,
            "batch": self._last_batch_seen,
            "weights": name,
            "save": self._saves,
            "seconds": seconds,
        }
        if self.fingerprint is not None:
            metadata["fingerprint"] = self.fingerprint
        if self.state_callbacks:
            metadata["callbacks"] = {c.state_key: c.resume_state()
                                     for c in self.state_callbacks}
        fileio.write_text(metadata_path, json.dumps(metadata))
        self._seconds = seconds
        if old and old != name:
            fileio.remove(os.path.join(self.write_dir, old))


def read_backup_metadata(backup_dir: str) -> dict | None:
    """The committed metadata of the backup in ``backup_dir``, or None without one.

    Written by :class:`ResumableBackupAndRestore` (or stock Keras, whose
    metadata has only ``epoch`` and ``batch``).

    Raises:
      ValueError: the metadata file is not JSON (the message says what to do).
    """
    path = os.path.join(backup_dir, ResumableBackupAndRestore._METADATA)  # pylint: disable=protected-access
    raw = fileio.read_text(path)
    if raw is None:
        return None
    try:
        metadata = json.loads(raw)
    except ValueError as e:
        raise ValueError(f"Corrupt backup metadata {path}: {e}. Delete {backup_dir} "
                         "to train from scratch, or use another --model_dir.") from None
    return metadata if isinstance(metadata, dict) else None


# --------------------------------------------------------------------------
# Best model


class BestModelCheckpoint(keras.callbacks.Callback):
    """Saves the model when the monitored value improves, across restarts.

    ``keras.callbacks.ModelCheckpoint(save_best_only=True)`` starts every run
    with no best value, so a restarted job overwrites a better model with a
    worse one. This callback persists the best value and epoch in a small
    json file (``state_path``) and compares against it after a restart.

    The model saved at an epoch becomes ``filepath`` only once the epoch is
    committed (at the next epoch's start or at the end of training, i.e.
    after ``ResumableBackupAndRestore`` has run its ``on_epoch_end``); until
    then it is ``*.pending.keras``. A run killed in between resumes at that
    epoch, and the uncommitted candidate is discarded, so the state file, the
    model file and ``history.csv`` always describe the same epochs.

    Args:
      filepath: where the best model goes, e.g. ``model_dir/model.keras``.
      monitor: the logs key to watch; a ``val_`` key is skipped on epochs
        without validation.
      mode: ``"max"`` or ``"min"``: whether larger values are better.
      state_path: the json state; defaults to ``<filepath stem>.best.json``.
      model_to_save: the model to write (default: the model being fit).
      start_over: forget the best of an earlier run in the same place: for
        a run that trains from scratch (no backup to resume), whose best
        model must replace the earlier run's even if that one was better.

    Attributes:
      best: best monitored value so far (``None`` before the first), counting
        the current run's uncommitted candidate.
      best_epoch: its epoch (0-based).
    """

    def __init__(self, filepath: str, monitor: str = "val_accuracy",
                 mode: str = "max", state_path: str | None = None,
                 model_to_save=None, start_over: bool = False):
        super().__init__()
        # The model written to ``filepath``; by default the one being fit.
        # Training may fit a wrapper that shares its weights (XLA), while the
        # saved model stays the plain one.
        self.model_to_save = model_to_save
        if mode not in ("max", "min"):
            raise ValueError(f"BestModelCheckpoint mode must be 'max' or "
                             f"'min'; received mode={mode!r}.")
        filepath = str(filepath)
        if not filepath.endswith(".keras"):
            raise ValueError(f"BestModelCheckpoint filepath must end in "
                             f".keras; received filepath={filepath!r}.")
        self.filepath, self.monitor, self.mode = filepath, monitor, mode
        stem = filepath[:-len(".keras")]
        self.state_path = str(state_path or f"{stem}.best.json")
        self.pending_path = f"{stem}.pending.keras"
        self._state = self._load_state()
        if start_over and (self._state["best"] is not None or self._state["pending"]):
            _log.info("Training from scratch: %s=%s of an earlier run in %s no longer "
                      "counts; this run's best model replaces it.", self.monitor,
                      self._state["best"], self.filepath)
            self._state.update(best=None, best_epoch=None, pending=None)
        self._resumed = False

    @property
    def best(self):
        pending = self._state["pending"]
        return pending["value"] if pending else self._state["best"]

    @property
    def best_epoch(self):
        pending = self._state["pending"]
        return pending["epoch"] if pending else self._state["best_epoch"]

    def _load_state(self) -> dict:
        raw = fileio.read_text(self.state_path)
        if raw is None:
            return {"monitor": self.monitor, "mode": self.mode, "best": None,
                    "best_epoch": None, "pending": None}
        try:
            state = json.loads(raw)
        except ValueError as e:
            raise ValueError(f"Corrupt best-model state {self.state_path}: "
                             f"{e}. Delete it to start over.") from None
        if (state.get("monitor"), state.get("mode")) != (self.monitor,
                                                          self.mode):
            raise ValueError(
                f"{self.state_path} tracks monitor={state.get('monitor')!r} "
                f"mode={state.get('mode')!r}, but this run monitors "
                f"monitor={self.monitor!r} mode={self.mode!r}. Use the same "
                "monitor to resume, or another --model_dir.")
        state.setdefault("pending", None)
        if (state.get("best") is not None and not state["pending"] and
                not tf.io.gfile.exists(self.filepath)):
            _log.warning("%s records %s=%s but %s is missing; starting the "
                         "best-model search over.", self.state_path,
                         self.monitor, state["best"], self.filepath)
            state.update(best=None, best_epoch=None)
        return state

    def _write_state(self) -> None:
        fileio.write_text(self.state_path, json.dumps(self._state, indent=1))

    def _improved(self, value: float) -> bool:
        if math.isnan(value):
            return False
        best = self.best
        if best is None:
            return True
        return value > best if self.mode == "max" else value < best

    def _commit_pending(self) -> None:
        pending = self._state["pending"]
        if not pending:
            return
        # The rename may already have happened if a run died right after it.
        if tf.io.gfile.exists(self.pending_path):
            fileio.rename(self.pending_path, self.filepath)
        self._state.update(best=pending["value"], best_epoch=pending["epoch"],
                           pending=None)
        self._write_state()

    def _discard_pending(self) -> None:
        pending = self._state["pending"]
        _log.info("Discarding the uncommitted best model of epoch %d (%s=%s); "
                  "that epoch runs again.", pending["epoch"], self.monitor,
                  pending["value"])
        fileio.remove(self.pending_path)
        self._state["pending"] = None
        self._write_state()

    def on_epoch_begin(self, epoch, logs=None):
        if not self._resumed:
            self._resumed = True
            pending = self._state["pending"]
            if pending and pending["epoch"] >= epoch:
                self._discard_pending()
            if (self._state["best_epoch"] is not None and
                    self._state["best_epoch"] >= epoch):
                _log.warning(
                    "%s holds %s=%s from epoch %d of an earlier run, which "
                    "this run starts before; only a better model replaces it.",
                    self.filepath, self.monitor, self._state["best"],
                    self._state["best_epoch"])
        self._commit_pending()

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        if self.monitor not in logs:
            if self.monitor.startswith("val_") and not any(
                    k.startswith("val_") for k in logs):
                return  # No validation this epoch (validation_freq > 1).
            raise ValueError(
                f"BestModelCheckpoint monitor={self.monitor!r} is not in the "
                f"training logs; available: {', '.join(sorted(logs))}.")
        value = float(logs[self.monitor])
        if not self._improved(value):
            return
        (self.model_to_save or self.model).save(self.pending_path, overwrite=True)
        self._state["pending"] = {"epoch": int(epoch), "value": value}
        self._write_state()

    def on_train_end(self, logs=None):
        # fit() only ends normally after every epoch's callbacks ran.
        self._commit_pending()


# --------------------------------------------------------------------------
# history.csv


class ResumableCSVLogger(keras.callbacks.Callback):
    """Writes one ``history.csv`` row per epoch, each epoch exactly once.

    On the first epoch of a (resumed) run, rows of that epoch and later ones
    are dropped: they belong to an attempt whose backup was never committed
    and are about to be redone. The header is ``epoch`` then the log keys in
    sorted order; when a later epoch brings new keys the file is rewritten
    with the union of columns, older rows left blank there.

    Args:
      path: the csv file, e.g. ``model_dir/history.csv``.
    """

    def __init__(self, path: str):
        super().__init__()
        self.path = str(path)
        self._resumed = False
        self._fields = None
        self._rows = []

    def _read(self):
        raw = fileio.read_text(self.path)
        if not raw:
            return None, []
        reader = csv.DictReader(io.StringIO(raw))
        return list(reader.fieldnames or []), list(reader)

    def _write_all(self):
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=self._fields, restval="",
                                lineterminator="\n")
        writer.writeheader()
        writer.writerows(self._rows)
        fileio.write_text(self.path, buf.getvalue())

    def on_epoch_begin(self, epoch, logs=None):
        if self._resumed:
            return
        self._resumed = True
        fields, rows = self._read()
        try:
            kept = [r for r in rows if int(r["epoch"]) < epoch]
        except (KeyError, TypeError, ValueError):
            raise ValueError(
                f"{self.path} is not a history.csv with an integer 'epoch' "
                "column; move it away or use another --model_dir.") from None
        if len(kept) < len(rows):
            _log.info("%s: dropping %d row(s) of epochs >= %d, which run "
                      "again.", self.path, len(rows) - len(kept), epoch)
        self._fields, self._rows = fields, kept
        if fields is not None and len(kept) < len(rows):
            self._write_all()

    def on_epoch_end(self, epoch, logs=None):
        row = {"epoch": str(int(epoch))}
        for key, value in (logs or {}).items():
            try:
                row[key] = repr(float(value))
            except (TypeError, ValueError):
                row[key] = str(value)
        self._rows.append(row)
        new_keys = sorted(set(row) - set(self._fields or []) - {"epoch"})
        if self._fields is None or new_keys:
            self._fields = (self._fields or ["epoch"]) + new_keys
            self._write_all()
            return
        buf = io.StringIO()
        csv.DictWriter(buf, fieldnames=self._fields, restval="",
                       lineterminator="\n").writerow(row)
        if fileio.is_remote(self.path):
            self._write_all()  # GCS files cannot be appended to.
            return
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(buf.getvalue())
            f.flush()
            os.fsync(f.fileno())


# --------------------------------------------------------------------------
# SIGTERM


class PreemptionCallback(keras.callbacks.Callback):
    """Stops ``model.fit`` cleanly when the job is asked to stop.

    Installs handlers for ``signals`` (SIGTERM: what Kubernetes, Slurm and
    cloud preemption send before SIGKILL) while training. The handler only
    records the request; after the current step finishes (or before the
    next epoch starts) the callback raises ``TrainingPreempted`` out of
    ``fit()``. The caller exits with ``EXIT_PREEMPTED``.

    No checkpoint is written mid-epoch: Keras 3 resumes a mid-epoch backup
    from the epoch's first step, so the consistent state is the last
    epoch-end backup, and the partial epoch is redone on restart. Raising
    (instead of ``model.stop_training``) keeps Keras from running
    ``on_epoch_end`` (validation, backup, csv row, best model) for the
    partial epoch. A request that arrives during validation lets that epoch
    finish and commit, and training stops before the next one.

    Under MultiWorkerMirroredStrategy every worker must use this callback:
    each check all-reduces the local flags, so all workers stop after the
    same step even if only one of them got the signal.

    Args:
      strategy: the job's strategy (needed to agree across workers).
      signals: the signals that request a stop.
      check_every_n_steps: check every n training steps (and at every epoch
        start). ``None``: every step in a single process, where a check is
        free, and every ``MULTI_WORKER_CHECK_STEPS`` steps under
        multi-worker, where each check is one all-reduce (its cost per
        step: BUILD_NOTES.md, "Restartable runs").
    """

    MULTI_WORKER_CHECK_STEPS = 10

    def __init__(self, strategy=None, signals=(signal.SIGTERM,),
                 check_every_n_steps: int | None = None):
        super().__init__()
        if check_every_n_steps is None:
            check_every_n_steps = (
                self.MULTI_WORKER_CHECK_STEPS
                if strategy is not None and distribute.is_multi_worker(strategy)
                else 1)
        if (isinstance(check_every_n_steps, bool) or
                not isinstance(check_every_n_steps, int) or
                check_every_n_steps < 1):
            raise ValueError("check_every_n_steps must be an integer >= 1; "
                             f"received {check_every_n_steps!r}.")
        self.strategy = strategy
        self.signals = tuple(signals)
        self.check_every_n_steps = check_every_n_steps
        self._requested = None
        self._previous = {}
        self._agree_fn = None
        self._epoch = 0

    @property
    def requested(self) -> bool:
        """Whether this process received a stop request."""
        return self._requested is not None

    def request(self, reason: str = "requested") -> None:
        """Asks training to stop, as the signal would (for embedding code)."""
        if self._requested is None:
            self._requested = reason

    def _handle(self, signum, frame):  # pylint: disable=unused-argument
        # Runs between Python bytecodes of the main thread: only set a flag.
        self.request(signal.Signals(signum).name)

    def install(self) -> None:
        """Installs the signal handlers (main thread only; else warns)."""
        if self._previous:
            return
        if threading.current_thread() is not threading.main_thread():
            _log.warning("fit() is not running in the main thread: cannot "
                         "install handlers for %s; call request() instead.",
                         [signal.Signals(s).name for s in self.signals])
            return
        for sig in self.signals:
            self._previous[sig] = signal.signal(sig, self._handle)

    def uninstall(self) -> None:
        """Restores the handlers that were in place before ``install``."""
        previous, self._previous = self._previous, {}
        for sig, handler in previous.items():
            signal.signal(sig, handler)

    def _any_worker_requested(self) -> bool:
        local = self._requested is not None
        strategy = self.strategy
        if strategy is None or not distribute.is_multi_worker(strategy):
            return local
        if self._agree_fn is None:
            @tf.function
            def agree(flag):
                per_replica = strategy.run(tf.identity, args=(flag,))
                return strategy.reduce(tf.distribute.ReduceOp.SUM,
                                       per_replica, axis=None)
            self._agree_fn = agree
        total = self._agree_fn(tf.constant(1.0 if local else 0.0))
        if total > 0 and not local:
            self.request("another worker was preempted")
        return bool(total > 0)

    def _stop(self, step):
        _log.warning("Stopping training (%s) %s.", self._requested,
                     f"after step {step} of epoch {self._epoch}"
                     if step is not None else f"before epoch {self._epoch}")
        self.uninstall()
        raise TrainingPreempted(self._epoch, step)

    def on_train_begin(self, logs=None):
        self.install()

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch
        if self._any_worker_requested():
            self._stop(None)

    def on_train_batch_end(self, batch, logs=None):
        if (batch + 1) % self.check_every_n_steps == 0:
            if self._any_worker_requested():
                self._stop(batch)

    def on_train_end(self, logs=None):
        self.uninstall()
