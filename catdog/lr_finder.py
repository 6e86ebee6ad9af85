"""The learning-rate range test: which ``--learning_rate`` suits a stage's model and data.

:func:`find_lr` builds the stage's model exactly as training does, trains it
for a short run whose rate grows exponentially from ``min_lr`` to
``max_lr`` (Keras' ``ExponentialDecay`` with a rate above 1, one factor per
step), records the loss of every step, and writes into
``config.train.model_dir``:

- ``lr_find.json``: the rates, the per-step and smoothed losses, and the
  suggested rate;
- ``lr_find.png``: smoothed loss against rate (log scale), the suggestion marked.

The suggestion is the rate of the steepest descent of the smoothed loss
(the most negative slope against log rate, before the loss minimum), with
the rate of the loss minimum divided by 10 as a second opinion. The run
stops early once the smoothed loss exceeds 4 times its minimum (the rate has
diverged). Nothing of the model is kept: it is a throw-away run without
class weights, in one process: on one device or, with
``--strategy=mirrored``, over the local devices (the training job's global
``--batch_size``, so its suggestion holds for that job). A strategy across
processes (``multi_worker``, ``tpu``) is refused.
"""

from __future__ import annotations

import math
import os

from absl import logging
import keras
import numpy as np

from catdog import config as config_lib
from catdog import data as data_lib
from catdog import distribute
from catdog import figures
from catdog import fileio
from catdog import fine_tuning
from catdog import models
from catdog import precision

JSON_FILE = "lr_find.json"
PNG_FILE = "lr_find.png"
SMOOTHING = 0.98  # exponential moving average of the loss (fast.ai's beta)
DIVERGED = 4.0  # stop when the smoothed loss exceeds this times its minimum
#: Values of ``--strategy`` the range test runs under (one process).
STRATEGIES = ("auto", "default", "one_device", "mirrored")


class _LossRecorder(keras.callbacks.Callback):
    """Per-step losses from Keras' running epoch mean; stops when the loss diverges."""

    def __init__(self, schedule):
        super().__init__()
        self.schedule = schedule
        self.rates, self.losses, self.smoothed = [], [], []
        self._mean_before = 0.0
        self._average = 0.0

    def on_train_batch_end(self, batch, logs=None):
        mean = float((logs or {}).get("loss", float("nan")))
        n = batch + 1
        # The logs hold the mean over the epoch so far (equal batches).
        loss = n * mean - (n - 1) * self._mean_before
        self._mean_before = mean
        self.rates.append(float(self.schedule(batch)))
        self.losses.append(loss)
        self._average = SMOOTHING * self._average + (1 - SMOOTHING) * loss
        smooth = self._average / (1 - SMOOTHING ** n)
        self.smoothed.append(smooth)
        if not math.isfinite(smooth) or smooth > DIVERGED * min(self.smoothed):
            self.model.stop_training = True


#: Width, in decades of rate, over which the descent's slope is measured.
SLOPE_DECADES = 1.0


def suggest(rates, smoothed) -> dict:
    """``{"steepest": rate, "min_loss_over_10": rate}`` from a range test's curve.

    ``steepest`` is the middle of the steepest descent of the smoothed loss
    before its minimum, with the slope fitted over :data:`SLOPE_DECADES` of
    rate (less when the curve before its minimum is shorter). A slope
    between neighbouring steps would follow the noise: one step's drop just
    before the minimum, where training is about to diverge, would win.
    """
    rates = np.asarray(rates, float)
    smoothed = np.asarray(smoothed, float)
    finite = np.isfinite(smoothed)
    if finite.sum() < 3:
        raise ValueError("The learning-rate range test recorded fewer than 3 finite "
                         "losses; raise --lr_find_steps or lower --lr_find_min.")
    rates, smoothed = rates[finite], smoothed[finite]
    lowest = int(np.argmin(smoothed))
    x = np.log10(rates)
    width = min(SLOPE_DECADES, x[lowest] - x[0])
    best, steepest = np.inf, 0
    for start in range(lowest + 1):
        if x[start] + width > x[lowest] + 1e-9:  # the window would pass the minimum
            break
        inside = (x >= x[start]) & (x <= x[start] + width)
        if inside.sum() < 3:
            continue
        slope = np.polyfit(x[inside], smoothed[inside], 1)[0]
        if slope < best:
            best, steepest = slope, start
    if np.isfinite(best):
        middle = x[steepest] + width / 2
        centre = int(np.argmin(np.abs(x - middle)))
    else:  # too few steps before the minimum for a fit: the steepest step
        slopes = np.gradient(smoothed, x)
        centre = int(np.argmin(slopes[:max(lowest, 1) + 1]))
    return {"steepest": float(rates[centre]),
            "min_loss_over_10": float(rates[lowest] / 10)}


