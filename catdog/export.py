"""Export a trained catdog model as a self-contained SavedModel for serving.

The SavedModel carries its own decoding, so clients send encoded image bytes
and get probabilities and class names back. It needs only TensorFlow to load
(``tf.saved_model.load`` or TF Serving): the Keras model, including any custom
catdog layers, is traced into graphs, so neither Keras nor catdog has to be
importable where it is served.

Signatures:

``serving_default``
    ``image_bytes``: ``tf.string [N]``, encoded JPEG/PNG/GIF/BMP of any size.
    Each image is decoded and resized by :func:`catdog.data.decode_and_resize`
    (the training decode, with the decode options of the model dir's
    ``config.json``, e.g. EXIF orientation; a bare ``keras.Model`` gets
    ``DecodeOptions()``). TF Serving's REST API accepts binary inputs as
    ``{"b64": "..."}`` because the input name ends in ``_bytes``. One
    undecodable image fails the whole request, as a batch op must.
``serve_images``
    ``images``: ``tf.uint8 [N, H, W, C]`` (C: 3, or 1 for a grayscale run),
    already decoded and resized.

Both return ``probabilities`` (``float32 [N, C]``; a binary model's sigmoid
``p`` becomes ``[1 - p, p]``), ``classes`` (``string [N]``, the most probable
class name; ties go to the first class) and ``class_names``
(``string [N, C]``, the names of the probability columns).

Layout: TF Serving loads numeric version folders under a base folder, so by
default (``version="auto"``) ``export_dir`` is that base and each export
writes the next free version, ``export_dir/1``, ``export_dir/2``, ...
``version=<int>`` writes that version, and ``version=None`` writes the
SavedModel into ``export_dir`` itself. Each version holds
``assets.extra/catdog.json`` (class names, image size, decode options,
source model_dir, versions) and, with ``tflite=True``, ``model.tflite``.

Exports are atomic: everything is written into a hidden temporary folder next
to the target (same filesystem), then renamed into place, so a reader (or TF
Serving polling the base folder) never sees a half-written version, and a
failed export leaves nothing behind.
"""

from __future__ import annotations

import datetime
import json
import os
import shutil
import uuid

import keras
import tensorflow as tf

import catdog
from catdog import decode
from catdog import errors
from catdog import fileio
from catdog import model_io
from catdog.data import decode_and_resize

#: Name of the serving_default input; TF Serving REST decodes {"b64": ...}
#: only for inputs whose name ends in "_bytes".
BYTES_INPUT = "image_bytes"
#: Where the export's description is written, inside a version folder.
METADATA_PATH = os.path.join("assets.extra", "catdog.json")
#: TFLite model file, inside a version folder.
TFLITE_FILENAME = "model.tflite"


