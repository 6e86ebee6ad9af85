"""tf.data input for catdog: index a folder, decode, resize, cache, batch.

Data flows one way::

    files -> index (paths, labels, class names; bad files reported, never deleted)
          -> decode + resize -> uint8 HxWx3            (parallel, on the CPU)
          -> cache (uint8) -> shuffle -> batch -> prefetch

Pixels stay uint8 up to the model: the cache is 4x smaller than float32 and
all rescaling / augmentation happens inside the model.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import os
from typing import Optional

from absl import logging
import numpy as np
import tensorflow as tf

from catdog import scan


def decode_and_resize(contents: tf.Tensor, image_size) -> tf.Tensor:
    """Decodes encoded image bytes and resizes them to ``image_size``.

    The one decode function of catdog: training, evaluation, prediction and
    the exported serving signature all call it, so they see the same pixels.

    Args:
      contents: scalar string tensor with JPEG, PNG, GIF (first frame) or BMP
        bytes. Grayscale, RGBA and 16-bit images are converted to 8-bit RGB.
      image_size: ``(height, width)`` of the output.

    Returns:
      A ``uint8`` tensor of shape ``(height, width, 3)``. Resizing is
      bilinear, as in ``keras.utils.image_dataset_from_directory``.
    """
    height, width = int(image_size[0]), int(image_size[1])
    image = tf.io.decode_image(
        contents, channels=3, dtype=tf.uint8, expand_animations=False)
    image = tf.image.resize(image, (height, width), method="bilinear")
    image = tf.cast(tf.clip_by_value(tf.round(image), 0.0, 255.0), tf.uint8)
    image.set_shape((height, width, 3))
    return image


# ---------------------------------------------------------------------------
# Folder input.
# ---------------------------------------------------------------------------

@dataclasses.dataclass
class SplitFiles:
    """The usable files of one split, in a fixed order."""

    paths: list
    labels: list

    def __len__(self) -> int:
        return len(self.paths)


@dataclasses.dataclass
class DataIndex:
    """What a run trains on: the files of each split and what was skipped.

    Attributes:
      class_names: class names in label order.
      train: usable training files.
      val: usable validation files.
      skipped: ``[{"path", "reason"}]`` for every candidate file that cannot
        be used (never deleted or moved: the user decides what to do).
    """

    class_names: list
    train: SplitFiles
    val: SplitFiles
    skipped: list

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


def keep_usable(paths, labels, max_pixels, progress=False):
    """Checks every file as training does; returns (paths, labels, skipped).

    ``skipped`` is ``[{"path", "reason"}]``; each skipped file is also logged.
    Evaluation and TFRecord writing use the same function, so every entry
    point skips the same files.
    """
    checks = scan.check_files(paths, max_pixels=max_pixels, progress=progress)
    good_paths, good_labels, skipped = [], [], []
    for check, label in zip(checks, labels):
        if check.ok:
            good_paths.append(check.path)
            good_labels.append(label)
        else:
            skipped.append({"path": check.path, "reason": check.reason})
            logging.warning("Skipping %s: %s", check.path, check.reason)
    return good_paths, good_labels, skipped


def _require_every_class(labels, class_names, where):
    counts = collections.Counter(labels)
    empty = [name for i, name in enumerate(class_names) if counts.get(i, 0) == 0]
    if empty:
        raise ValueError(
            f"Class(es) {empty} have no usable image in {where}; every class needs "
            "at least one readable image (see the skipped files logged above).")


def index_data(data_config, progress: bool = True) -> DataIndex:
    """Lists, checks and splits the images of ``data_config``.

    Classes follow ``keras.utils.image_dataset_from_directory``: one subfolder
    per class, alphanumeric order unless ``class_names`` is given, nested
    subfolders count for their top-level class. Every candidate file is
    decode-checked first; bad ones are skipped and reported.

    Args:
      data_config: a :class:`catdog.config.DataConfig`.
      progress: show progress while checking files.

    Returns:
      A :class:`DataIndex`.

    Raises:
      ValueError: a folder is missing, has fewer than two classes, a class has
        no usable image, or ``class_names`` names a missing folder.
    """
    if not data_config.train_dir:
        raise ValueError("`--train_dir` must name a folder of class subfolders. "
                         "Received: train_dir=''")
    class_names = (list(data_config.class_names)
                   if data_config.class_names else None)
    paths, labels, class_names = scan.list_image_files(
        data_config.train_dir, class_names=class_names)
    paths, labels, skipped = keep_usable(paths, labels, data_config.max_pixels, progress)
    if data_config.val_dir:
        # Use the training class order so label i means the same class.
        vpaths, vlabels, _ = scan.list_image_files(
            data_config.val_dir, class_names=class_names)
        vpaths, vlabels, vskipped = keep_usable(vpaths, vlabels, data_config.max_pixels, progress)
        skipped += vskipped
        _require_every_class(labels, class_names, data_config.train_dir)
        _require_every_class(vlabels, class_names, data_config.val_dir)
        train, val = SplitFiles(paths, labels), SplitFiles(vpaths, vlabels)
    else:
        _require_every_class(labels, class_names, data_config.train_dir)
        train, val = split_files(paths, labels, data_config.validation_split,
                                 data_config.seed)
        if not len(val) or not len(train):
            raise ValueError(
                f"`--validation_split` {data_config.validation_split} of "
                f"{len(paths)} usable images leaves an empty split; use more "
                "images, another split, or --val_dir.")
    return DataIndex(class_names, train, val, skipped)


def split_files(paths, labels, validation_split: float, seed: int):
    """Splits files into (train, val) reproducibly; no file lands in both.

    Shuffles with ``seed`` (numpy RandomState, as Keras does) and holds out the
    last ``validation_split`` fraction.
    """
    order = np.random.RandomState(seed).permutation(len(paths))
    n_val = int(round(validation_split * len(paths)))
    cut = len(paths) - n_val
    train_idx, val_idx = sorted(order[:cut]), sorted(order[cut:])
    take = lambda idx: SplitFiles([paths[i] for i in idx], [labels[i] for i in idx])
    return take(train_idx), take(val_idx)


def _label_tensor(labels, num_classes):
    # Two classes: float 0/1 of shape (1,) for a sigmoid head and binary
    # cross-entropy (Keras' label_mode="binary"); more: int for a softmax head.
    if num_classes == 2:
        return np.asarray(labels, np.float32).reshape(-1, 1)
    return np.asarray(labels, np.int32)


def _cache_file(cache_dir, split, paths, image_size):
    # A file cache is only valid for exactly these files at this size: the
    # name carries a digest of both so a stale cache is never read.
    digest = hashlib.sha1()
    digest.update(repr((list(paths), tuple(image_size))).encode("utf-8"))
    os.makedirs(cache_dir, exist_ok=True)
    return os.path.join(cache_dir, f"catdog-{split}-{digest.hexdigest()[:16]}")


def build_dataset(paths, labels, *, num_classes: int, image_size, batch_size: int,
                  training: bool, cache: str = "memory", seed: int = 1337,
                  shuffle_buffer: int = 0, deterministic: bool = False,
                  split: str = "train") -> tf.data.Dataset:
    """Builds the batched ``tf.data.Dataset`` of ``(uint8 images, labels)``.

    The order of operations is the point of this function:

    read + decode + resize (parallel) -> cache uint8 -> shuffle -> batch -> prefetch

    Caching after resize and before any random op keeps the cache small
    (uint8, 4x smaller than float32) and valid for every epoch; shuffling
    after the cache reshuffles every epoch; training batches drop the
    remainder so every batch has the same static shape and divides evenly
    across replicas.

    Args:
      paths: image file paths.
      labels: integer labels, aligned with ``paths``.
      num_classes: number of classes (2 gives float labels of shape (1,)).
      image_size: ``(height, width)``.
      batch_size: global batch size.
      training: shuffle and drop the remainder.
      cache: ``"memory"``, ``"none"`` or a folder for cache files.
      seed: shuffle seed.
      shuffle_buffer: shuffle buffer size; 0 means the whole split.
      deterministic: keep element order fixed in parallel stages.
      split: name used for the cache file.

    Returns:
      A dataset of ``(uint8 [B, H, W, 3], labels)`` batches.
    """
    image_size = tuple(int(s) for s in image_size)
    # Unshuffled (evaluation) data keeps file order so outputs line up with
    # paths; only the training stream trades order for speed.
    deterministic = bool(deterministic) or not training
    ds = tf.data.Dataset.from_tensor_slices(
        # fsencode: a file name that is not valid UTF-8 still reaches the
        # file system byte for byte.
        (tf.constant([os.fsencode(p) for p in paths], tf.string),
         _label_tensor(labels, num_classes)))

    def load(path, label):
        return decode_and_resize(tf.io.read_file(path), image_size), label

    ds = ds.map(load, num_parallel_calls=tf.data.AUTOTUNE,
                deterministic=deterministic)
    if cache == "memory":
        ds = ds.cache()
    elif cache and cache != "none":
        ds = ds.cache(_cache_file(cache, split, paths, image_size))
    if training:
        buffer = shuffle_buffer or max(1, len(paths))
        ds = ds.shuffle(buffer, seed=seed, reshuffle_each_iteration=True)
    ds = ds.batch(batch_size, drop_remainder=training,
                  num_parallel_calls=tf.data.AUTOTUNE, deterministic=deterministic)
    ds = ds.prefetch(tf.data.AUTOTUNE)
    options = tf.data.Options()
    options.deterministic = bool(deterministic)
    return ds.with_options(options)


def build_datasets(data_config, index: Optional[DataIndex] = None,
                   progress: bool = True):
    """Returns ``(train_ds, val_ds, index)`` for a :class:`DataConfig`.

    Validation data is never shuffled, never augmented (augmentation lives in
    the model and is inactive at inference) and keeps its last partial batch.
    """
    index = index or index_data(data_config, progress=progress)
    if len(index.train) < data_config.batch_size:
        raise ValueError(
            f"`--batch_size` {data_config.batch_size} is larger than the "
            f"{len(index.train)} usable training images; training drops the "
            "last partial batch, so no batch would be left. Use a smaller "
            f"--batch_size. Received: batch_size={data_config.batch_size}")
    common = dict(num_classes=index.num_classes, image_size=data_config.image_size,
                  batch_size=data_config.batch_size, cache=data_config.cache,
                  seed=data_config.seed, shuffle_buffer=data_config.shuffle_buffer,
                  deterministic=data_config.deterministic)
    train_ds = build_dataset(index.train.paths, index.train.labels,
                             training=True, split="train", **common)
    val_ds = build_dataset(index.val.paths, index.val.labels,
                           training=False, split="val", **common)
    return train_ds, val_ds, index
