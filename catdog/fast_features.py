"""Fast feature extraction: run the frozen backbone once, train the head on its output.

In stage 3 only the head trains; the backbone is frozen and, without
augmentation, sees the same pixels every epoch. So it runs ONCE over the
training and validation images, its outputs are kept in memory, and every
epoch trains the head on them: an epoch costs a few small matrix products
instead of a full backbone forward pass per image.

The price is augmentation: features of fixed images cannot be augmented, so
the head trains on unaugmented images (:func:`fit_head_on_features` warns
when the model has an augmentation block). The model trained is the FULL
model: the head model shares its layers, so the head weights it learns are
the full model's, and ``model.keras`` (written by the run's checkpoint
callback, redirected to the full model) is ``[augmentation] -> preprocess ->
backbone -> head`` exactly as on the slow path. Fine-tuning, evaluation,
export and prediction use it unchanged; fine-tuning then augments again
through the augmentation block the saved model still carries.
"""

from __future__ import annotations

import contextlib
import os
import time

from absl import logging
import keras
import numpy as np
import tensorflow as tf

from catdog import augment
from catdog import distribute
from catdog import fileio
from catdog import fit_wrappers
from catdog import models
from catdog import rundir
from catdog import tfdata

FEATURES_FILE = rundir.FEATURES_FILE

_HOOKS = ("on_batch_begin", "on_batch_end", "on_epoch_begin", "on_epoch_end",
          "on_train_batch_begin", "on_train_batch_end", "on_test_batch_begin",
          "on_test_batch_end", "on_predict_batch_begin", "on_predict_batch_end",
          "on_train_begin", "on_train_end", "on_test_begin", "on_test_end",
          "on_predict_begin", "on_predict_end")


def split_transfer_model(model: keras.Model):
    """Splits a stage-3 model into a feature model and a head model.

    The feature model is ``preprocess -> backbone`` (in inference mode) followed
    by the weightless, deterministic layers right after the backbone (the
    global pooling, or the flatten), so what is cached is as small as the
    head allows. The augmentation block is left out. The head model is the
    rest (dropout and the last Dense), on an input of the feature shape.
    Both reuse the full model's layer objects: training the head model
    trains the full model's head.

    Args:
      model: a model from :func:`catdog.models.build_transfer`.

    Returns:
      ``(feature_model, head_model)``.

    Raises:
      ValueError: ``model`` has no nested backbone.
    """
    backbone = models.backbone_layer(model)
    layers = model.layers
    start = layers.index(backbone)
    pre = [layer for layer in layers[1:start]
           if isinstance(layer, models.Preprocess)]
    after = layers[start + 1:]
    split = 0
    while (split < len(after) and not after[split].weights
           and not isinstance(after[split], keras.layers.Dropout)):
        split += 1

    inputs = keras.Input(shape=model.input_shape[1:], name="image")
    x = inputs
    for layer in pre:
        x = layer(x)
    x = backbone(x, training=False)
    for layer in after[:split]:
        x = layer(x)
    feature_model = keras.Model(inputs, x, name="features")

    head_in = keras.Input(shape=tuple(x.shape[1:]), name="features")
    y = head_in
    for layer in after[split:]:
        y = layer(y)
    head_model = keras.Model(head_in, y, name="head")
    return feature_model, head_model


def extract_features(feature_model: keras.Model, dataset: tf.data.Dataset):
    """Runs ``feature_model`` once over ``dataset`` of ``(images, labels)`` batches.

    Returns:
      ``(features, labels)`` numpy arrays; features are float32 whatever the
      dtype policy (the head computes in float32 at its last layer anyway).
      Empty batches are skipped: oneDNN on some CPUs cannot convolve zero
      images.
    """
    @tf.function(reduce_retracing=True)
    def step(images):
        return tf.cast(feature_model(images, training=False), tf.float32)

    feats, labels = [], []
    for images, y in dataset:
        if images.shape[0] == 0:
            continue
        feats.append(step(images).numpy())
        labels.append(y.numpy())
    if not feats:
        raise ValueError("No images to extract features from (empty dataset).")
    return np.concatenate(feats), np.concatenate(labels)


class _OnFullModel(keras.callbacks.Callback):
    """Runs a callback against the full model while ``fit`` trains the head.

    A ``ModelCheckpoint`` wrapped in it saves the FULL model (whose head
    layers are the ones being trained), not the head-only model ``fit`` sees.
    """

    def __init__(self, inner: keras.callbacks.Callback, full_model: keras.Model):
        super().__init__()
        self.inner = inner
        self.full_model = full_model

    def set_model(self, model):
        super().set_model(model)
        self.inner.set_model(self.full_model)

    def set_params(self, params):
        super().set_params(params)
        self.inner.set_params(params)


def _delegate(name):
    def hook(self, *args, **kwargs):
        return getattr(self.inner, name)(*args, **kwargs)
    hook.__name__ = name
    return hook