def export_saved_model(model_dir_or_model, export_dir, *, image_size=None,
                       class_names=None, tflite: bool = False,
                       overwrite: bool = False, version="auto",
                       multi_label: bool = False) -> str:
    """Exports a catdog model as a SavedModel with decoding built in.

    Args:
      model_dir_or_model: a training run's ``model_dir`` (``model.keras`` +
        ``config.json``) or a built ``keras.Model``.
      export_dir: the TF Serving base folder (``version="auto"`` or an int),
        or the SavedModel folder itself (``version=None``). Must be local.
      image_size: ``(height, width)`` images are resized to. Defaults to the
        config's ``data.image_size`` or the model's fixed input size; when
        both are known, a different value is an error.
      class_names: class names in label order. Defaults to the config's;
        required with a bare ``keras.Model``.
      tflite: also convert ``serve_images`` to ``model.tflite``.
      overwrite: replace an existing target SavedModel (atomically: the old
        one is renamed aside, the new one renamed in, then the old deleted).
      version: ``"auto"`` (next free integer under ``export_dir``), a
        positive int, or None (no version folder).
      multi_label: the model has one sigmoid per label (trained with
        ``--label_separator``); read from the config of a ``model_dir``.

    Returns:
      The path of the SavedModel folder written.

    Raises:
      FileNotFoundError, ValueError: a bad model, ``image_size``,
        ``class_names``, ``version`` or ``export_dir``.
      FileExistsError: the target exists and ``overwrite`` is False.
      RuntimeError: TFLite conversion is unavailable or failed.
    """
    if isinstance(model_dir_or_model, keras.Model):
        model, config, source_dir = model_dir_or_model, {}, None
        decode_options = model_io.model_decode_options(model)
        if class_names is None:
            raise ValueError(
                "class_names is required to export a keras.Model; pass the "
                "model_dir instead to read them from its config.json.")
        class_names = [str(n) for n in class_names]
        model_io.check_model_outputs(model, class_names)
        image_size = model_io.resolve_image_size(image_size, model)
    else:
        source_dir = os.path.abspath(os.fspath(model_dir_or_model))
        model, config, image_size, class_names = model_io.load_for_inference(
            source_dir, image_size=image_size, class_names=class_names)
        decode_options = model_io.model_decode_options(
            model, model_io.config_decode_options(config))
        multi_label = bool(config.get("multi_label"))

    parent, target = _resolve_target(export_dir, version, overwrite)
    created = _make_parents(parent)
    staging = os.path.join(parent, f".{os.path.basename(target)}.tmp-{uuid.uuid4().hex[:8]}")
    try:
        # os.mkdir, not tempfile.mkdtemp: mkdtemp makes the folder 0700, which
        # a serving process running as another user could not read.
        os.mkdir(staging)
        _write_saved_model(model, staging, image_size, class_names, decode_options,
                           multi_label)
        tflite_file = _write_tflite(staging) if tflite else None
        metadata = _metadata(
            class_names, image_size, decode_options, source_dir, config.get("stage"),
            None if version is None else int(os.path.basename(target)), tflite_file)
        _write_metadata(staging, dict(metadata, multi_label=bool(multi_label)))
        _publish(staging, target, overwrite)
    except BaseException:
        # Also on KeyboardInterrupt: never leave a half-written export.
        shutil.rmtree(staging, ignore_errors=True)
        for path in reversed(created):
            try:
                os.rmdir(path)  # only if still empty
            except OSError:
                break
        raise
    return target


def build_serving_functions(model, image_size, class_names, decode_options=None,
                            multi_label: bool = False):
    """Returns the ``(serving_default, serve_images)`` Python functions.

    Exposed so the exported graphs can be inspected or reused in a larger
    TensorFlow program; :func:`export_saved_model` wraps them in
    ``tf.function`` with fixed input signatures.

    Args:
      model: a built ``keras.Model`` (see :mod:`catdog.model_io`).
      image_size: ``(height, width)`` the model takes.
      class_names: class names in label order.
      decode_options: the :class:`catdog.decode.DecodeOptions` of
        ``serving_default``'s decode (default: ``DecodeOptions()``).
      multi_label: one sigmoid per label: ``probabilities`` are the k
        independent label probabilities, ``classes`` the most probable label,
        and a ``multi_label`` output (``bool [N]``, all True) says so.

    Returns:
      ``serving_default(image_bytes)`` and ``serve_images(images)``, each
      returning the dict of ``probabilities``, ``classes`` and
      ``class_names`` described in this module's docstring.
    """
    class_names = [str(n) for n in class_names]
    decode_options = decode_options or decode.DecodeOptions()
    height, width = model_io.checked_image_size(image_size)
    num_classes = model_io.check_model_outputs(model, class_names)
    probabilities_of = model_io.probabilities_fn(model, num_classes)

    def serve_images(images):
        probabilities = probabilities_of(images)
        names = tf.constant(class_names)
        out = {
            "probabilities": probabilities,
            "classes": tf.gather(names, tf.argmax(probabilities, axis=1)),
            "class_names": tf.tile(names[tf.newaxis], [tf.shape(probabilities)[0], 1]),
        }
        if multi_label:
            out["multi_label"] = tf.fill([tf.shape(probabilities)[0]], True)
        return out

    def serving_default(image_bytes):
        # map_fn, not vectorized_map: images differ in size before resizing,
        # so decoding cannot be vectorized anyway.
        images = tf.map_fn(
            lambda contents: decode_and_resize(contents, (height, width), decode_options),
            image_bytes,
            fn_output_signature=tf.TensorSpec((height, width, decode_options.channels),
                                              tf.uint8))
        return serve_images(images)

    return serving_default, serve_images


