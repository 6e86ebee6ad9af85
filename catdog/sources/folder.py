"""The folder source: a tree of class subfolders, read file by file.

:func:`index_data` lists, checks and splits the images of a folder into a
:class:`catdog.batching.DataIndex`; :func:`build_dataset` reads a list of
files into batches::

    paths -> read + decode + resize (parallel) -> cache uint8 -> shuffle
          -> batch -> prefetch
"""

from __future__ import annotations

import dataclasses
import os
from typing import Optional

import numpy as np
import tensorflow as tf

from catdog import batching
from catdog import data_service as data_service_lib
from catdog import decode
from catdog import file_cache
from catdog import scan
from catdog import splits
from catdog import tfdata


def index_data(data_config, progress: bool = True) -> batching.DataIndex:
    """Lists, checks and splits the images of ``data_config``.

    Classes follow ``keras.utils.image_dataset_from_directory``: one subfolder
    per class, alphanumeric order unless ``class_names`` is given, nested
    subfolders count for their top-level class. Every candidate file is
    decode-checked first; bad ones are skipped and reported; symlinked
    subfolders are followed with ``follow_links``. Without
    ``val_dir``, ``validation_split`` of each class is held out
    (:func:`catdog.splits.split_files`).

    Args:
      data_config: a :class:`catdog.config.DataConfig`.
      progress: show progress while checking files.

    Returns:
      A :class:`catdog.batching.DataIndex`.

    Raises:
      ValueError: a folder is missing, has fewer than two classes, a class has
        no usable image, or ``class_names`` names a missing folder.
    """
    if not data_config.train_dir:
        raise ValueError("`--train_dir` must name a folder of class subfolders. "
                         "Received: train_dir=''")
    class_names = (list(data_config.class_names)
                   if data_config.class_names else None)
    follow_links = bool(data_config.follow_links)
    paths, labels, class_names = scan.list_image_files(
        data_config.train_dir, class_names=class_names, follow_links=follow_links)
    paths, labels, skipped = scan.keep_usable(paths, labels, data_config.max_pixels, progress)
    if data_config.val_dir:
        # Use the training class order so label i means the same class.
        vpaths, vlabels, _ = scan.list_image_files(
            data_config.val_dir, class_names=class_names, follow_links=follow_links)
        vpaths, vlabels, vskipped = scan.keep_usable(vpaths, vlabels, data_config.max_pixels,
                                                     progress)
        skipped += vskipped
        batching.require_every_class(labels, class_names, data_config.train_dir)
        batching.require_every_class(vlabels, class_names, data_config.val_dir)
        train, val = batching.SplitFiles(paths, labels), batching.SplitFiles(vpaths, vlabels)
        splits.check_disjoint(train, val, f"--train_dir {data_config.train_dir!r}",
                              f"--val_dir {data_config.val_dir!r}")
    else:
        batching.require_every_class(labels, class_names, data_config.train_dir)
        class_dirs = [os.path.join(data_config.train_dir, name) for name in class_names]
        train, val = splits.split_files(paths, labels, data_config.validation_split,
                                        data_config.seed, class_dirs=class_dirs)
        if not len(val) or not len(train):
            raise ValueError(
                f"`--validation_split` {data_config.validation_split} of "
                f"{len(paths)} usable images leaves an empty split; use more "
                "images, another split, or --val_dir.")
        splits.check_split_classes(train, val, class_names, data_config.validation_split,
                                   data_config.train_dir, "--val_dir")
    return batching.DataIndex(class_names, train, val, skipped,
                              copies=splits.copies_across(data_config, train, val))


