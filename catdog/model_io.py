"""Loading trained and exported catdog models, their checks, and their probabilities.

The one place that turns a model on disk into something to call:

* a training run's ``model_dir`` (``model.keras`` + ``config.json``), loaded
  with :func:`load_catdog_model` / :func:`load_for_inference`;
* a SavedModel written by :func:`catdog.export.export_saved_model`, loaded
  with :func:`load_saved_model` and called through its ``serve_images``
  signature.

Prediction, evaluation and export all load and check models here, and
:func:`probabilities_fn` is the one place model outputs become class
probabilities.
"""

from __future__ import annotations

import importlib.util
import json
import os
from typing import Sequence

import keras
import tensorflow as tf

from catdog import decode
from catdog import errors
from catdog import rundir

#: Signature of an exported SavedModel that takes decoded uint8 images.
IMAGES_SIGNATURE = "serve_images"
#: Variable collection of an exported SavedModel recording its decode options (JSON).
DECODE_OPTIONS_COLLECTION = "catdog_decode_options"


def config_decode_options(config: dict) -> decode.DecodeOptions:
    """The decode options a run's parsed ``config.json`` records.

    A setting missing from it (a run of an older catdog) is that version's
    decode (:data:`catdog.decode.LEGACY_OPTIONS`), the pixels it trained on.
    """
    return decode.options_of((config or {}).get("data") or {})


def model_decode_options(model, options: decode.DecodeOptions | None = None
                         ) -> decode.DecodeOptions:
    """``options`` checked against ``model``'s input channels.

    Without ``options`` (a bare ``keras.Model``): catdog's default decode
    with the color mode of the model's channels (1: grayscale, 3: rgb).

    Raises:
      ValueError: the recorded color mode decodes to other channels than
        the model takes.
    """
    channels = int(model.inputs[0].shape[-1])
    if options is None:
        return decode.DecodeOptions(color_mode="grayscale" if channels == 1 else "rgb")
    if options.channels != channels:
        raise ValueError(
            f"The model takes {channels}-channel images, but its config.json records "
            f"color_mode={options.color_mode!r} ({options.channels} channels); the "
            "model dir is inconsistent: export or predict with the model_dir the "
            "model was trained in.")
    return options


def saved_model_decode_options(loaded) -> decode.DecodeOptions:
    """The decode options an exported SavedModel's ``serving_default`` uses.

    A SavedModel exported by an older catdog records none: its decode was
    :data:`catdog.decode.LEGACY_OPTIONS`.
    """
    collection = getattr(loaded, DECODE_OPTIONS_COLLECTION, None)
    if not collection:
        return decode.LEGACY_OPTIONS
    return decode.options_of(json.loads(collection[0].numpy().decode("utf-8")))


