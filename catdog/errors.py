"""Exit codes of catdog's scripts, the errors they stand for, and error messages.

A leaf module (it imports nothing of catdog, nor TensorFlow), so the scripts
can map an error to its exit code before anything heavy is loaded.

Exit codes of catdog scripts:

* ``EXIT_OK`` (0): done (for training: finished, or had already finished).
* ``EXIT_FAILURE`` (1): an error; rerunning will not help without a change.
* ``EXIT_USAGE`` (2): bad flags or input, found before training (absl also
  uses 2 for flag errors).
* ``EXIT_LOCKED`` (73, ``EX_CANTCREAT``): another live run holds the
  model_dir (``ModelDirLockedError``); nothing was written.
* ``EXIT_PREEMPTED`` (75, ``EX_TEMPFAIL``): stopped by SIGTERM after saving
  a consistent state (``TrainingPreempted``), or another worker of the job
  is gone (``WorkerLostError``); rerun the same command on every worker
  (schedulers can requeue on it).
"""

from __future__ import annotations

import re

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_LOCKED = 73
EXIT_PREEMPTED = 75


class ModelDirLockedError(RuntimeError):
    """Another live run holds the model_dir (exit with ``EXIT_LOCKED``)."""


class WorkerLostError(RuntimeError):
    """Another worker of a multi-worker job is gone (exit with ``EXIT_PREEMPTED``).

    Raised by ``catdog.watchdog.WorkerWatchdog``. The job cannot go on
    without the worker; rerunning every worker resumes from the last
    completed epoch.

    Attributes:
      workers: names of the tasks that do not answer (e.g. ``["worker-1"]``);
        empty when a collective failed but every worker still answers.
    """

    def __init__(self, message, workers=()):
        super().__init__(message)
        self.workers = list(workers)


class TrainingPreempted(Exception):
    """Training stopped on a preemption signal (exit with ``EXIT_PREEMPTED``).

    Raised out of ``model.fit`` by ``catdog.callbacks.PreemptionCallback``;
    the last committed epoch-end backup is the state to resume from.

    Attributes:
      epoch: the epoch that was running (0-based).
      step: the last finished step of that epoch, or ``None`` when stopped
        between epochs.
    """

    def __init__(self, epoch, step=None):
        self.epoch, self.step = epoch, step
        where = (f"before epoch {epoch}" if step is None else
                 f"after step {step} of epoch {epoch}")
        super().__init__(
            f"Training preempted {where}; rerun the same command to resume "
            f"from the last completed epoch (exit code {EXIT_PREEMPTED}).")


def exit_code_for(error: BaseException | None) -> int:
    """Maps how a script's work ended to its documented exit code.

    Args:
      error: the exception that ended it, or ``None`` for success.

    Returns:
      ``EXIT_OK``; ``EXIT_PREEMPTED`` (SIGTERM, or another worker is gone);
      ``EXIT_LOCKED``; ``EXIT_USAGE`` for a ValueError or FileNotFoundError
      (bad flags or data, raised before training); else ``EXIT_FAILURE``.
    """
    if error is None:
        return EXIT_OK
    if isinstance(error, (TrainingPreempted, WorkerLostError)):
        return EXIT_PREEMPTED
    if isinstance(error, ModelDirLockedError):
        return EXIT_LOCKED
    if isinstance(error, (ValueError, FileNotFoundError)):
        return EXIT_USAGE
    return EXIT_FAILURE


def first_line(error: BaseException) -> str:
    """The first line of an error's message, without TensorFlow's graph-node noise.

    TensorFlow prefixes op errors with ``{{function_node ...}}`` (sometimes
    on a line of its own); that prefix says nothing to a user.
    """
    message = getattr(error, "message", None) or str(error) or type(error).__name__
    message = re.sub(r"\{\{function_node [^}]*\}\}\s*", "", message).strip()
    return message.splitlines()[0] if message else type(error).__name__