def build_dataset(paths, labels, *, num_classes: int, image_size, batch_size: int,
                  training: bool, cache: str = "memory", seed: int = 1337,
                  shuffle_buffer: int = 0, deterministic: bool = False,
                  split: str = "train", dct_scaling: bool = False,
                  decode_options: Optional[decode.DecodeOptions] = None,
                  multi_label: bool = False,
                  input_context: Optional[tf.distribute.InputContext] = None,
                  data_service: str = "") -> tf.data.Dataset:
    """Builds the batched ``tf.data.Dataset`` of ``(uint8 images, labels)``.

    The order of operations is the point of this function:

    read + decode + resize (parallel) -> cache uint8 -> shuffle -> batch -> prefetch

    Caching after resize and before any random op keeps the cache small
    (uint8, 4x smaller than float32) and valid for every epoch; shuffling
    after the cache reshuffles every epoch; training batches drop the
    remainder so every batch has the same static shape and divides evenly
    across replicas.

    Memory: ``cache="memory"`` holds the whole split (decoded) and shuffles
    all of it every epoch. Without it, training memory is bounded by the
    shuffle buffer (default :data:`catdog.batching.STREAM_SHUFFLE_BUFFER`
    images), not by the split: ``"none"`` shuffles the file list before decoding, anew every
    epoch; a file cache is written in chunks (the file list shuffled once
    with ``seed``, ``shuffle_buffer / 4`` images per chunk) that every epoch
    reads in a new random order, four at a time, into the buffer.

    Args:
      paths: image file paths.
      labels: integer labels, aligned with ``paths``.
      num_classes: number of classes (2 gives float labels of shape (1,)).
      image_size: ``(height, width)``.
      batch_size: global batch size.
      training: shuffle and drop the remainder.
      cache: ``"memory"``, ``"none"`` or a folder for cache files.
      seed: shuffle seed.
      shuffle_buffer: shuffle buffer of decoded images; 0 means the whole
        split with ``cache="memory"``, else
        :data:`catdog.batching.STREAM_SHUFFLE_BUFFER`.
      deterministic: keep element order fixed in parallel stages.
      split: name used for the cache file.
      dct_scaling: decode with :func:`catdog.decode.decode_and_resize_scaled` instead of
        :func:`catdog.decode.decode_and_resize` (faster on large JPEGs; not pixel-identical).
      decode_options: the :class:`catdog.decode.DecodeOptions` of every image
        (default: ``DecodeOptions()``); part of the file cache key.
      multi_label: ``labels`` are label sets; they become multi-hot float32
        rows (:func:`catdog.batching.encode_labels`).
      input_context: under ``strategy.distribute_datasets_from_function``,
        the ``tf.distribute.InputContext`` of this worker: the dataset then
        reads and decodes only this worker's share of the files (every
        ``num_input_pipelines``-th file), yields per-replica batches, and
        every worker runs the same number of steps.
      data_service: ``grpc://HOST:PORT`` of a tf.data service dispatcher
        (training only): read, decode, shuffle and batch run on its workers
        (:func:`catdog.data_service.service_pipeline`); nothing is cached.

    Returns:
      A dataset of ``(uint8 [B, H, W, 3], labels)`` batches.
    """
    image_size = tuple(int(s) for s in image_size)
    # Unshuffled (evaluation) data keeps file order so outputs line up with
    # paths; only the training stream trades order for speed.
    deterministic = bool(deterministic) or not training
    share = None
    if input_context is not None:
        # Shard the file list before anything is read: the workers' shares
        # are a partition whatever order the parallel decode produces.
        workers = int(input_context.num_input_pipelines)
        share = batching.worker_share(
            input_context, batching.element_shares(len(paths), workers),
            batch_size, training, f"the {split} split")
        paths, labels = list(paths)[share.index::workers], list(labels)[share.index::workers]
    decode_options = decode_options or decode.DecodeOptions()
    # EXIF orientations the file check read already (same parse, same bytes):
    # all upright (most photos) decodes with no EXIF op, some turned carries
    # each file's orientation; unknown parses every file in the graph. The
    # pixels are the same either way, so the cache identity does not change.
    turns = scan.known_orientations(paths) if decode_options.exif_orientation else None
    upright = turns is not None and all(t == 1 for t in turns)
    decode_image = decode.decoder(dct_scaling, dataclasses.replace(
        decode_options, exif_orientation=False) if upright else decode_options)
    by_file = dict(zip(paths, turns)) if turns is not None and not upright else None

    # Read and decode in one parallel map: a file's bytes go straight to the
    # decoder on the same thread (no separate read stage to buffer), and with
    # deterministic=False a slow file does not hold up the ones behind it.
    def load(source, label):
        if by_file is None:
            return decode_image(tf.io.read_file(source), image_size), label
        path, turn = source
        return decode_image(tf.io.read_file(path), image_size, turn), label

    def records(paths, labels):
        # fsencode: a file name that is not valid UTF-8 still reaches the
        # file system byte for byte.
        names = tf.constant([os.fsencode(p) for p in paths], tf.string)
        if by_file is not None:
            names = (names, tf.constant([by_file[p] for p in paths], tf.int32))
        return names, batching.encode_labels(labels, num_classes, multi_label)

    def identity(paths, labels):
        return {"source": "files", "files": file_cache.file_stamps(paths, labels),
                "num_classes": int(num_classes), "image_size": list(image_size),
                "dct_scaling": bool(dct_scaling), "decode": decode_options.record(),
                **({"multi_label": True} if multi_label else {})}

    if data_service and training:
        if input_context is not None:
            raise ValueError("`--data_service` serves one trainer; it cannot be "
                             "combined with a multi-worker strategy (--strategy).")
        # The dispatcher deals the files out in list order: shuffle the
        # list once so every stretch of it mixes the classes.
        order = np.random.RandomState(seed).permutation(len(paths))
        ds = tf.data.Dataset.from_tensor_slices(
            records([paths[i] for i in order], [labels[i] for i in order]))
        ds = ds.map(load, num_parallel_calls=tfdata.parallel_calls(), deterministic=False)
        return data_service_lib.service_pipeline(
            ds, service=data_service, batch_size=batch_size, num_examples=len(paths),
            shuffle_buffer=shuffle_buffer)
    use_file_cache = cache not in ("memory", "none")
    prefix = None
    if use_file_cache and training:
        # The cache freezes the order it is written in: write it in chunks,
        # from the file list shuffled once, and read the chunks in a new
        # random order every epoch.
        order = np.random.RandomState(seed).permutation(len(paths))
        paths, labels = [paths[i] for i in order], [labels[i] for i in order]
        size = file_cache.chunk_size(shuffle_buffer)
        num_chunks = -(-len(paths) // size)
        prefix = file_cache.cache_prefix(cache, batching.split_name(split, share), dict(
            identity(paths, labels), layout=["chunks", size, bool(deterministic)]),
            num_chunks)
    if use_file_cache and training and prefix:
        all_sources, all_labels = records(paths, labels)

        def chunk(k):
            start = k * size
            sources = tf.nest.map_structure(lambda t: t[start:start + size], all_sources)
            return tf.data.Dataset.from_tensor_slices(
                (sources, all_labels[start:start + size])).map(
                    load, num_parallel_calls=tfdata.parallel_calls(), deterministic=deterministic)

        ds = file_cache.cached_chunks(chunk, num_chunks, prefix, seed=seed,
                                      deterministic=deterministic)
        ds = ds.apply(tf.data.experimental.assert_cardinality(len(paths)))
        cache = "none"  # cached above, chunk by chunk
    else:
        if use_file_cache:
            # (Training gets here only when every cache slot is busy.)
            cache = (None if training else file_cache.cache_prefix(
                cache, batching.split_name(split, share),
                dict(identity(paths, labels), layout=["whole"]))) or "none"
        ds = tf.data.Dataset.from_tensor_slices(records(paths, labels))
        if training and cache == "none":
            # Shuffle the cheap file list before decoding, so memory holds only
            # the buffer of decoded images behind it.
            ds = ds.shuffle(len(paths), seed=seed, reshuffle_each_iteration=True)
        ds = ds.map(load, num_parallel_calls=tfdata.parallel_calls(),
                    deterministic=deterministic)
    return batching.batch_pipeline(ds, training=training, batch_size=batch_size,
                                   num_examples=len(paths), cache=cache, seed=seed,
                                   shuffle_buffer=shuffle_buffer,
                                   deterministic=deterministic, share=share)