def load_catdog_model(model_dir) -> tuple[keras.Model, dict]:
    """Loads the Keras model and config a catdog training run wrote.

    Custom layers of ``catdog.models`` are registered first (when that module
    exists), and the model is loaded with ``safe_mode=True`` so a model file
    cannot run arbitrary Python (``Lambda`` layers) on load.

    Args:
      model_dir: folder holding ``model.keras`` and ``config.json``.

    Returns:
      ``(model, config)``: the ``keras.Model`` and the parsed ``config.json``
      dict, whose ``class_names`` has been checked to be a list of at least
      two strings.

    Raises:
      FileNotFoundError: ``model_dir``, its ``model.keras`` or its
        ``config.json`` does not exist.
      ValueError: ``config.json`` is not valid JSON or has no usable
        ``class_names``, or ``model.keras`` is not a loadable Keras model.
    """
    model_dir = os.fspath(model_dir)
    if not os.path.isdir(model_dir):
        what = "is a file, not a folder" if os.path.exists(model_dir) else "does not exist"
        raise FileNotFoundError(
            f"model_dir {model_dir!r} {what}. Pass the folder a catdog training "
            f"run wrote (it holds {rundir.MODEL_FILE} and {rundir.CONFIG_FILE}).")
    model_path = os.path.join(model_dir, rundir.MODEL_FILE)
    config_path = os.path.join(model_dir, rundir.CONFIG_FILE)
    if not os.path.isfile(model_path):
        hint = ""
        if os.path.isfile(os.path.join(model_dir, "saved_model.pb")):
            hint = (" It holds an exported SavedModel: load that with "
                    "tf.saved_model.load or pass it as --saved_model.")
        raise FileNotFoundError(
            f"No {rundir.MODEL_FILE} in model_dir {model_dir!r}.{hint} Pass the "
            "folder a catdog training run wrote, after training has finished.")
    if not os.path.isfile(config_path):
        raise FileNotFoundError(
            f"No {rundir.CONFIG_FILE} in model_dir {model_dir!r}: this is not a "
            "catdog model folder (the config holds the class names and image "
            "size). Pass the folder a catdog training run wrote.")
    config = _read_config(config_path)

    _register_catdog_layers()
    try:
        model = keras.models.load_model(model_path, safe_mode=True)
    except Exception as error:  # Keras raises many types for a bad file.
        raise ValueError(
            f"{model_path!r} is not a loadable Keras model: "
            f"{errors.first_line(error)}. Re-run training to write it again; models "
            "with Lambda layers are refused because they are loaded with "
            "safe_mode=True.") from error
    if not isinstance(model, keras.Model):
        raise ValueError(
            f"{model_path!r} holds a {type(model).__name__}, not a keras.Model.")
    check_model_outputs(model, config["class_names"], source=model_path)
    return model, config


def load_for_inference(model_dir, *, image_size=None, class_names=None):
    """Loads a training run with the image size and class names to use.

    Explicit values are checked against the run rather than silently
    overriding it: predicting at another size, or with reordered names,
    gives wrong answers without any error.

    Args:
      model_dir: folder holding ``model.keras`` and ``config.json``.
      image_size: optional ``(height, width)``; must equal the config's
        ``data.image_size`` and the model's fixed input size, when known.
      class_names: optional class names; must equal the config's.

    Returns:
      ``(model, config, image_size, class_names)``.

    Raises:
      FileNotFoundError, ValueError: as :func:`load_catdog_model`, or when an
        explicit value disagrees with the run.
    """
    model, config = load_catdog_model(model_dir)
    config_path = os.path.join(os.fspath(model_dir), rundir.CONFIG_FILE)
    if class_names is not None and list(class_names) != config["class_names"]:
        raise ValueError(
            f"class_names={list(class_names)} differs from "
            f"{config['class_names']} in {config_path!r}, which the model was "
            "trained with; leave class_names out to use the config's.")
    if (config.get("data") or {}).get("image_size") is not None:
        trained_size = image_size_from_config(config, config_path)
        if image_size is not None and checked_image_size(image_size) != trained_size:
            raise ValueError(
                f"image_size={list(image_size)} differs from {list(trained_size)} "
                f"in {config_path!r}, which the model was trained at; leave "
                "image_size out to use the config's.")
        image_size = trained_size
    image_size = resolve_image_size(image_size, model)
    return model, config, image_size, list(config["class_names"])


def resolve_image_size(image_size, model) -> tuple[int, int]:
    """Returns the image size to feed ``model``, checked against its input.

    Args:
      image_size: ``(height, width)`` or None to use the model's fixed input
        size.
      model: a built ``keras.Model``.

    Raises:
      ValueError: ``image_size`` is invalid, differs from the model's fixed
        input size, or is None while the model accepts any size.
    """
    return agree_image_size(image_size, model_image_size(model))


