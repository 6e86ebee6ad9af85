"""Prediction on image files with a trained or exported catdog model.

Two kinds of model are accepted and give the same answers:

* a training run's ``model_dir`` (``model.keras`` + ``config.json``), loaded
  with :func:`catdog.model_io.load_for_inference`;
* a SavedModel written by :func:`catdog.export.export_saved_model`, called
  through its ``serve_images`` signature, so the probabilities are exactly
  those the served model returns.

Every file is read and decoded on its own, with
:func:`catdog.data.decode_and_resize` (the decode used in training, with the
decode options the model dir's ``config.json`` or the SavedModel records), so
one unreadable file becomes one error row instead of ending the run; decoded
images are then sent to the model in batches.
"""

from __future__ import annotations

import os
from typing import Iterable, Sequence

import keras
import numpy as np
import tensorflow as tf

from catdog import decode
from catdog import errors
from catdog import fileio
from catdog import model_io
from catdog import rundir
from catdog import scan
from catdog.data import decode_and_resize
# Re-exported: prediction expands files and folders as the pictures do.
from catdog.image_paths import expand_paths
# Re-exported: model loading and checks moved to catdog.model_io.
from catdog.model_io import (IMAGES_SIGNATURE, check_model_outputs,  # noqa: F401
                             checked_image_size, image_size_from_config,
                             load_catdog_model, load_for_inference,
                             load_saved_model, model_image_size,
                             probabilities_fn, resolve_image_size)

#: File extensions treated as images when a folder is expanded (lower case).
IMAGE_EXTENSIONS = scan.IMAGE_EXTENSIONS

#: Names of the files a training run writes into its model_dir.
MODEL_FILENAME = rundir.MODEL_FILE
CONFIG_FILENAME = rundir.CONFIG_FILE