def read_export_metadata(saved_model_dir) -> dict:
    """Returns the ``assets.extra/catdog.json`` of an exported SavedModel."""
    path = os.path.join(os.fspath(saved_model_dir), METADATA_PATH)
    with tf.io.gfile.GFile(path) as f:
        return json.load(f)


_RESIZE_TEXT = {
    "stretch": "{method} tf.image.resize to {size}",
    "crop": "centre crop to the aspect ratio of {size} (keras smart_resize), {method} "
            "tf.image.resize to {size}",
    "pad": "{method} tf.image.resize_with_pad to {size}",
}


def _metadata(class_names, image_size, decode_options, source_dir, stage, version,
              tflite_file):
    """The description written to ``assets.extra/catdog.json``."""
    height, width = image_size
    return {
        "format": "catdog-saved-model",
        "format_version": 1,
        "class_names": list(class_names),
        "image_size": [height, width],
        "source_model_dir": source_dir,
        "stage": stage,
        "version": version,
        "signatures": {
            "serving_default": {"inputs": {
                BYTES_INPUT: "string [N]: encoded JPEG/PNG/GIF/BMP, any size"}},
            model_io.IMAGES_SIGNATURE: {"inputs": {
                "images": f"uint8 [N, {height}, {width}, {decode_options.channels}]"}},
            "outputs": {
                "probabilities": f"float32 [N, {len(class_names)}]",
                "classes": "string [N]",
                "class_names": f"string [N, {len(class_names)}]",
            },
        },
        # What a client feeding serve_images (or model.tflite) must reproduce.
        "preprocessing": (
            f"tf.io.decode_image(channels={decode_options.channels}, "
            "expand_animations=False), "
            + ("turned upright by the JPEG's EXIF orientation tag, "
               if decode_options.exif_orientation else "")
            + _RESIZE_TEXT[decode_options.resize_mode].format(
                method=decode_options.interpolation, size=f"{height}x{width}")
            + " (height x width), rounded and clipped to uint8"),
        "decode_options": decode_options.record(),
        "tflite": tflite_file,
        "catdog_version": catdog.__version__,
        "tensorflow_version": tf.__version__,
        "keras_version": keras.__version__,
        "created_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(
            timespec="seconds"),
    }


def _write_saved_model(model, path, image_size, class_names, decode_options,
                       multi_label=False):
    serving_default, serve_images = build_serving_functions(
        model, image_size, class_names, decode_options, multi_label)
    archive = keras.export.ExportArchive()
    archive.track(model)
    # Read back by catdog.model_io.saved_model_decode_options: predict.py
    # decodes a SavedModel's inputs as its serving_default does.
    archive.add_variable_collection(model_io.DECODE_OPTIONS_COLLECTION, [tf.Variable(
        json.dumps(decode_options.record(), sort_keys=True), trainable=False)])
    archive.add_endpoint("serving_default", serving_default, input_signature=[
        tf.TensorSpec([None], tf.string, name=BYTES_INPUT)])
    archive.add_endpoint(model_io.IMAGES_SIGNATURE, serve_images, input_signature=[
        tf.TensorSpec([None, *image_size, decode_options.channels], tf.uint8,
                      name="images")])
    archive.write_out(path, verbose=False)