def load_saved_model(saved_model_dir):
    """Loads a SavedModel exported by catdog, with plain ``tf.saved_model.load``.

    Args:
      saved_model_dir: the SavedModel folder, or an export base folder whose
        numeric version subfolders TF Serving would read (the highest
        version is loaded).

    Returns:
      The loaded object; ``.signatures["serve_images"]`` and
      ``.signatures["serving_default"]`` are the exported signatures.

    Raises:
      FileNotFoundError: no SavedModel at ``saved_model_dir``.
      ValueError: it is not loadable or has no ``serve_images`` signature.
    """
    saved_model_dir = os.fspath(saved_model_dir)
    resolved = find_saved_model(saved_model_dir)
    if resolved is None:
        hint = ""
        if tf.io.gfile.exists(os.path.join(saved_model_dir, rundir.MODEL_FILE)):
            hint = " It is a training model_dir: pass it as --model_dir."
        raise FileNotFoundError(
            f"No SavedModel in {saved_model_dir!r} (no saved_model.pb there or "
            f"in a numeric version subfolder).{hint} Pass a folder written by "
            "scripts/export.py.")
    try:
        loaded = tf.saved_model.load(resolved)
    except Exception as error:  # TF raises several types for a bad SavedModel.
        raise ValueError(
            f"{resolved!r} is not a loadable SavedModel: {errors.first_line(error)}. "
            "Export it again with scripts/export.py.") from error
    if IMAGES_SIGNATURE not in getattr(loaded, "signatures", {}):
        raise ValueError(
            f"The SavedModel {resolved!r} has no {IMAGES_SIGNATURE!r} "
            "signature, so it was not exported by catdog; export the model "
            "with scripts/export.py.")
    return loaded


def image_size_from_config(config: dict, source: str = "config") -> tuple[int, int]:
    """Returns ``config["data"]["image_size"]`` as a checked ``(height, width)``.

    Args:
      config: a parsed catdog ``config.json``.
      source: name of the config file, used in error messages.

    Raises:
      ValueError: the entry is missing or not two positive integers.
    """
    size = (config.get("data") or {}).get("image_size")
    if size is None:
        raise ValueError(f"{source} has no data.image_size; pass image_size explicitly.")
    return checked_image_size(size, f"data.image_size in {source}")


def checked_image_size(image_size, name: str = "image_size") -> tuple[int, int]:
    """Validates an image size and returns it as ``(height, width)`` ints.

    Args:
      image_size: a pair of positive integers.
      name: what to call the value in the error message.

    Raises:
      ValueError: ``image_size`` is not a pair of positive integers.
    """
    try:
        height, width = (int(v) for v in image_size)
        valid = height > 0 and width > 0 and all(
            float(v) == int(v) for v in image_size)
    except (TypeError, ValueError):
        valid = False
    if not valid:
        raise ValueError(
            f"{name} must be two positive integers (height, width). "
            f"Received: {name}={image_size!r}")
    return height, width


def check_model_outputs(model, class_names: Sequence[str], source: str = "model") -> int:
    """Checks that ``model`` has one classification output for ``class_names``.

    A binary model outputs ``(N, 1)`` (sigmoid probability of
    ``class_names[1]``); a C-class model outputs ``(N, C)`` softmax.

    Args:
      model: a built ``keras.Model``.
      class_names: the class names, in label order.
      source: what to call the model in error messages.

    Returns:
      The number of classes.

    Raises:
      ValueError: the model is not built, has several outputs, or its output
        width does not match ``class_names``.
    """
    check_class_names(class_names, "class_names")
    try:
        outputs = model.outputs
    except (AttributeError, ValueError):
        outputs = None
    if not outputs:
        raise ValueError(
            f"{source} is not built (it has no inputs/outputs yet); build it "
            "with keras.Input(...) or call it on a batch first.")
    if len(outputs) != 1:
        raise ValueError(f"{source} has {len(outputs)} outputs; catdog models have one.")
    width = outputs[0].shape[-1]
    expected = 1 if len(class_names) == 2 else len(class_names)
    if width != expected and not (len(class_names) == 2 and width == 2):
        raise ValueError(
            f"{source} outputs {width} value(s) per image but there are "
            f"{len(class_names)} class_names {list(class_names)}: a binary model "
            "outputs 1 (sigmoid of class_names[1]), a C-class model outputs C.")
    return len(class_names)


def model_image_size(model) -> tuple[int, int] | None:
    """Returns the fixed ``(height, width)`` of ``model``'s input, if any."""
    shape = tuple(model.inputs[0].shape)
    if len(shape) != 4 or shape[-1] not in (1, 3):
        raise ValueError(
            f"The model input has shape {shape}; catdog models take image "
            "batches of shape (N, height, width, 3), or (N, height, width, 1) "
            "for --color_mode=grayscale.")
    if shape[1] is None or shape[2] is None:
        return None
    return int(shape[1]), int(shape[2])