for _name in _HOOKS:
    setattr(_OnFullModel, _name, _delegate(_name))


def fit_head_on_features(model: keras.Model, train_images: tf.data.Dataset,
                         val_ds: tf.data.Dataset, config, num_classes: int,
                         callbacks=(), strategy=None, class_weight=None,
                         make_optimizer=None, top_k: int = 0, epochs=None) -> dict:
    """Trains the head of a stage-3 ``model`` on features computed once.

    Args:
      model: the full stage-3 model (built, backbone frozen).
      train_images: the training images ONCE, unshuffled, last batch kept
        (:func:`catdog.data.build_split` with ``training=False``).
      val_ds: validation batches.
      config: the run's :class:`catdog.config.Config` (batch size, seed,
        epochs, learning rate, jit, verbosity, model dir).
      num_classes: number of classes (loss and metrics).
      callbacks: the run's callbacks; each ``ModelCheckpoint`` saves the
        full model, the others see the head model.
      strategy: the run's ``tf.distribute`` strategy (head compiled in its scope).
      class_weight: ``{label: weight}`` for the training loss, or ``None``.
      make_optimizer: returns the run's optimizer (default: Adam at the
        config's rate); the head trains with it, as the slow path would.
      top_k: k of the ``top_k_accuracy`` metric; 0: off.
      epochs: epochs to fit to (default: the config's).

    Returns:
      Timings and sizes, also written to ``model_dir/fast_features.json``
      (by the chief only, atomically):
      ``feature_seconds`` (one backbone pass over train + val),
      ``epoch_seconds`` (per head epoch), feature shape and bytes.
    """
    if any(layer.name == augment.AUGMENTATION_NAME for layer in model.layers):
        logging.warning(
            "--fast_features: the head trains on features of UNAUGMENTED images "
            "(features are computed once). The augmentation block stays in the "
            "saved model (inactive at inference; fine-tuning uses it). For "
            "augmentation with a frozen backbone, leave --fast_features off.")
    feature_model, head_model = split_transfer_model(model)
    t0 = time.perf_counter()
    train_x, train_y = extract_features(feature_model, train_images)
    val_x, val_y = extract_features(feature_model, val_ds)
    feature_seconds = time.perf_counter() - t0
    nbytes = int(train_x.nbytes + val_x.nbytes)
    logging.info("Fast features: %d + %d images -> %s features (%.1f MB) in %.1f s.",
                 len(train_x), len(val_x), train_x.shape[1:], nbytes / 2**20,
                 feature_seconds)

    d, t = config.data, config.train
    if len(train_x) < d.batch_size:
        raise ValueError(f"`--batch_size` {d.batch_size} is larger than the "
                         f"{len(train_x)} training images.")
    train_ds = (tf.data.Dataset.from_tensor_slices((train_x, train_y))
                .shuffle(len(train_x), seed=d.seed, reshuffle_each_iteration=True)
                .batch(d.batch_size, drop_remainder=True)
                .prefetch(tf.data.AUTOTUNE))
    train_ds = tfdata.finish(train_ds)
    head_val = tfdata.finish(
        tf.data.Dataset.from_tensor_slices((val_x, val_y)).batch(d.batch_size), True)

    jit = {"auto": "auto", "true": True, "false": False}[t.jit_compile]
    scope = strategy.scope() if strategy is not None else contextlib.nullcontext()
    if strategy is not None and strategy.num_replicas_in_sync > 1:
        # The last validation batch may leave a replica with zero features.
        head_model = fit_wrappers.empty_batch_safe(head_model)
    with scope:
        models.compile_model(head_model, num_classes, t.learning_rate, jit_compile=jit,
                             optimizer=make_optimizer() if make_optimizer else None,
                             top_k=top_k, steps_per_execution=t.steps_per_execution)

    epoch_seconds = []

    class _EpochTimer(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self._start = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            epoch_seconds.append(time.perf_counter() - self._start)

    wrapped = [_OnFullModel(cb, model) if isinstance(cb, keras.callbacks.ModelCheckpoint)
               else cb for cb in callbacks]
    head_model.fit(train_ds, validation_data=head_val,
                   epochs=t.epochs if epochs is None else epochs,
                   callbacks=[_EpochTimer()] + wrapped, verbose=t.verbose,
                   class_weight=class_weight, shuffle=False)
    report = {"feature_seconds": round(feature_seconds, 3),
              "epoch_seconds": [round(s, 4) for s in epoch_seconds],
              "train_examples": int(len(train_x)), "val_examples": int(len(val_x)),
              "feature_shape": list(train_x.shape[1:]), "feature_bytes": nbytes,
              "augmented": False}
    if t.model_dir and distribute.is_chief(strategy):
        # Only the chief writes into model_dir (every worker of a multi-worker
        # job gets here), and atomically, like the run's other JSON files.
        fileio.write_json(os.path.join(t.model_dir, FEATURES_FILE), report)
    return report

