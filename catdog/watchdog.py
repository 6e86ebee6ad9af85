"""Stop within a bounded time when another worker is gone.

TensorFlow notices a dead worker only inside collective ops, and ends the
job with exit code 1 and a raw ``UnavailableError``; a worker busy in a
phase of its own carries on until its next collective. :class:`WorkerWatchdog`
turns a lost worker into a :class:`catdog.errors.WorkerLostError` naming it
(exit code 75: rerun every worker to resume), whatever this worker was
doing. :class:`InputStallGuard` does the same for a tf.data service whose
worker was lost mid-epoch, which would otherwise leave the trainer waiting
for its next batch for ever.
"""

from __future__ import annotations

import logging
import math
import os
import sys
import threading
import time

import keras
import tensorflow as tf

from catdog import config as config_lib
from catdog import distribute
from catdog.errors import EXIT_PREEMPTED, WorkerLostError, first_line

_log = logging.getLogger(__name__)

def _check_peer(device: str, timeout_seconds: float) -> None:
    """Raises a ``tf.errors.OpError`` unless task ``device`` answers in time."""
    from tensorflow.python.eager import context  # pylint: disable=g-direct-tensorflow-import,import-outside-toplevel
    context.context().check_collective_ops_peer_health(
        device, timeout_in_ms=max(1, int(timeout_seconds * 1000)))


def _abort_collectives(message: str) -> None:
    """Makes every pending and future collective op of this process fail."""
    from tensorflow.python.eager import context  # pylint: disable=g-direct-tensorflow-import,import-outside-toplevel
    context.context().abort_collective_ops(tf.errors.UNAVAILABLE, message)


# The least time the first step of a ``fit`` through the tf.data service may
# wait: it also traces (under XLA, compiles) the training step while the
# workers fill their shuffle buffers.
FIRST_STEP_MIN_SECONDS = 600.0


def _hard_exit(code: int) -> None:
    os._exit(code)  # pylint: disable=protected-access


def _check_seconds(flag: str, value) -> float:
    if (isinstance(value, bool) or not isinstance(value, (int, float))
            or not math.isfinite(value) or value <= 0):
        raise ValueError(f"`{flag}` must be a positive number of "
                         f"seconds. Received: {flag.lstrip('-')}={value!r}")
    return float(value)


# What a health check of a task that is gone raises: unreachable, no answer
# in time, or a restarted process (another incarnation).
_PEER_DOWN = (tf.errors.UnavailableError, tf.errors.DeadlineExceededError,
              tf.errors.FailedPreconditionError)
# What a collective op raises when a worker of the job is gone.
_COLLECTIVE_LOST = (tf.errors.UnavailableError, tf.errors.DeadlineExceededError)


