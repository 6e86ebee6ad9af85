"""The values and checks of the training-control settings (``catdog.config.TrainConfig``).

The learning-rate schedule, the monitored metric, early stopping, the
optimizer, top-k accuracy and steps per execution: their fields are declared
in ``catdog.config``; what they build is ``catdog.controls``.
"""

from __future__ import annotations

import math

from catdog.options import flag_error as _fail

#: Values of ``--lr_schedule``.
LR_SCHEDULES = ("constant", "cosine", "step", "plateau")
#: Values of ``--optimizer``.
OPTIMIZERS = ("adam", "adamw", "sgd")


def _number(value) -> bool:
    return (not isinstance(value, bool) and isinstance(value, (int, float))
            and math.isfinite(value))


def _integer(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def validate_controls(t) -> None:
    """Checks the training controls of a ``catdog.config.TrainConfig``.

    Raises:
      ValueError: naming the flag, its value and what is expected.
    """
    if t.lr_schedule not in LR_SCHEDULES:
        _fail("lr_schedule", t.lr_schedule, f"must be one of {LR_SCHEDULES}")
    if not (_number(t.warmup_epochs) and t.warmup_epochs >= 0):
        _fail("warmup_epochs", t.warmup_epochs, "must be a number of epochs >= 0")
    if t.warmup_epochs and t.lr_schedule == "plateau":
        _fail("warmup_epochs", t.warmup_epochs,
              "must be 0 with --lr_schedule=plateau (the plateau rule sets the rate "
              "itself); use --lr_schedule=constant, cosine or step for a warm-up")
    if not (_integer(t.lr_step_epochs) and t.lr_step_epochs >= 1):
        _fail("lr_step_epochs", t.lr_step_epochs, "must be an integer of at least 1")
    if not (_number(t.lr_decay_factor) and 0.0 < t.lr_decay_factor < 1.0):
        _fail("lr_decay_factor", t.lr_decay_factor, "must be strictly between 0 and 1")
    if not (_integer(t.lr_plateau_patience) and t.lr_plateau_patience >= 0):
        _fail("lr_plateau_patience", t.lr_plateau_patience, "must be an integer >= 0")
    if not (isinstance(t.monitor, str) and t.monitor.startswith("val_")
            and len(t.monitor) > 4):
        _fail("monitor", t.monitor,
              "must name a validation metric, such as val_accuracy or val_loss")
    if not (_integer(t.early_stopping_patience) and t.early_stopping_patience >= 0):
        _fail("early_stopping_patience", t.early_stopping_patience,
              "must be an integer >= 0 (0: no early stopping)")
    if t.optimizer not in OPTIMIZERS:
        _fail("optimizer", t.optimizer, f"must be one of {OPTIMIZERS}")
    if t.weight_decay is not None and not (_number(t.weight_decay) and t.weight_decay >= 0):
        _fail("weight_decay", t.weight_decay, "must be a number >= 0")
    if not (_number(t.momentum) and 0.0 <= t.momentum < 1.0):
        _fail("momentum", t.momentum, "must be in [0, 1)")
    if t.top_k is not None and not (_integer(t.top_k) and t.top_k >= 0):
        _fail("top_k", t.top_k, "must be an integer >= 0 (0: off)")
    if not (_integer(t.steps_per_execution) and 1 <= t.steps_per_execution <= 100000):
        _fail("steps_per_execution", t.steps_per_execution,
              "must be an integer of at least 1")


def control_resume_fields(t) -> tuple:
    """The TrainConfig fields of the chosen schedule and optimizer that a resume must keep.

    Beyond those always kept (``catdog.resume_check.RESUME_SETTINGS``): the
    parameters of the schedule in use (cosine decays over ``epochs``, so
    there a resume must keep it) and SGD's momentum.
    """
    fields = {"step": ("lr_step_epochs", "lr_decay_factor"), "cosine": ("epochs",),
              "plateau": ("lr_plateau_patience", "lr_decay_factor")}.get(t.lr_schedule, ())
    return fields + (("momentum",) if t.optimizer == "sgd" else ())