def probabilities_fn(model, num_classes: int):
    """Returns a function mapping a uint8 image batch to class probabilities.

    This is the one place model outputs become probabilities, shared by
    prediction and by the exported serving signatures.

    Args:
      model: a ``keras.Model`` taking ``(N, H, W, 3)`` pixels in 0..255.
      num_classes: number of classes (2 for a sigmoid model).

    Returns:
      A function ``images -> float32 (N, num_classes)`` tensor. A sigmoid
      output ``p`` becomes ``[1 - p, p]`` so every model answers the same way.
      An empty batch gives ``(0, num_classes)`` without running the model:
      oneDNN on some CPUs cannot convolve or multiply zero images.
    """
    input_dtype = model.inputs[0].dtype

    def run_model(images):
        # The model rescales / preprocesses itself; it only needs its dtype.
        outputs = model(tf.cast(images, input_dtype), training=False)
        outputs = tf.cast(outputs, tf.float32)  # mixed-precision heads
        if num_classes == 2 and outputs.shape[-1] == 1:
            outputs = tf.concat([1.0 - outputs, outputs], axis=-1)
        return outputs

    def probabilities(images):
        images = tf.convert_to_tensor(images)
        return tf.cond(tf.shape(images)[0] > 0, lambda: run_model(images),
                       lambda: tf.zeros([0, num_classes], tf.float32))

    return probabilities


def find_saved_model(path: str) -> str | None:
    """Returns the SavedModel folder ``path`` names, or None for a model_dir.

    An export base folder (numeric version subfolders, as TF Serving reads
    them) resolves to its highest version.
    """
    if tf.io.gfile.exists(os.path.join(path, "saved_model.pb")):
        return path
    if not tf.io.gfile.isdir(path) or tf.io.gfile.exists(os.path.join(path, rundir.MODEL_FILE)):
        return None
    versions = [int(n.rstrip("/")) for n in tf.io.gfile.listdir(path)
                if n.rstrip("/").isdigit()
                and tf.io.gfile.exists(os.path.join(path, n.rstrip("/"), "saved_model.pb"))]
    if versions:
        return os.path.join(path, str(max(versions)))
    return None


def agree_image_size(requested, from_model):
    """Reconciles a requested image size with the model's fixed input size."""
    if from_model is not None and None in from_model:
        from_model = None
    if from_model is not None:
        from_model = (int(from_model[0]), int(from_model[1]))
    if requested is None:
        if from_model is None:
            raise ValueError(
                "image_size is required: the model accepts any input size, so "
                "pass the (height, width) it was trained at.")
        return from_model
    requested = checked_image_size(requested)
    if from_model is not None and requested != from_model:
        raise ValueError(
            f"image_size {requested} differs from the model's input size "
            f"{from_model}; pass image_size={from_model} or leave it out.")
    return requested


def check_class_names(class_names, name: str) -> None:
    if (isinstance(class_names, (str, bytes)) or not isinstance(class_names, Sequence)
            or len(class_names) < 2
            or not all(isinstance(n, str) and n for n in class_names)
            or len(set(class_names)) != len(class_names)):
        raise ValueError(
            f"{name} must be a list of at least two distinct non-empty strings, "
            f"in label order. Received: {name}={class_names!r}")


def _read_config(config_path: str) -> dict:
    config = rundir.read_config(os.path.dirname(config_path))
    if not isinstance(config, dict) or "class_names" not in config:
        raise ValueError(
            f"{config_path!r} has no 'class_names': this is not a catdog model "
            "config. Pass the folder a catdog training run wrote.")
    check_class_names(config["class_names"], f"class_names in {config_path!r}")
    return config


def _register_catdog_layers() -> None:
    """Imports ``catdog.models`` so its custom layers can be deserialized.

    Only a *missing* module is tolerated; an import error inside an existing
    ``catdog.models`` is a real bug and propagates.
    """
    if importlib.util.find_spec("catdog.models") is not None:
        importlib.import_module("catdog.models")
