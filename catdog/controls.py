"""Training controls: learning-rate schedules, plateau reduction, early stopping.

What ``--lr_schedule``, ``--warmup_epochs``, ``--monitor`` and
``--early_stopping_patience`` build for ``model.fit``:

- :class:`WarmupDecay`, a Keras ``LearningRateSchedule`` of the optimizer's
  iteration count (linear warm-up, then constant, cosine or step decay). The
  iteration count is optimizer state, which the backup restores, so a
  resumed run continues the schedule from the same step.
- :class:`ResumableReduceLROnPlateau` and :class:`ResumableEarlyStopping`,
  the Keras callbacks whose counters (epochs without improvement, best
  value) are committed with every backup (:meth:`resume_state`) and
  restored with it; the plateau-reduced rate itself is an optimizer
  variable and comes back with the optimizer.
- :class:`LearningRateLogger` and :class:`TensorBoard`: the rate of each
  epoch's last step as the ``learning_rate`` column of ``history.csv`` and
  the same value as a TensorBoard scalar.
"""

from __future__ import annotations

import math
from typing import Optional

import keras
from keras import ops

from catdog.control_settings import LR_SCHEDULES  # noqa: F401  (the values of --lr_schedule)


@keras.saving.register_keras_serializable(package="catdog")
class WarmupDecay(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warm-up, then a constant, cosine or step-decayed learning rate.

    For optimizer step ``s`` (0-based, the optimizer's ``iterations``) and
    base rate ``r``:

    - ``s < warmup_steps``: ``r * s / warmup_steps`` (as Keras' ``CosineDecay``
      warms up from 0);
    - ``constant``: ``r``;
    - ``cosine``: ``r * 0.5 * (1 + cos(pi * min(s - warmup_steps, d) / d))``
      with ``d = total_steps - warmup_steps`` (Keras' ``CosineDecay`` after
      its warm-up, decaying to 0 at the end of training);
    - ``step``: ``r * factor ** floor(s / step_every)``, counted from the
      start of training.

    Args:
      learning_rate: the base rate ``r``.
      warmup_steps: steps of linear warm-up (0: none).
      decay: ``"constant"``, ``"cosine"`` or ``"step"``.
      total_steps: the steps of the whole training (cosine).
      step_every: steps between two step decays (step).
      factor: multiplier of each step decay (step).
    """

    def __init__(self, learning_rate: float, warmup_steps: int = 0,
                 decay: str = "constant", total_steps: int = 0, step_every: int = 0,
                 factor: float = 0.1):
        if decay not in ("constant", "cosine", "step"):
            raise ValueError(f"WarmupDecay decay must be 'constant', 'cosine' or 'step'. "
                             f"Received: decay={decay!r}")
        if decay == "step" and step_every < 1:
            raise ValueError(f"WarmupDecay step_every must be >= 1 for step decay. "
                             f"Received: step_every={step_every!r}")
        self.learning_rate = float(learning_rate)
        self.warmup_steps = int(warmup_steps)
        self.decay = decay
        self.total_steps = int(total_steps)
        self.step_every = int(step_every)
        self.factor = float(factor)

    def __call__(self, step):
        s = ops.cast(step, "float32")
        base = ops.convert_to_tensor(self.learning_rate, "float32")
        if self.decay == "cosine":
            span = float(max(self.total_steps - self.warmup_steps, 1))
            done = ops.minimum(ops.maximum(s - self.warmup_steps, 0.0), span) / span
            rate = base * 0.5 * (1.0 + ops.cos(math.pi * done))
        elif self.decay == "step":
            rate = base * ops.power(self.factor, ops.floor(s / float(self.step_every)))
        else:
            rate = base + 0.0 * s
        if self.warmup_steps > 0:
            rate = ops.where(s < self.warmup_steps, base * s / float(self.warmup_steps), rate)
        return rate

    def get_config(self):
        return {"learning_rate": self.learning_rate, "warmup_steps": self.warmup_steps,
                "decay": self.decay, "total_steps": self.total_steps,
                "step_every": self.step_every, "factor": self.factor}


def learning_rate(train_config, steps_per_epoch: int):
    """The optimizer's ``learning_rate`` for a run: a float or a :class:`WarmupDecay`.

    ``constant`` without warm-up and ``plateau`` stay a float (a variable of
    the optimizer, which ``ReduceLROnPlateau`` lowers).

    Args:
      train_config: the run's :class:`catdog.config.TrainConfig`.
      steps_per_epoch: optimizer steps per epoch (warm-up and step decay are
        given in epochs and counted in steps).
    """
    t = train_config
    warmup = int(round(t.warmup_epochs * steps_per_epoch))
    if t.lr_schedule == "plateau" or (t.lr_schedule == "constant" and warmup == 0):
        return float(t.learning_rate)
    return WarmupDecay(t.learning_rate, warmup_steps=warmup, decay=t.lr_schedule,
                       total_steps=t.epochs * steps_per_epoch,
                       step_every=t.lr_step_epochs * steps_per_epoch,
                       factor=t.lr_decay_factor)


def monitor_mode(monitor: str) -> str:
    """``"min"`` for a loss, ``"max"`` for every other metric catdog logs."""
    return "min" if monitor.endswith("loss") else "max"


def check_monitor(monitor: str, available) -> None:
    """Raises ValueError naming ``--monitor`` unless it is one of ``available``."""
    if monitor not in available:
        raise ValueError(
            f"`--monitor` must be a validation metric this run logs, one of "
            f"{', '.join(available)}. Received: monitor={monitor!r}")


class _Resumable:
    """A callback whose counters are committed with the backup and restored with it."""

    state_key = ""
    _STATE = ()

    def resume_state(self) -> dict:
        """The counters, JSON-ready, for the backup's metadata."""
        out = {}
        for name in self._STATE:
            value = getattr(self, name)
            out[name] = None if value is None else float(value)
        return out

    def restore_state(self, state: dict) -> None:
        """Sets the counters a backup committed (after this callback's ``on_train_begin``)."""
        for name in self._STATE:
            if name in state:
                value = state[name]
                if value is not None and name != "best":
                    value = int(value)
                setattr(self, name, value)


class ResumableReduceLROnPlateau(_Resumable, keras.callbacks.ReduceLROnPlateau):
    """Keras ``ReduceLROnPlateau`` that continues its counters after a resume."""

    state_key = "reduce_lr_on_plateau"
    _STATE = ("wait", "best", "cooldown_counter")


class ResumableEarlyStopping(_Resumable, keras.callbacks.EarlyStopping):
    """Keras ``EarlyStopping`` (best weights not restored: the best model is
    ``model.keras``) that continues its counters after a resume."""

    state_key = "early_stopping"
    _STATE = ("wait", "best", "best_epoch", "stopped_epoch")

    def __init__(self, monitor: str, patience: int):
        super().__init__(monitor=monitor, mode=monitor_mode(monitor), patience=patience,
                         restore_best_weights=False)

    @property
    def stopped(self) -> bool:
        return self.stopped_epoch > 0

    def reason(self) -> Optional[str]:
        """Why it stopped training (epochs 1-based), or None if it did not."""
        if not self.stopped:
            return None
        epochs = "epoch" if self.patience == 1 else "epochs"
        return (f"early stopping: {self.monitor} did not improve for {self.patience} "
                f"{epochs} after epoch {self.best_epoch + 1}")


class LearningRateLogger(keras.callbacks.Callback):
    """Adds ``learning_rate``, the rate of the epoch's last step, to the epoch logs.

    Put it before the CSV logger, TensorBoard and any callback that changes
    the rate at the epoch's end (``ReduceLROnPlateau``).

    Args:
      schedule: the optimizer's ``LearningRateSchedule``, or None when its
        rate is a plain value.
    """

    def __init__(self, schedule=None):
        super().__init__()
        self.schedule = schedule

    def on_epoch_end(self, epoch, logs=None):
        if logs is None:
            return
        optimizer = self.model.optimizer
        if self.schedule is None:
            logs["learning_rate"] = float(ops.convert_to_numpy(optimizer.learning_rate))
            return
        # The optimizer evaluates the schedule at `iterations` before it adds 1.
        last = max(int(ops.convert_to_numpy(optimizer.iterations)) - 1, 0)
        logs["learning_rate"] = float(ops.convert_to_numpy(self.schedule(last)))


class TensorBoard(keras.callbacks.TensorBoard):
    """Keras ``TensorBoard`` whose ``learning_rate`` scalar is the logs' value.

    Keras logs the optimizer's current rate at the epoch's end, which is the
    NEXT step's rate under a schedule and the reduced one after a plateau;
    with :class:`LearningRateLogger` earlier in the list, the scalar is the
    same number as ``history.csv``'s column.
    """

    def _collect_learning_rate(self, logs):
        if "learning_rate" in logs:
            return logs
        return super()._collect_learning_rate(logs)