class WorkerWatchdog(keras.callbacks.Callback):
    """Stops this worker within a bounded time when another worker is gone.

    TensorFlow 2.21 notices a dead worker only inside collective ops: its
    coordination service (10 s heartbeats) aborts them, and a worker whose
    peer closed its sockets fails at once. A worker busy with a phase of its
    own (the file check, fast-feature extraction, a slow save) carries on
    until its next collective; the error then is a raw ``UnavailableError``
    that ends the job with exit code 1. Per-collective timeouts
    (``CommunicationOptions(timeout_seconds=...)``) are no cure: they also
    fire when one worker merely waits for a slower one.

    The watchdog thread asks every other task's TensorFlow server whether it
    is alive (the peer health check MultiWorkerMirroredStrategy used before
    the coordination service). The peer's server threads answer, so a peer
    that is busy in Python (tracing, validating, saving) still answers: this
    checks liveness, not progress. A peer that has not answered for
    ``timeout_seconds`` is gone: the watchdog logs which one, aborts this
    process's collective ops (a main thread waiting in one raises at once)
    and, if the process still runs ``grace_seconds`` later (stuck in a phase
    with no collective), ends it with exit code ``EXIT_PREEMPTED``.

    As a context manager it turns the collective errors a lost worker causes
    (``UnavailableError``, ``DeadlineExceededError``, raised after the abort
    or by TensorFlow's own detection) into a ``WorkerLostError`` that names
    the workers that do not answer; the process then has ``grace_seconds`` to
    end by itself (its collectives cannot run again) before the watchdog
    ends it with ``EXIT_PREEMPTED``. As a Keras callback it stops watching
    when ``fit`` ends: after the last collective, a worker that finishes
    first and exits is not a lost one. Outside multi-worker jobs it does
    nothing::

        watchdog = WorkerWatchdog(strategy, timeout_seconds).start()
        ...                     # e.g. the file check
        with watchdog:
            model.fit(..., callbacks=[watchdog, ...])

    Args:
      strategy: the job's strategy.
      timeout_seconds: how long another worker may not answer before it is
        gone (``--worker_timeout_seconds``).
      grace_seconds: how long after that the process may take to stop by
        itself before the watchdog ends it.

    Attributes:
      lost: names of the workers the watchdog declared gone.
    """

    CHECK_INTERVAL_SECONDS = 5.0

    def __init__(self, strategy,
                 timeout_seconds: float = config_lib.TrainConfig.worker_timeout_seconds,
                 grace_seconds: float = 30.0):
        super().__init__()
        self.strategy = strategy
        self.timeout_seconds = _check_seconds("--worker_timeout_seconds", timeout_seconds)
        self.grace_seconds = _check_seconds("grace_seconds", grace_seconds)
        self.interval = min(self.CHECK_INTERVAL_SECONDS, self.timeout_seconds / 4)
        self.lost = []
        self._message = None
        self._stopped = threading.Event()
        self._thread = None
        self._peers = self._other_tasks(strategy)

    @staticmethod
    def _other_tasks(strategy):
        """``(name, address, device)`` of every other task of the job."""
        if strategy is None or not distribute.is_multi_worker(strategy):
            return []
        resolver = strategy.cluster_resolver
        spec = resolver.cluster_spec()
        peers = []
        for job in ("chief", "worker"):
            if job not in spec.jobs:
                continue
            for index in spec.task_indices(job):
                if (job, index) == (resolver.task_type, resolver.task_id):
                    continue
                peers.append((f"{job}-{index}", spec.task_address(job, index),
                              f"/job:{job}/replica:0/task:{index}"))
        return peers

    @property
    def watching(self) -> bool:
        """Whether the watchdog thread is running."""
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> "WorkerWatchdog":
        """Starts watching the other workers (idempotent); returns self."""
        if self._peers and self._thread is None and not self._stopped.is_set():
            self._thread = threading.Thread(target=self._watch, daemon=True,
                                            name="catdog-worker-watchdog")
            self._thread.start()
        return self

    def stop(self) -> None:
        """Stops watching (a worker declared gone still ends the process)."""
        self._stopped.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=self.interval + max(self.interval, 1.0) + 1)

    def _watch(self):
        # A peer is gone once its checks have failed for timeout_seconds in a
        # row; counting from the first failure (not the last answer) means a
        # watchdog thread that could not run for a while (this process busy)
        # never declares a peer gone on a single failed check.
        failing_since, last_error = {}, {}
        check_timeout = max(self.interval, 1.0)
        while not self._stopped.wait(self.interval):
            gone = []
            for peer in self._peers:
                if self._stopped.is_set():
                    return
                try:
                    _check_peer(peer[2], check_timeout)
                    failing_since.pop(peer, None)
                    continue
                except _PEER_DOWN as e:
                    last_error[peer] = e
                    failing_since.setdefault(peer, time.monotonic())
                except Exception as e:  # pylint: disable=broad-except
                    # Never end a healthy job because the check itself broke.
                    _log.warning("Cannot check on %s (%s); not watching the "
                                 "other workers.", peer[0], e)
                    return
                if time.monotonic() - failing_since[peer] >= self.timeout_seconds:
                    gone.append(peer)
            if gone and not self._stopped.is_set():
                self._declare_gone(gone, last_error)
                return

    def _declare_gone(self, gone, last_error):
        self.lost = [name for name, _, _ in gone]
        who = ", ".join(f"{name} ({address})" for name, address, _ in gone)
        reasons = "; ".join(first_line(last_error[p]) for p in gone
                            if p in last_error)
        self._message = (
            f"{who} of this multi-worker job {'is' if len(gone) == 1 else 'are'} "
            f"gone: no answer for {self.timeout_seconds:g} s or more "
            f"(--worker_timeout_seconds={self.timeout_seconds:g}; {reasons}). "
            f"This worker stops with exit code {EXIT_PREEMPTED}: rerun every "
            "worker of the job to resume from the last completed epoch.")
        _log.error("%s", self._message)
        try:
            _abort_collectives(self._message)
        except Exception as e:  # pylint: disable=broad-except
            _log.warning("Could not abort collective ops: %s", e)
        # A main thread inside a collective raises now and exits by itself;
        # one in a phase of its own cannot be interrupted.
        self._exit_after_grace(self._message)

    def _exit_after_grace(self, message: str) -> None:
        """Ends the process with ``EXIT_PREEMPTED`` in ``grace_seconds``.

        Once a worker is gone this process's collectives are aborted for good
        (TensorFlow: "restart your program"), so it must end; this bounds how
        long its own shutdown may take.
        """
        time.sleep(self.grace_seconds)
        print(f"error: {message}", file=sys.stderr, flush=True)
        _hard_exit(EXIT_PREEMPTED)

    def _lost_error(self, cause: BaseException) -> WorkerLostError:
        if self._message:
            return WorkerLostError(self._message, self.lost)
        gone = []
        for peer in self._peers:
            try:
                _check_peer(peer[2], 2.0)
            except _PEER_DOWN as e:
                gone.append((peer, e))
            except Exception:  # pylint: disable=broad-except
                pass
        rerun = (f"This worker stops with exit code {EXIT_PREEMPTED}: rerun "
                 "every worker of the job to resume from the last completed "
                 "epoch.")
        if not gone:
            return WorkerLostError(
                "Lost contact with the other workers of this multi-worker job "
                f"({first_line(cause)}). {rerun}")
        who = ", ".join(f"{name} ({address})" for (name, address, _), _ in gone)
        reasons = "; ".join(first_line(e) for _, e in gone)
        return WorkerLostError(
            f"{who} of this multi-worker job {'is' if len(gone) == 1 else 'are'} "
            f"gone: no answer ({reasons}); TensorFlow: {first_line(cause)}. "
            f"{rerun}", [p[0] for p, _ in gone])

    def __enter__(self):
        return self.start()

    def __exit__(self, exc_type, exc, tb):
        self.stop()
        if self._peers and isinstance(exc, _COLLECTIVE_LOST):
            error = self._lost_error(exc)
            if not self._message:  # else the watchdog thread is already on it
                threading.Thread(target=self._exit_after_grace, args=(str(error),),
                                 daemon=True, name="catdog-worker-exit").start()
            raise error from exc
        return False

    def on_train_end(self, logs=None):
        self.stop()