def predict_files(model_or_saved_model, paths: Iterable, *, image_size=None,
                  class_names: Sequence[str] | None = None,
                  batch_size: int = 32, threshold: float = 0.5) -> list[dict]:
    """Classifies image files, one row per file, errors included.

    Args:
      model_or_saved_model: one of

        * a ``keras.Model`` (then ``class_names`` is required, and
          ``image_size`` unless the model input has a fixed size);
        * a SavedModel loaded with ``tf.saved_model.load`` from
          :func:`catdog.export.export_saved_model` (image size and class
          names come from its ``serve_images`` signature);
        * a path: a training ``model_dir``, an exported SavedModel folder, or
          an export base folder (its highest numeric version is used).
      paths: image files and/or folders (expanded by :func:`expand_paths`).
      image_size: ``(height, width)`` to resize to; must match the model's.
      class_names: class names in label order; must match the model's.
      batch_size: images per model call.
      threshold: multi-label models (trained with ``--label_separator``):
        the labels whose probability is above this are predicted.

    Returns:
      A list of dicts ``{"path", "class", "probability", "error"}`` in input
      order. ``probability`` is the probability of the predicted ``class``.
      A multi-label model's rows also hold ``probabilities`` (``{label:
      probability}``, every label) and ``labels`` (those above
      ``threshold``, in label order); ``class`` is then the most probable label.
      For an unreadable file (missing, empty, truncated, not an image)
      ``class`` and ``probability`` are None and ``error`` says why;
      otherwise ``error`` is None.

    Raises:
      ValueError, FileNotFoundError: a bad model, ``image_size``,
        ``class_names`` or ``batch_size``.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) \
            or batch_size < 1:
        raise ValueError(
            f"batch_size must be a positive integer. Received: batch_size={batch_size!r}")
    if not 0.0 < float(threshold) < 1.0:
        raise ValueError(f"threshold must be strictly between 0 and 1. "
                         f"Received: threshold={threshold!r}")
    predict_batch, image_size, options = _make_predictor(
        model_or_saved_model, image_size, class_names, float(threshold))

    rows: list[dict] = []
    pending: list[tuple[dict, np.ndarray]] = []

    def flush():
        if not pending:
            return
        batch = np.stack([image for _, image in pending])
        for (row, _), answer in zip(pending, predict_batch(batch)):
            row.update(answer)
        pending.clear()

    for path, error in expand_paths(paths):
        row = {"path": path, "class": None, "probability": None, "error": error}
        rows.append(row)
        if error is None:
            image, row["error"] = _read_and_decode(path, image_size, options)
            if image is not None:
                pending.append((row, image))
                if len(pending) >= batch_size:
                    flush()
    flush()
    return rows


def _read_and_decode(path: str, image_size, options: decode.DecodeOptions):
    """Returns ``(uint8 image, None)`` or ``(None, reason)`` for one file.

    Eager on purpose: an error belongs to exactly one file, and decoding
    dominates anyway (a few ms per photo; a tf.function was no faster).
    """
    try:
        # open() for a local file: its name need not be valid UTF-8.
        with fileio.open_binary(path) as f:
            contents = f.read()
    except (OSError, tf.errors.OpError) as error:
        return None, f"cannot read file: {errors.first_line(error)}"
    if not contents:
        return None, "empty file (0 bytes)"
    try:
        return decode_and_resize(tf.constant(contents), image_size, options).numpy(), None
    except tf.errors.OpError as error:
        return None, (f"not a readable JPEG/PNG/GIF/BMP image ({len(contents)} "
                      f"bytes): {errors.first_line(error)}")


def _answers(names, probs, multi_label, threshold):
    """The row fields of each image: the most probable class, and label sets."""
    best = probs.argmax(axis=1)  # ties go to the first class, as tf.argmax
    out = [{"class": names[i], "probability": float(p[i])} for i, p in zip(best, probs)]
    if multi_label:
        for row, p in zip(out, probs):
            row["probabilities"] = {n: float(q) for n, q in zip(names, p)}
            row["labels"] = [n for n, q in zip(names, p) if q > threshold]
    return out


def _make_predictor(model_or_saved_model, image_size, class_names, threshold=0.5):
    """Returns ``(predict_batch, image_size, decode_options)`` for any accepted model form.

    ``predict_batch(uint8 batch)`` yields the row fields of each image (see
    :func:`_answers`). The decode options are those the model was trained
    (model_dir) or exported (SavedModel) with; a bare ``keras.Model`` gets
    ``DecodeOptions()``, catdog's default.
    """
    source = model_or_saved_model
    options = decode.DecodeOptions()
    multi_label = False
    if isinstance(source, (str, os.PathLike)):
        source = os.fspath(source)
        if model_io.find_saved_model(source) is None:
            source, config, image_size, class_names = model_io.load_for_inference(
                source, image_size=image_size, class_names=class_names)
            options = model_io.model_decode_options(
                source, model_io.config_decode_options(config))
            multi_label = bool(config.get("multi_label"))
        else:
            source = model_io.load_saved_model(source)

    if isinstance(source, keras.Model):
        if class_names is None:
            raise ValueError(
                "class_names is required to predict with a keras.Model; pass "
                "the model_dir instead to read them from its config.json.")
        num_classes = model_io.check_model_outputs(source, class_names)
        image_size = model_io.resolve_image_size(image_size, source)
        if not isinstance(model_or_saved_model, (str, os.PathLike)):
            options = model_io.model_decode_options(source)
        # A fixed signature: the short last batch does not retrace.
        probabilities = tf.function(
            model_io.probabilities_fn(source, num_classes),
            input_signature=[tf.TensorSpec([None, *image_size, options.channels],
                                           tf.uint8)])
        names = [str(n) for n in class_names]

        def predict_batch(batch):
            probs = probabilities(tf.constant(batch)).numpy()
            return _answers(names, probs, multi_label, threshold)

        return predict_batch, image_size, options

    signatures = getattr(source, "signatures", None)
    if signatures is None or model_io.IMAGES_SIGNATURE not in signatures:
        raise ValueError(
            f"Cannot predict with a {type(source).__name__}: expected a "
            "keras.Model, a model_dir, or a SavedModel exported by catdog "
            f"(with a {model_io.IMAGES_SIGNATURE!r} signature).")
    serve_images = signatures[model_io.IMAGES_SIGNATURE]
    spec = serve_images.structured_input_signature[1]["images"]
    image_size = model_io.agree_image_size(image_size, (spec.shape[1], spec.shape[2]))
    if class_names is not None:
        model_io.check_class_names(class_names, "class_names")
        blank = tf.zeros((1, *image_size, spec.shape[3]), tf.uint8)
        exported = [n.decode() for n in serve_images(images=blank)["class_names"][0].numpy()]
        if list(class_names) != exported:
            raise ValueError(
                f"class_names {list(class_names)} differ from the SavedModel's "
                f"{exported}; leave class_names out to use the SavedModel's.")

    def predict_batch(batch):
        out = serve_images(images=tf.constant(batch))
        probs = out["probabilities"].numpy()
        names = [n.decode() for n in out["class_names"].numpy()[0]]
        return _answers(names, probs, "multi_label" in out, threshold)

    return predict_batch, image_size, model_io.saved_model_decode_options(source)