def find_lr(config: config_lib.Config, min_lr: float = 1e-7, max_lr: float = 1.0,
            steps: int = 100, progress: bool = True) -> dict:
    """Runs the range test for ``config``'s stage and writes its results.

    Args:
      config: the stage's settings (data, model, optimizer); results go to
        ``config.train.model_dir``.
      min_lr, max_lr: the first and last rate (0 < min_lr < max_lr).
      steps: training steps from ``min_lr`` to ``max_lr`` (the training data
        repeats as needed).
      progress: show progress of the file check.

    Returns:
      The content of ``lr_find.json``.

    Raises:
      ValueError: bad settings or data (naming the flag).
    """
    if not (0 < min_lr < max_lr and math.isfinite(max_lr)):
        raise ValueError(f"`--lr_find_min` must be positive and below `--lr_find_max`. "
                         f"Received: lr_find_min={min_lr!r}, lr_find_max={max_lr!r}")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 5:
        raise ValueError(f"`--lr_find_steps` must be an integer of at least 5. "
                         f"Received: lr_find_steps={steps!r}")
    config = config_lib.Config.from_dict(config.to_dict())
    config.validate()
    if config.train.strategy not in STRATEGIES:
        raise ValueError(
            f"`--strategy={config.train.strategy}` is not supported by the learning-rate "
            f"range test, which runs in one process; use one of {', '.join(STRATEGIES)} "
            f"(e.g. --strategy=mirrored over this machine's devices) with the training "
            f"job's --batch_size.")
    strategy = distribute.build_strategy(config.train.strategy)
    distribute.global_batch_check(config.data.batch_size, strategy)
    keras.utils.set_random_seed(config.data.seed)
    split = None
    if config.stage == "fine_tuning":
        _, split = fine_tuning.resolve_fine_tuning(config)
        index = data_lib.index_from_split(config.data, split, "--init_from",
                                          progress=progress)
    else:
        index = data_lib.index_source(config.data, progress=progress)
    train_ds, _, _ = data_lib.build_datasets(config.data, index)
    policy = precision.resolve_policy(config.train.mixed_precision, strategy)
    t = config.train
    schedule = keras.optimizers.schedules.ExponentialDecay(
        min_lr, decay_steps=1, decay_rate=(max_lr / min_lr) ** (1.0 / (steps - 1)))
    with precision.policy_scope(policy), strategy.scope():
        if config.stage == "fine_tuning":
            model = models.load_for_fine_tuning(config.model.init_from, policy)
            models.unfreeze_top(model, config.model.backbone, config.model.fine_tune_layers)
        else:
            model = models.build_model(config, index.num_classes)
        optimizer = models.training_optimizer(schedule, t.optimizer, t.weight_decay,
                                              t.momentum)
        models.compile_model(model, index.num_classes, schedule, optimizer=optimizer)
    recorder = _LossRecorder(schedule)
    model.fit(train_ds.repeat(), epochs=1, steps_per_epoch=steps, verbose=0,
              callbacks=[recorder], shuffle=False)
    suggestion = suggest(recorder.rates, recorder.smoothed)
    result = {"stage": config.stage, "min_lr": min_lr, "max_lr": max_lr,
              "steps": len(recorder.rates), "optimizer": t.optimizer,
              "strategy": type(strategy).__name__,
              "replicas": int(strategy.num_replicas_in_sync),
              "suggested_learning_rate": suggestion["steepest"], **suggestion,
              "rates": recorder.rates, "losses": recorder.losses,
              "smoothed_losses": recorder.smoothed}
    os.makedirs(t.model_dir, exist_ok=True)
    fileio.write_json(os.path.join(t.model_dir, JSON_FILE), result)
    figures.lr_range_test(recorder.rates, recorder.smoothed, suggestion["steepest"],
                          os.path.join(t.model_dir, PNG_FILE),
                          title=f"{config.stage}: learning-rate range test")
    logging.info("Learning-rate range test of %s: suggested --learning_rate=%.3g "
                 "(steepest descent; minimum loss / 10: %.3g); results in %s",
                 config.stage, suggestion["steepest"], suggestion["min_loss_over_10"],
                 t.model_dir)
    return result
