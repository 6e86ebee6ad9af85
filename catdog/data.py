"""tf.data input for catdog: the one entry point of every input source.

Data flows one way::

    files -> index (paths, labels, class names; bad files reported, never deleted)
          -> decode + resize -> uint8 HxWx3            (parallel, on the CPU)
          -> cache (uint8) -> shuffle -> batch -> prefetch

Pixels stay uint8 up to the model: the cache is 4x smaller than float32 and
all rescaling / augmentation happens inside the model.

This module picks the source a :class:`catdog.config.DataConfig` names (a
class folder, a labels CSV, TFRecord shards or a TFDS dataset, see
:mod:`catdog.sources`)
and re-exports the input names users import from ``catdog.data``: the
decode (:mod:`catdog.decode`), the file check (:mod:`catdog.scan`), the
index and batching tail (:mod:`catdog.batching`) and the split
(:mod:`catdog.splits`).
"""

from __future__ import annotations

from typing import Optional

import tensorflow as tf
from absl import logging

# Public names of catdog.data that live in the modules below it.
from catdog.batching import (  # noqa: F401
    STREAM_SHUFFLE_BUFFER, DataIndex, SourceSplit, SplitFiles, batch_pipeline,
    require_every_class)
from catdog.data_service import check_reachable
from catdog.decode import (  # noqa: F401
    DCT_RATIOS, DECODE_VERSION, DecodeOptions, decode_and_resize, decode_and_resize_scaled)
from catdog.decode import options_of as decode_options_of
from catdog.scan import keep_usable
from catdog.sources import csv_labels
from catdog.sources import tfds
from catdog.sources import tfrecords
from catdog.sources.folder import build_dataset, index_data
from catdog.splits import (  # noqa: F401
    SPLIT_FORMAT, copies_across, describe_split_change, seen_in_split, source_kind,
    split_digest, split_files, split_record)


def index_from_split(data_config, record: dict, where: str,
                     progress: bool = True) -> DataIndex:
    """The :class:`DataIndex` of exactly the split ``record`` (an earlier run's split.json).

    Folder and CSV records give their files and labels, each checked again
    (the CSV is not read again): files
    that became unusable are skipped and reported, files added since are
    not used. TFRecord and TFDS sources are indexed again and must give the
    same shard files or splits and example counts.

    Args:
      data_config: the run's data settings (same source as the record).
      record: a :func:`split_record` dict.
      where: the run the record comes from, for messages.
      progress: show progress while checking files.

    Raises:
      ValueError: the source differs, a class has no usable file left, or
        the shards / TFDS splits are no longer those of the record.
    """
    kind = source_kind(data_config)
    if record.get("source") != kind:
        raise ValueError(f"{where} trained on a {record.get('source')} source, this run "
                         f"reads a {kind} source; use the same input.")
    class_names = list(record["class_names"])
    if kind not in ("folder", "csv"):
        index = index_source(data_config, progress=progress)
        now = split_record(data_config, index)
        if split_digest(now) != split_digest(record):
            raise ValueError(
                f"The {kind} input is no longer what {where} trained and validated on: "
                f"{describe_split_change(record, now)}. Point the source flags at "
                "exactly those shards / splits, or retrain that stage.")
        return index
    # JSON holds a label set as a list; the index holds it as a tuple.
    labels_of = lambda side: [tuple(l) if isinstance(l, list) else l
                              for l in record[f"{side}_labels"]]
    train = keep_usable(record["train"], labels_of("train"), data_config.max_pixels,
                        progress)
    val = keep_usable(record["val"], labels_of("val"), data_config.max_pixels, progress)
    require_every_class(train[1], class_names, f"the training files of {where}")
    require_every_class(val[1], class_names, f"the validation files of {where}")
    train, val, skipped = (SplitFiles(train[0], train[1]), SplitFiles(val[0], val[1]),
                           train[2] + val[2])
    return DataIndex(class_names, train, val, skipped,
                     copies=copies_across(data_config, train, val))