def _write_tflite(saved_model_dir) -> str:
    """Converts the ``serve_images`` signature to ``model.tflite``."""
    converter_class = getattr(getattr(tf, "lite", None), "TFLiteConverter", None)
    if converter_class is None:
        raise RuntimeError(
            f"TFLite conversion is unavailable in TensorFlow {tf.__version__} "
            "(no tf.lite.TFLiteConverter); export without tflite=True (--tflite).")
    try:
        converter = converter_class.from_saved_model(
            saved_model_dir, signature_keys=[model_io.IMAGES_SIGNATURE])
        content = converter.convert()
    except Exception as error:
        raise RuntimeError(
            f"TFLite conversion of the {model_io.IMAGES_SIGNATURE!r} signature "
            f"failed: {errors.first_line(error)}. Export without tflite=True "
            "(--tflite) to get the SavedModel alone.") from error
    with open(os.path.join(saved_model_dir, TFLITE_FILENAME), "wb") as f:
        f.write(content)
    return TFLITE_FILENAME


def _write_metadata(saved_model_dir, metadata: dict) -> None:
    path = os.path.join(saved_model_dir, METADATA_PATH)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(metadata, f, indent=2)
        f.write("\n")


def _resolve_target(export_dir, version, overwrite):
    """Returns ``(parent folder, SavedModel folder)`` for an export."""
    export_dir = os.fspath(export_dir)
    if fileio.is_remote(export_dir):
        raise ValueError(
            f"export_dir must be a local folder (exports are made atomic with "
            f"a rename). Received: export_dir={export_dir!r}; export locally, "
            "then copy the version folder.")
    export_dir = os.path.abspath(export_dir)
    if os.path.exists(export_dir) and not os.path.isdir(export_dir):
        raise ValueError(f"export_dir {export_dir!r} is a file; pass a folder.")

    if version is None:
        parent, target = os.path.dirname(export_dir), export_dir
    elif version == "auto":
        if os.path.isfile(os.path.join(export_dir, "saved_model.pb")):
            raise ValueError(
                f"export_dir {export_dir!r} is itself a SavedModel, not a base "
                "folder of numeric versions; pass a new folder, or version=None "
                "(--version=none) with overwrite=True to replace it.")
        existing = [int(n) for n in _listdir(export_dir) if n.isdigit()]
        parent, target = export_dir, os.path.join(export_dir, str(max(existing, default=0) + 1))
    elif isinstance(version, int) and not isinstance(version, bool) and version >= 1:
        parent, target = export_dir, os.path.join(export_dir, str(version))
    else:
        raise ValueError(
            "version must be 'auto', a positive integer or None. "
            f"Received: version={version!r}")
    _check_replaceable(target, overwrite)
    return parent, target


def _check_replaceable(target, overwrite):
    if not os.path.lexists(target):
        return
    if not overwrite:
        raise FileExistsError(
            f"{target!r} already exists; pass overwrite=True (--overwrite) to "
            "replace it, or version='auto' to write the next version.")
    if not os.path.isfile(os.path.join(target, "saved_model.pb")):
        # Only ever replace an earlier export, never other data.
        raise FileExistsError(
            f"{target!r} exists and is not a SavedModel; refusing to replace "
            "it. Move it away or choose another export_dir.")


def _publish(staging, target, overwrite):
    """Renames ``staging`` to ``target``, replacing an old export if allowed."""
    _check_replaceable(target, overwrite)  # again: it may have appeared meanwhile
    if not os.path.lexists(target):
        os.rename(staging, target)
        return
    aside = f"{staging}.old"
    os.rename(target, aside)
    try:
        os.rename(staging, target)
    except BaseException:
        os.rename(aside, target)
        raise
    shutil.rmtree(aside, ignore_errors=True)


def _make_parents(path):
    """Creates ``path`` and missing ancestors; returns the ones created."""
    missing = []
    while not os.path.exists(path):
        missing.append(path)
        parent = os.path.dirname(path)
        if parent == path:
            break
        path = parent
    created = []
    for folder in reversed(missing):
        os.mkdir(folder)
        created.append(folder)
    return created


def _listdir(path):
    return os.listdir(path) if os.path.isdir(path) else []
