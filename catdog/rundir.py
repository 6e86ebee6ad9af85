"""What a run's model_dir holds: its file names, their readers, and its lock.

Every name of a file or folder that a training run writes into its
``model_dir`` is defined here once; the writers (:mod:`catdog.train`,
:mod:`catdog.callbacks`, the scripts' ``flags.txt``) and the readers
(fine-tuning, evaluation, prediction, export, the comparison of stages)
use these names. :class:`ModelDirLock` guarantees one live run per
model_dir.

Light at import (no TensorFlow), so the command-line layer can use it
before flags are parsed.
"""

from __future__ import annotations

import csv
import datetime
import errno
import fcntl
import json
import logging
import os
import platform
import socket
import weakref

import numpy as np

from catdog.errors import ModelDirLockedError

_log = logging.getLogger(__name__)

#: Every setting, class names, dtype policy, strategy, library versions.
CONFIG_FILE = "config.json"
#: The run's exact inputs (see :func:`catdog.data.split_record`).
SPLIT_FILE = "split.json"
#: The run's flags: ``--flagfile=model_dir/flags.txt`` repeats it.
FLAGS_FILE = "flags.txt"
#: One row per epoch with every metric.
HISTORY_FILE = "history.csv"
#: The model of the best epoch by validation accuracy.
MODEL_FILE = "model.keras"
#: The summary a scheduler or a comparison reads.
METRICS_FILE = "metrics.json"
#: Train and validation accuracy and loss per epoch.
CURVES_FILE = "learning_curves.png"
#: TensorBoard logs.
LOGS_DIR = "logs"
#: The last completed epoch, from which a rerun resumes.
BACKUP_DIR = "backup"
#: Timings and sizes of fast feature extraction (``--fast_features``).
FEATURES_FILE = "fast_features.json"


def read_config(model_dir: str) -> dict:
    """The ``config.json`` a run wrote into ``model_dir``, parsed.

    Raises:
      FileNotFoundError: there is no ``config.json`` in ``model_dir``.
      ValueError: it is not readable JSON (the message says what to do).
    """
    path = os.path.join(os.fspath(model_dir), CONFIG_FILE)
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        raise
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(
            f"{path!r} is not a readable JSON config: {error}. "
            "Re-run training to write it again.") from error


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


def summarize_monitor(rows: list, monitor: str, mode: str = "max") -> dict:
    """The best model's epoch by ``monitor``: what ``model.keras`` holds.

    Returns ``monitor``, ``best_epoch`` (1-based; the first of equal values,
    as the best-model checkpoint keeps it), ``best_monitor_value`` and
    ``model_val_accuracy`` (that epoch's validation accuracy). With
    ``val_accuracy`` its ``best_epoch`` is :func:`summarize_history`'s.
    """
    if not rows:
        return {"monitor": monitor, "best_epoch": None, "best_monitor_value": None,
                "model_val_accuracy": None}
    values = np.array([r.get(monitor, float("nan")) for r in rows], dtype=float)
    if np.isnan(values).all():
        best = len(rows) - 1
    else:
        best = int(np.nanargmax(values) if mode == "max" else np.nanargmin(values))
    return {"monitor": monitor, "best_epoch": int(rows[best]["epoch"]) + 1,
            "best_monitor_value": float(values[best]),
            "model_val_accuracy": float(rows[best].get("val_accuracy", float("nan")))}


def versions() -> dict:
    """Versions of the libraries a result depends on."""
    # pylint: disable=import-outside-toplevel
    import absl
    import keras
    import tensorflow as tf

    import catdog
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


# --------------------------------------------------------------------------
# One run per model_dir

_held_locks = weakref.WeakSet()