def index_source(data_config, progress: bool = True) -> DataIndex:
    """The :class:`DataIndex` of whichever source ``data_config`` names.

    Folder (``train_dir``): :func:`index_data`. CSV (``train_csv``):
    :func:`catdog.sources.csv_labels.index_csv`. TFRecords
    (``train_tfrecords``): the shards and their ``manifest.json``. TFDS
    (``tfds_name``): the dataset's info (prepared if needed).
    """
    if data_config.train_csv:
        return csv_labels.index_csv(data_config, progress=progress)
    if data_config.train_tfrecords:
        return tfrecords.index_tfrecords(data_config)
    if data_config.tfds_name:
        return tfds.index_tfds(data_config)
    return index_data(data_config, progress=progress)


def build_split(data_config, index: DataIndex, split: str,
                training: bool,
                input_context: Optional[tf.distribute.InputContext] = None
                ) -> tf.data.Dataset:
    """The dataset of ``split`` (``"train"`` or ``"val"``) of any source.

    ``training`` decides shuffling and ``drop_remainder``, independently of
    the split (fast feature extraction reads the training split once,
    unshuffled and complete). With ``input_context`` (under
    ``strategy.distribute_datasets_from_function``) the dataset holds only
    this worker's share, in per-replica batches: every training example is
    used once per epoch across the workers, every validation example is
    evaluated once, and all workers run the same number of steps.

    With ``data_config.data_service`` the training split (``training=True``)
    is read, decoded, shuffled and batched by the tf.data service's workers
    (:mod:`catdog.data_service`); every other split stays in this process.
    """
    files = index.train if split == "train" else index.val
    common = dict(num_classes=index.num_classes, image_size=data_config.image_size,
                  batch_size=data_config.batch_size, training=training,
                  cache=data_config.cache, seed=data_config.seed,
                  shuffle_buffer=shuffle_buffer_of(data_config, len(files)),
                  deterministic=data_config.deterministic,
                  # Validation always decodes exactly: the checkpoint is chosen
                  # on the pixels evaluation, prediction and export see.
                  dct_scaling=data_config.dct_scaling and split == "train",
                  # The pixels the run records in config.json, for every split.
                  decode_options=decode_options_of(data_config),
                  input_context=input_context)
    if data_config.train_tfrecords:
        return tfrecords.build_tfrecord_dataset(files.source, num_examples=len(files),
                                                split=split, **common)
    if data_config.tfds_name:
        return tfds.build_tfds_dataset(data_config, files.source,
                                       num_examples=len(files), **common)
    service = data_config.data_service if split == "train" and training else ""
    if service:
        check_reachable(service)
        logging.info("Training split through the tf.data service at %s: read and decoded "
                     "on its workers every epoch, not cached (--cache=%s applies to the "
                     "validation split).", service, data_config.cache)
    return build_dataset(files.paths, files.labels, split=split, data_service=service,
                         multi_label=bool(data_config.label_separator), **common)


def shuffle_buffer_of(data_config, num_examples: int) -> int:
    """The shuffle buffer a split of ``num_examples`` is built with.

    ``data_config.shuffle_buffer``; with ``whole_split_shuffle`` a 0 stands
    for the whole split whatever the cache (a file cache then shuffles as
    ``--cache=memory`` does, holding as many decoded images).
    """
    if not data_config.shuffle_buffer and data_config.whole_split_shuffle:
        return max(1, int(num_examples))
    return int(data_config.shuffle_buffer)


def build_datasets(data_config, index: Optional[DataIndex] = None,
                   progress: bool = True):
    """Returns ``(train_ds, val_ds, index)`` for a :class:`DataConfig`.

    The source is the folder ``train_dir``, the CSV ``train_csv``, the TFRecord shards
    ``train_tfrecords`` or the TFDS dataset ``tfds_name`` (see
    :func:`index_source`); every source decodes with the same function.
    Validation data is never shuffled, never augmented (augmentation lives in
    the model and is inactive at inference) and keeps its last partial batch.
    """
    index = index or index_source(data_config, progress=progress)
    check_batch_size(data_config, index)
    train_ds = build_split(data_config, index, "train", training=True)
    val_ds = build_split(data_config, index, "val", training=False)
    return train_ds, val_ds, index


def check_batch_size(data_config, index: DataIndex) -> None:
    """Raises ValueError (naming ``--batch_size``) when no training batch is left."""
    if len(index.train) < data_config.batch_size:
        raise ValueError(
            f"`--batch_size` {data_config.batch_size} is larger than the "
            f"{len(index.train)} usable training images; training drops the "
            "last partial batch, so no batch would be left. Use a smaller "
            f"--batch_size. Received: batch_size={data_config.batch_size}")