class InputStallGuard(keras.callbacks.Callback):
    """Stops training whose batches from the tf.data service stopped coming.

    The service (TensorFlow 2.21) does not recover a worker lost mid-epoch:
    with dynamic sharding the trainer waits for that worker's data for ever,
    whatever the dispatcher's ``worker_timeout_ms`` (BUILD_NOTES.md). This
    callback times each training step from ``on_train_batch_begin`` to
    ``on_train_batch_end``; one that waits ``timeout_seconds`` ends the
    process with ``EXIT_PREEMPTED`` and a message naming the service and
    the flag, so the job can be rerun (it resumes from the last completed
    epoch). The first step of each ``fit`` also traces (under XLA, compiles)
    the training step while the workers fill their shuffle buffers, which
    takes as long as the model needs, so it may wait ``first_step_seconds``.
    Validation reads local data and is not timed, nor is anything outside
    ``fit``.

    Args:
      service: the dispatcher address (``--data_service``), for the message.
      timeout_seconds: ``--data_service_timeout_seconds``.
      first_step_seconds: the first step's limit; by default the larger of
        ``timeout_seconds`` and ``FIRST_STEP_MIN_SECONDS``.

    Attributes:
      message: what the guard said when it stopped the run, else None.
    """

    def __init__(self, service: str, timeout_seconds: float,
                 first_step_seconds: float | None = None):
        super().__init__()
        self.service = service
        self.timeout_seconds = _check_seconds("--data_service_timeout_seconds",
                                              timeout_seconds)
        self.first_step_seconds = (
            max(self.timeout_seconds, FIRST_STEP_MIN_SECONDS)
            if first_step_seconds is None
            else _check_seconds("first_step_seconds", first_step_seconds))
        self.interval = min(WorkerWatchdog.CHECK_INTERVAL_SECONDS, self.timeout_seconds / 4)
        self.message = None
        self._step_began = None  # monotonic time the step in progress began
        self._limit = self.first_step_seconds  # of the step in progress
        self._stopped = threading.Event()
        self._thread = None

    @property
    def watching(self) -> bool:
        """Whether the guard thread is running."""
        return self._thread is not None and self._thread.is_alive()

    def on_train_begin(self, logs=None):
        self._limit = self.first_step_seconds
        self._stopped.clear()
        self._thread = threading.Thread(target=self._watch, daemon=True,
                                        name="catdog-input-stall-guard")
        self._thread.start()

    def on_train_batch_begin(self, batch, logs=None):
        self._step_began = time.monotonic()

    def on_train_batch_end(self, batch, logs=None):
        self._step_began = None
        self._limit = self.timeout_seconds

    def on_train_end(self, logs=None):
        self._step_began = None
        self._stopped.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=self.interval + 1)

    def _watch(self):
        while not self._stopped.wait(self.interval):
            began, limit = self._step_began, self._limit
            if began is None or time.monotonic() - began < limit:
                continue
            if limit == self.timeout_seconds:
                waited = (f"No training batch from the tf.data service at "
                          f"{self.service} for {limit:g} s")
            else:
                waited = (f"No first training batch from the tf.data service at "
                          f"{self.service} within {limit:g} s (the first step, which "
                          "also builds the training step, may take the larger of "
                          f"the flag and {FIRST_STEP_MIN_SECONDS:g} s)")
            self.message = (
                f"{waited} (--data_service_timeout_seconds="
                f"{self.timeout_seconds:g}): a service worker was probably lost "
                "mid-epoch, which the service does not recover. This run stops "
                f"with exit code {EXIT_PREEMPTED}: check that the dispatcher and "
                "the workers are up, then rerun the same command to resume from "
                "the last completed epoch.")
            _log.error("%s", self.message)
            print(f"error: {self.message}", file=sys.stderr, flush=True)
            _hard_exit(EXIT_PREEMPTED)
            return