def _close_locks_in_child():
    # A forked child shares the lock's open file description; without this
    # a child outliving its parent would keep the model_dir locked.
    for lock in list(_held_locks):
        if lock._fd is not None:
            try:
                os.close(lock._fd)
            except OSError:
                pass
            lock._fd = None


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_close_locks_in_child)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class ModelDirLock:
    """Guarantees a single live training run per model_dir.

    Holds ``fcntl.flock`` on ``model_dir/.catdog.lock`` (the kernel releases
    it when the process dies, however it dies) and writes the holder's pid,
    host and start time into the file for the error message a second run
    gets. A body left by a dead process is a stale lock: it is taken over
    with a log line. The lock file itself is never deleted (deleting lock
    files races with processes that have it open).

    Only local and NFS paths can be locked; for remote paths (``gs://``...)
    the lock logs a warning and does nothing.

    Usage::

        with ModelDirLock(model_dir):
            ...train...

    Args:
      model_dir: the run's output directory (created if missing).
      task: suffix for multi-worker jobs (``catdog.distribute.task_name``), so each
        task of one job takes its own lock in a shared model_dir.
    """

    LOCK_NAME = ".catdog.lock"

    def __init__(self, model_dir: str, task: str | None = None):
        self.model_dir = str(model_dir)
        name = self.LOCK_NAME + (f".{task}" if task else "")
        self.path = os.path.join(self.model_dir, name)
        self._fd = None

    def acquire(self) -> "ModelDirLock":
        """Takes the lock.

        Returns:
          self.

        Raises:
          ModelDirLockedError: another live process holds it; the message
            names the model_dir, the holder's pid, host and start time.
        """
        if self._fd is not None:
            return self
        from catdog import fileio  # pylint: disable=import-outside-toplevel
        if fileio.is_remote(self.model_dir):
            _log.warning("Cannot lock remote model_dir %s; make sure no other "
                         "run writes into it.", self.model_dir)
            return self
        os.makedirs(self.model_dir, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            holder = self._read_holder(fd)
            os.close(fd)
            if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise ModelDirLockedError(
                    self._locked_message(holder)) from None
            if e.errno == errno.ENOLCK:
                _log.warning("The filesystem of %s does not support locks; "
                             "not protecting it against a second run.",
                             self.model_dir)
                return self
            raise
        previous = self._read_holder(fd)
        if previous:
            same_host = previous.get("host") == socket.gethostname()
            pid = previous.get("pid")
            state = ("is no longer running" if same_host and isinstance(
                pid, int) and not _pid_alive(pid) else "no longer holds it")
            _log.warning(
                "Taking over a stale lock on model_dir %s: pid %s on host %s "
                "(started %s) %s.", self.model_dir, pid, previous.get("host"),
                previous.get("started"), state)
        body = json.dumps({
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started": datetime.datetime.now().astimezone().isoformat(
                timespec="seconds"),
        })
        os.ftruncate(fd, 0)
        os.pwrite(fd, body.encode(), 0)
        os.fsync(fd)
        self._fd = fd
        _held_locks.add(self)
        return self

    def release(self) -> None:
        """Releases the lock; a clean exit leaves an empty lock file."""
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        _held_locks.discard(self)
        try:
            os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)

    @property
    def held(self) -> bool:
        """Whether this object holds the lock."""
        return self._fd is not None

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()

    @staticmethod
    def _read_holder(fd) -> dict:
        try:
            raw = os.pread(fd, 4096, 0)
            holder = json.loads(raw.decode()) if raw.strip() else {}
            return holder if isinstance(holder, dict) else {}
        except (OSError, ValueError):
            return {}

    def _locked_message(self, holder: dict) -> str:
        if holder:
            who = (f"pid {holder.get('pid')} on host {holder.get('host')}, "
                   f"started {holder.get('started')}")
        else:
            who = "a process that has not written its pid yet"
        msg = (f"model_dir {self.model_dir} is in use by another training run "
               f"({who}; lock file {self.path}). Two runs in one model_dir "
               "overwrite each other's checkpoints: wait for that run to "
               "finish, stop it, or pass a different --model_dir.")
        pid = holder.get("pid")
        if (holder.get("host") == socket.gethostname() and
                isinstance(pid, int) and not _pid_alive(pid)):
            msg += (f" Pid {pid} is gone, so a process it started still holds "
                    "the lock; stop that process.")
        return msg
