"""Is the input the bottleneck? A run's model training speed, next to catdog's input.

:func:`time_train_step` times the training step of a run's model (forward,
backward and optimizer update, as ``fit`` runs it, compiled as the run
compiled it) on synthetic uint8 batches already in memory, on the present
device; :func:`bottleneck` compares that rate with the rate catdog's input
feeds images and says which of the two limits training.
"""

from __future__ import annotations

import time

import numpy as np
import tensorflow as tf

from catdog import batching
from catdog import config as config_lib
from catdog import fit_wrappers
from catdog import model_io
from catdog import models
from catdog import precision


def load_run(model_dir: str):
    """The model and config.json of a training run; ValueError naming ``--model_dir``."""
    try:
        return model_io.load_catdog_model(model_dir)
    except (FileNotFoundError, ValueError) as error:
        raise ValueError(f"`--model_dir` must be a finished catdog run: {error} "
                         f"Received: model_dir={model_dir!r}") from error


def run_shape(model, config: dict, image_size=None, batch_size=None):
    """``(image_size, batch_size)`` to time: the run's, unless given.

    Raises:
      ValueError: ``image_size`` differs from the model's fixed input size.
    """
    try:
        size = model_io.agree_image_size(
            image_size, model_io.model_image_size(model)
            or model_io.image_size_from_config(config, "config.json"))
    except ValueError as error:
        raise ValueError(f"`--image_size`: {error}") from error
    if batch_size is None:
        batch_size = int((config.get("data") or {}).get("batch_size")
                         or config_lib.DataConfig().batch_size)
    return size, batch_size


def time_train_step(model, config: dict, image_size, batch_size: int, steps: int = 10,
                    warmup: int = 2) -> dict:
    """Images/s of the run's training step on in-memory synthetic batches.

    The model is compiled as training compiles it (:func:`catdog.models.compile_model`
    with the run's learning rate, XLA setting and dtype policy, through
    :func:`catdog.fit_wrappers.xla_training_model`), so each step is one
    forward pass, backward pass and optimizer update, as ``fit`` runs them.
    ``warmup`` steps (tracing, first allocations) are not timed. Training
    the copy changes only the weights in memory; nothing is written.

    Args:
      model: the run's Keras model.
      config: its config.json.
      image_size: ``(height, width)`` of the batches.
      batch_size: images per step.
      steps: timed steps (>= 1).
      warmup: untimed steps first.

    Returns:
      ``model_train_img_per_s``, the steps and seconds timed, the device and
      the XLA note of the run's setting.
    """
    num_classes = len(config["class_names"])
    train = config.get("train") or {}
    defaults = config_lib.TrainConfig()
    gpu = bool(tf.config.list_physical_devices("GPU"))
    policy = config.get("dtype_policy") or models.dtype_policy_name(model)
    if "," in policy:  # layers under several policies: each keeps its own
        policy = model.dtype_policy.name
    with precision.policy_scope(policy):
        train_model, jit, note = fit_wrappers.xla_training_model(
            model, str(train.get("jit_compile") or defaults.jit_compile), gpu, 1)
        models.compile_model(train_model, num_classes,
                             float(train.get("learning_rate") or defaults.learning_rate),
                             jit_compile=jit)
    rng = np.random.default_rng(0)
    images = tf.constant(rng.integers(0, 256, (batch_size, *image_size, 3), np.uint8))
    labels = batching.encode_labels(rng.integers(0, num_classes, batch_size), num_classes)
    for _ in range(warmup):
        train_model.train_on_batch(images, labels)
    start = time.perf_counter()
    for _ in range(steps):
        # Returns the losses as numbers, so every step has finished when timed.
        train_model.train_on_batch(images, labels)
    seconds = time.perf_counter() - start
    return {"model_train_img_per_s": round(steps * batch_size / seconds, 1),
            "model_train_steps": steps, "model_train_seconds": round(seconds, 3),
            "model_device": "GPU" if gpu else "CPU", "model_xla": note,
            "model_dtype_policy": policy}


def bottleneck(input_rate, model_rate, cached_rate=None) -> dict:
    """Which of catdog's input and the model limits training, as figures and a line.

    Args:
      input_rate: images/s catdog's input delivers in its first epoch.
      model_rate: images/s the model trains at, input aside.
      cached_rate: images/s from catdog's cache (later epochs), if timed.
    """
    input_limits = model_rate > input_rate
    if input_limits:
        verdict = (f"input is the bottleneck: the model could train "
                   f"{model_rate / input_rate:.1f}x faster than catdog feeds it")
    else:
        verdict = (f"the model is the bottleneck: catdog feeds it "
                   f"{input_rate / model_rate:.1f}x faster than it trains")
    verdict += (f" (first epoch: input {input_rate:,.0f} images/s, model "
                f"{model_rate:,.0f} images/s")
    if cached_rate:
        verdict += (f"; later epochs read catdog's cache at {cached_rate:,.0f} images/s: "
                    + ("the input limits them" if cached_rate < model_rate
                       else "the model limits them"))
    verdict += ")"
    return {"bottleneck": "input" if input_limits else "model",
            "bottleneck_verdict": verdict,
            # Four significant digits: a slow model's ratio can be 0.0005.
            "ratio_model_vs_input": float(f"{model_rate / input_rate:.4g}"),
            "ratio_model_vs_cached_input": (float(f"{model_rate / cached_rate:.4g}")
                                            if cached_rate else None)}
