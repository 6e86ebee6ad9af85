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
import json
import math
import os
import re
from typing import Optional

from absl import logging
import numpy as np
import tensorflow as tf

from catdog import decode
from catdog import fileio
from catdog import scan
# Public names of catdog.data that live in catdog.decode.
from catdog.decode import (  # noqa: F401
    DCT_RATIOS, DECODE_VERSION, decode_and_resize, decode_and_resize_scaled)
from catdog.scan import keep_usable


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
    decode-checked first; bad ones are skipped and reported. Without
    ``val_dir``, ``validation_split`` of each class is held out
    (:func:`split_files`).

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
        class_dirs = [os.path.join(data_config.train_dir, name) for name in class_names]
        train, val = split_files(paths, labels, data_config.validation_split,
                                 data_config.seed, class_dirs=class_dirs)
        if not len(val) or not len(train):
            raise ValueError(
                f"`--validation_split` {data_config.validation_split} of "
                f"{len(paths)} usable images leaves an empty split; use more "
                "images, another split, or --val_dir.")
    return DataIndex(class_names, train, val, skipped)


def split_files(paths, labels, validation_split: float, seed: int, class_dirs=None):
    """Splits files into (train, val): stratified, stable and reproducible.

    Each class holds out ``validation_split`` of its own files, rounded to
    the nearest file (the per-class split ``ImageDataGenerator`` made): the
    first ones in the order of a seeded hash of each file's path relative to
    its class folder. Which files are held out depends only on the seed and
    the names within each class (not on their order or on where the folder
    is), so adding or removing one file moves at most one other file between
    the splits, and moving the whole data folder keeps the split. (``keras.utils.image_dataset_from_directory`` instead shuffles
    the whole file list, so one new file reshuffles every split.)

    Args:
      paths: the usable files.
      labels: their integer labels.
      validation_split: fraction of each class held out, in (0, 1).
      seed: seed of the hash order; another seed gives another split.
      class_dirs: folder of each class, by label; file names are hashed
        relative to it. Default: the paths as given.

    Returns:
      ``(train, val)`` :class:`SplitFiles`, each in the order of ``paths``;
      no file is in both.
    """
    members = collections.defaultdict(list)
    for i, label in enumerate(labels):
        members[label].append(i)
    held_out = set()
    for label, indices in members.items():
        root = class_dirs[label] if class_dirs is not None else None
        order = sorted(indices, key=lambda i: _hash_key(paths[i], root, seed))
        held_out.update(order[:_num_held_out(len(indices), validation_split)])
    take = lambda keep: SplitFiles([p for i, p in enumerate(paths) if keep(i)],
                                   [l for i, l in enumerate(labels) if keep(i)])
    return take(lambda i: i not in held_out), take(lambda i: i in held_out)


def _num_held_out(n: int, fraction: float) -> int:
    # Nearest file, halves up: never more than half a file from the fraction,
    # and one file more in a class changes the count by at most one.
    return int(math.floor(fraction * n + 0.5))


def _relative(path: str, root: Optional[str]) -> str:
    if root is None:
        return path
    prefix = root.rstrip("/") + "/"
    if path.startswith(prefix) and "/./" not in path and "/../" not in path:
        return path[len(prefix):]  # the usual case, without relpath's cost
    return os.path.relpath(path, root).replace(os.sep, "/")


def _hash_key(path: str, root: Optional[str], seed: int):
    name = _relative(path, root)
    digest = hashlib.sha256(f"{int(seed)}\n{name}".encode("utf-8", "surrogateescape"))
    return digest.hexdigest(), name


# ---------------------------------------------------------------------------
# split.json: the exact inputs of a run, for fine-tuning and resuming.
# ---------------------------------------------------------------------------

SPLIT_FORMAT = "catdog-split-v1"


def source_kind(data_config) -> str:
    """``"folder"``, ``"tfrecords"`` or ``"tfds"``: the input source of a config."""
    if data_config.train_tfrecords:
        return "tfrecords"
    if data_config.tfds_name:
        return "tfds"
    return "folder"


def split_record(data_config, index: DataIndex) -> dict:
    """What ``split.json`` holds: the training and validation inputs of a run.

    ``train`` and ``val`` are the file paths exactly as training reads them
    (folders), the shard files (TFRecords) or the split strings (TFDS). A
    folder record also has the labels and the folders the files came from,
    so the split can be compared by paths relative to them.
    """
    kind = source_kind(data_config)
    record = {"format": SPLIT_FORMAT, "source": kind,
              "class_names": list(index.class_names)}
    if kind == "folder":
        record.update(
            train=list(index.train.paths), val=list(index.val.paths),
            train_labels=[int(l) for l in index.train.labels],
            val_labels=[int(l) for l in index.val.labels],
            # "val" is empty when validation is held out of the training folder.
            roots={"train": data_config.train_dir, "val": data_config.val_dir})
        return record
    listed = ((lambda s: list(s.source)) if kind == "tfrecords" else
              (lambda s: [s.source]))
    record.update(train=listed(index.train), val=listed(index.val),
                  train_examples=len(index.train), val_examples=len(index.val))
    if kind == "tfds":
        record["tfds_name"] = data_config.tfds_name
    return record


def _split_entries(record: dict) -> dict:
    """``{input key: "train" | "val"}``, keyed independently of where the data lies.

    Folder files are keyed by the folder they came from (training or
    validation folder), class and path relative to the class folder; shards
    by file name; TFDS splits by dataset and split string.
    """
    entries = {}
    kind = record.get("source")
    for side in ("train", "val"):
        if kind == "folder":
            roots = record["roots"]
            origin = "val_dir" if side == "val" and roots["val"] else "train_dir"
            root = roots["val"] if origin == "val_dir" else roots["train"]
            names = record["class_names"]
            for path, label in zip(record[side], record[f"{side}_labels"]):
                name = names[label]
                key = (origin, name, _relative(path, os.path.join(root, name)))
                entries[key] = side
        elif kind == "tfrecords":
            for path in record[side]:
                entries[("shard", os.path.basename(path))] = side
        else:
            for split in record[side]:
                entries[("tfds", record.get("tfds_name", ""), split)] = side
    return entries


def split_digest(record: dict) -> str:
    """A digest of a split that stays the same when the data folder moves."""
    canonical = {"source": record.get("source"), "class_names": record.get("class_names"),
                 "entries": sorted([*key, side] for key, side in _split_entries(record).items())}
    for key in ("train_examples", "val_examples"):
        if key in record:
            canonical[key] = int(record[key])
    text = json.dumps(canonical, sort_keys=True, ensure_ascii=True)
    return hashlib.sha256(text.encode("ascii")).hexdigest()


def describe_split_change(old: dict, new: dict) -> str:
    """How split ``new`` differs from ``old``, for an error message."""
    unit = {"folder": "file", "tfrecords": "shard file", "tfds": "TFDS split"}.get(
        new.get("source"), "input")
    if old.get("source") != new.get("source"):
        return f"the input source changed from {old.get('source')} to {new.get('source')}"
    if old.get("class_names") != new.get("class_names"):
        return f"the classes changed from {old.get('class_names')} to {new.get('class_names')}"
    a, b = _split_entries(old), _split_entries(new)
    added = sorted(set(b) - set(a))
    removed = sorted(set(a) - set(b))
    moved = sorted(k for k in set(a) & set(b) if a[k] != b[k])
    plural = lambda n: f"{unit}{'' if n == 1 else 's'}"
    text = (f"{len(added)} {plural(len(added))} added, {len(removed)} removed, "
            f"{len(moved)} moved between training and validation")
    example = lambda keys: ", ".join("/".join(k[1:]) for k in keys[:3])
    for what, keys in (("added", added), ("removed", removed), ("moved", moved)):
        if keys:
            text += f"; {what}: {example(keys)}{', ...' if len(keys) > 3 else ''}"
    counts = [(len(old.get(s, [])), len(new.get(s, []))) for s in ("train", "val")]
    for key in ("train_examples", "val_examples"):
        if key in old and old.get(key) != new.get(key):
            text += f"; {key} {old.get(key)} -> {new.get(key)}"
    if not (added or removed or moved):
        text += (f" (training {counts[0][0]} -> {counts[0][1]}, validation "
                 f"{counts[1][0]} -> {counts[1][1]} {unit}s)")
    return text


def index_from_split(data_config, record: dict, where: str,
                     progress: bool = True) -> DataIndex:
    """The :class:`DataIndex` of exactly the split ``record`` (an earlier run's split.json).

    Folder records give their files and labels, each checked again: files
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
    if kind != "folder":
        index = index_source(data_config, progress=progress)
        now = split_record(data_config, index)
        if split_digest(now) != split_digest(record):
            raise ValueError(
                f"The {kind} input is no longer what {where} trained and validated on: "
                f"{describe_split_change(record, now)}. Point the source flags at "
                "exactly those shards / splits, or retrain that stage.")
        return index
    train = keep_usable(record["train"], record["train_labels"], data_config.max_pixels,
                        progress)
    val = keep_usable(record["val"], record["val_labels"], data_config.max_pixels, progress)
    _require_every_class(train[1], class_names, f"the training files of {where}")
    _require_every_class(val[1], class_names, f"the validation files of {where}")
    return DataIndex(class_names, SplitFiles(train[0], train[1]),
                     SplitFiles(val[0], val[1]), train[2] + val[2])


def _label_tensor(labels, num_classes):
    # Two classes: float 0/1 of shape (1,) for a sigmoid head and binary
    # cross-entropy (Keras' label_mode="binary"); more: int for a softmax head.
    if num_classes == 2:
        return np.asarray(labels, np.float32).reshape(-1, 1)
    return np.asarray(labels, np.int32)


def _split_name(split, share):
    # Each worker of a multi-worker job caches its own share under its own name.
    if share is None:
        return split
    return f"{split}-worker{share.index}of{len(share.sizes)}"


#: Caches of one key that may be written at the same time by different runs.
_CACHE_SLOTS = 8
# Cache prefixes this process holds (prefix -> open lock file). The flock is
# held until the process exits, so another run never clears files a live
# one is writing, and the kernel releases it when the process dies.
_held_caches: dict = {}


def _file_stamps(paths, labels=None) -> list:
    """``[path, size, mtime_ns(, label)]`` of each file, for a cache key."""
    stamps = []
    for i, path in enumerate(paths):
        try:
            size, mtime = fileio.stat(path)
        except OSError as e:
            raise ValueError(f"{path!r} cannot be read any more ({e}); it changed "
                             "after the file check. Rerun the job.") from e
        stamps.append([path, size, mtime] + ([int(labels[i])] if labels is not None else []))
    return stamps


def _cache_file(cache_dir, split, identity, num_chunks: int = 0):
    """The file-cache prefix of ``identity`` under ``cache_dir``, claimed for this run.

    The name carries a digest of everything that changes the cached pixels
    and labels (``identity``: the files with their sizes and modification
    times or the shard / TFDS files, labels, image size, decode options, the
    layout; plus TensorFlow's version and :data:`DECODE_VERSION`), so a
    changed file or setting never reads a stale cache. See
    :func:`_claim_cache` for concurrent and killed runs.

    Args:
      cache_dir: the ``--cache`` folder (created).
      split: split name (with the worker share, see :func:`_split_name`).
      identity: JSON-serialisable description of the cached content.
      num_chunks: chunks cached as ``<prefix>-c<k>`` (0: one cache file).

    Returns:
      The prefix to pass to ``Dataset.cache``, or None when every slot of
      this key is being written by other live runs (then do not cache).
    """
    key = dict(identity, tensorflow=tf.__version__, decode_version=decode.DECODE_VERSION)
    digest = hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode("utf-8"))
    tf.io.gfile.makedirs(cache_dir)
    base = os.path.join(cache_dir, f"catdog-{split}-{digest.hexdigest()[:16]}")
    return _claim_cache(base, num_chunks)


def _cache_parts(prefix: str) -> dict:
    """``{part: [file names]}`` of the cache files of ``prefix`` in its folder.

    A part is the prefix itself or one of its chunks ``<prefix>-c<k>``; its
    files are the names TF 2.21's cache writer gives them: while writing
    ``<part>_<n>.lockfile``, ``<part>_<n>.data-*-of-*.tempstate<id>`` and
    ``<part>_<n>.index``; then ``<part>.data-*-of-*`` and ``<part>.index``
    (merged), after which the ``_<n>`` files, lockfiles included, are deleted.
    """
    folder, stem = os.path.split(prefix)
    pattern = re.compile("(" + re.escape(stem) + r"(?:-c\d+)?)"
                         r"(?:_\d+\.|\.index|\.data-\d+-of-\d+)")
    parts = collections.defaultdict(list)
    for name in os.listdir(folder or "."):
        match = pattern.match(name)
        if match:
            parts[match.group(1)].append(name)
    return parts


def _part_complete(part: str, names) -> bool:
    # Merged and finished: the index exists and no writer's lockfile is left
    # (the merged index is written in place, so a writer killed while merging
    # leaves a truncated one, next to its lockfile).
    stem = os.path.basename(part)
    return f"{stem}.index" in names and not any(
        re.fullmatch(re.escape(stem) + r"_\d+\.lockfile", n) for n in names)


def _cache_complete(prefix: str, num_chunks: int) -> bool:
    parts = _cache_parts(prefix)
    wanted = [f"{prefix}-c{k}" for k in range(num_chunks)] if num_chunks else [prefix]
    return all(_part_complete(p, parts.get(os.path.basename(p), ())) for p in wanted)


def _claim_cache(base: str, num_chunks: int = 0):
    """Picks the cache prefix for this run and clears what a dead run left.

    Each prefix has a lock file ``<prefix>.lock`` on which the run that
    writes (or may write) the cache holds an exclusive ``flock`` for the
    rest of its life. Holding it means no live process writes this prefix,
    so TensorFlow's lockfile and partial files under it are leftovers of a
    killed run: they are deleted (only files of this prefix with the names
    TensorFlow's cache writer gives them), else the next ``cache()`` would
    fail with ``AlreadyExistsError``. When another live run holds the lock,
    a complete cache is read without it; an incomplete one is left alone and
    this run takes the next slot (``<base>-s1``, ...), writing a cache of its
    own. Remote cache folders (``gs://``) are not locked.
    """
    if fileio.is_remote(base):
        logging.warning("File cache %s is not on a local disk: it is not locked, so "
                        "a killed run's partial cache must be deleted by hand.", base)
        return base
    import fcntl  # pylint: disable=import-outside-toplevel
    for slot in range(_CACHE_SLOTS):
        prefix = base if not slot else f"{base}-s{slot}"
        if prefix in _held_caches:
            return prefix
        lock = open(f"{prefix}.lock", "a", encoding="utf-8")  # pylint: disable=consider-using-with
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            lock.close()
            if _cache_complete(prefix, num_chunks):
                return prefix
            logging.info("Cache %s is being written by another run; using the next slot.",
                         prefix)
            continue
        _held_caches[prefix] = lock
        _clear_partial_cache(prefix)
        return prefix
    logging.warning("Every slot of file cache %s is being written by another run; "
                    "this run does not cache.", base)
    return None


def _clear_partial_cache(prefix: str) -> None:
    """Deletes the incomplete parts a killed run left of the cache ``prefix``.

    Only files with the names TensorFlow's cache writer gives them (see
    :func:`_cache_parts`) are touched, and complete parts are kept. Call only
    while holding the prefix's lock (no live run writes it).
    """
    folder = os.path.dirname(prefix)
    for part, names in sorted(_cache_parts(prefix).items()):
        if not _part_complete(part, names):
            for name in sorted(names):
                logging.info("Removing %s, left by a run killed while caching.", name)
                os.remove(os.path.join(folder, name))


def build_dataset(paths, labels, *, num_classes: int, image_size, batch_size: int,
                  training: bool, cache: str = "memory", seed: int = 1337,
                  shuffle_buffer: int = 0, deterministic: bool = False,
                  split: str = "train", dct_scaling: bool = False,
                  input_context: Optional[tf.distribute.InputContext] = None
                  ) -> tf.data.Dataset:
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
    shuffle buffer (default :data:`STREAM_SHUFFLE_BUFFER` images), not by
    the split: ``"none"`` shuffles the file list before decoding, anew every
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
        split with ``cache="memory"``, else :data:`STREAM_SHUFFLE_BUFFER`.
      deterministic: keep element order fixed in parallel stages.
      split: name used for the cache file.
      dct_scaling: decode with :func:`decode_and_resize_scaled` instead of
        :func:`decode_and_resize` (faster on large JPEGs; not pixel-identical).
      input_context: under ``strategy.distribute_datasets_from_function``,
        the ``tf.distribute.InputContext`` of this worker: the dataset then
        reads and decodes only this worker's share of the files (every
        ``num_input_pipelines``-th file), yields per-replica batches, and
        every worker runs the same number of steps.

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
        share = _worker_share(input_context, _element_shares(len(paths), workers),
                              batch_size, training, f"the {split} split")
        paths, labels = list(paths)[share.index::workers], list(labels)[share.index::workers]
    decode_image = decode.decoder(dct_scaling)

    # Read and decode in one parallel map: a file's bytes go straight to the
    # decoder on the same thread (no separate read stage to buffer), and with
    # deterministic=False a slow file does not hold up the ones behind it.
    def load(path, label):
        return decode_image(tf.io.read_file(path), image_size), label

    def records(paths, labels):
        # fsencode: a file name that is not valid UTF-8 still reaches the
        # file system byte for byte.
        return (tf.constant([os.fsencode(p) for p in paths], tf.string),
                _label_tensor(labels, num_classes))

    def identity(paths, labels):
        return {"source": "files", "files": _file_stamps(paths, labels),
                "num_classes": int(num_classes), "image_size": list(image_size),
                "dct_scaling": bool(dct_scaling)}

    file_cache = cache not in ("memory", "none")
    prefix = None
    if file_cache and training:
        # The cache freezes the order it is written in: write it in chunks,
        # from the file list shuffled once, and read the chunks in a new
        # random order every epoch.
        order = np.random.RandomState(seed).permutation(len(paths))
        paths, labels = [paths[i] for i in order], [labels[i] for i in order]
        size = _chunk_size(shuffle_buffer)
        num_chunks = -(-len(paths) // size)
        prefix = _cache_file(cache, _split_name(split, share), dict(
            identity(paths, labels), layout=["chunks", size, bool(deterministic)]),
            num_chunks)
    if file_cache and training and prefix:
        all_paths, all_labels = (tf.constant(t) for t in records(paths, labels))

        def chunk(k):
            start = k * size
            return tf.data.Dataset.from_tensor_slices(
                (all_paths[start:start + size], all_labels[start:start + size])).map(
                    load, num_parallel_calls=tf.data.AUTOTUNE, deterministic=deterministic)

        ds = _cached_chunks(chunk, num_chunks, prefix, seed=seed,
                            deterministic=deterministic)
        ds = ds.apply(tf.data.experimental.assert_cardinality(len(paths)))
        cache = "none"  # cached above, chunk by chunk
    else:
        if file_cache:
            # (Training gets here only when every cache slot is busy.)
            cache = (None if training else _cache_file(
                cache, _split_name(split, share),
                dict(identity(paths, labels), layout=["whole"]))) or "none"
        ds = tf.data.Dataset.from_tensor_slices(records(paths, labels))
        if training and cache == "none":
            # Shuffle the cheap file list before decoding, so memory holds only
            # the buffer of decoded images behind it.
            ds = ds.shuffle(len(paths), seed=seed, reshuffle_each_iteration=True)
        ds = ds.map(load, num_parallel_calls=tf.data.AUTOTUNE,
                    deterministic=deterministic)
    return batch_pipeline(ds, training=training, batch_size=batch_size,
                          num_examples=len(paths), cache=cache, seed=seed,
                          shuffle_buffer=shuffle_buffer, deterministic=deterministic,
                          share=share)


def build_datasets(data_config, index: Optional[DataIndex] = None,
                   progress: bool = True):
    """Returns ``(train_ds, val_ds, index)`` for a :class:`DataConfig`.

    The source is the folder ``train_dir``, the TFRecord shards
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


# ---------------------------------------------------------------------------
# Input sources, speed and the shared batching tail (folder, TFRecord, TFDS).
# ---------------------------------------------------------------------------

#: Default shuffle buffer (decoded images) without an in-memory cache: bounds
#: training memory (about 150 MB at 224x224) whatever the size of the split.
STREAM_SHUFFLE_BUFFER = 1024
#: Cached chunks read at the same time when a file cache is shuffled.
_CHUNK_CYCLE = 4


def _chunk_size(shuffle_buffer: int) -> int:
    # Chunks small enough that the buffer holds all the chunks being read,
    # so every epoch mixes whole chunks, grouped anew.
    return max(1, int(shuffle_buffer or STREAM_SHUFFLE_BUFFER) // _CHUNK_CYCLE)


def _cached_chunks(chunk_fn, num_chunks: int, prefix: str, *, seed: int,
                   deterministic: bool, cycle_length: int = _CHUNK_CYCLE
                   ) -> tf.data.Dataset:
    """Chunks of a split, each cached in its own file, read in a random order.

    Args:
      chunk_fn: ``k -> dataset`` of the decoded elements of chunk ``k``.
      num_chunks: number of chunks.
      prefix: cache file prefix; chunk ``k`` is cached at ``<prefix>-c<k>``.
      seed: seed of the chunk order, drawn anew every epoch.
      deterministic: fixed element order.
      cycle_length: chunks read at the same time.

    Returns:
      The elements of every chunk once, ``cycle_length`` chunks interleaved.
    """
    order = tf.data.Dataset.range(num_chunks).shuffle(
        num_chunks, seed=seed, reshuffle_each_iteration=True)

    def cached(k):
        return chunk_fn(k).cache(tf.strings.join([prefix, "-c", tf.strings.as_string(k)]))

    return order.interleave(cached, cycle_length=min(cycle_length, num_chunks),
                            block_length=1, num_parallel_calls=tf.data.AUTOTUNE,
                            deterministic=deterministic)


@dataclasses.dataclass(frozen=True)
class _WorkerShare:
    """One worker's part of a split under a multi-worker strategy.

    Built by :func:`_worker_share`. Every worker computes the same shares (from
    the same index), so all of them agree on the number of steps.

    Attributes:
      index: this worker's input pipeline id.
      sizes: examples each worker holds, in worker order.
      replicas: replicas this worker feeds.
      batch_size: per-replica batch size.
      global_batch: global batch size.
    """

    index: int
    sizes: tuple
    replicas: int
    batch_size: int
    global_batch: int

    @property
    def num_examples(self) -> int:
        return int(self.sizes[self.index])

    def train_examples(self) -> int:
        """Examples every worker uses per training epoch (the same on all).

        The smallest share rounded down to whole steps: with uneven shares a
        worker with more examples leaves a different few out each epoch
        (after its shuffle), so every worker runs the same number of steps.
        """
        per_step = self.batch_size * self.replicas
        return (min(self.sizes) // per_step) * per_step

    def eval_batch_sizes(self) -> list:
        """Per-replica batch sizes of this worker's validation share.

        Every worker runs the same number of steps and every replica gets a
        non-empty batch at every step (an empty batch fails in oneDNN on some
        CPUs), so the sizes are as even as possible rather than a fixed
        batch size with a short last batch.
        """
        total = sum(self.sizes)
        steps = min(-(-total // self.global_batch), min(self.sizes) // self.replicas)
        per_worker = steps * self.replicas
        q, r = divmod(self.num_examples, per_worker)
        return [q + 1] * r + [q] * (per_worker - r)


def _element_shares(num_examples: int, num_workers: int) -> tuple:
    """Sizes of ``Dataset.shard(num_workers, w)`` of ``num_examples`` elements."""
    return tuple(len(range(w, int(num_examples), num_workers)) for w in range(num_workers))


def _worker_share(input_context, sizes, batch_size: int, training: bool,
                  what: str) -> Optional[_WorkerShare]:
    """The :class:`_WorkerShare` of ``input_context``, or None without one.

    Args:
      input_context: a ``tf.distribute.InputContext`` (from
        ``strategy.distribute_datasets_from_function``) or None.
      sizes: examples each worker holds, in worker order.
      batch_size: the GLOBAL batch size.
      training: whether the split is used for training.
      what: the split, for error messages.

    Raises:
      ValueError: a share too small for one step, naming ``--batch_size``.
    """
    if input_context is None:
        return None
    workers = int(input_context.num_input_pipelines)
    replicas = int(input_context.num_replicas_in_sync)
    share = _WorkerShare(index=int(input_context.input_pipeline_id),
                         sizes=tuple(int(n) for n in sizes),
                         replicas=max(1, replicas // workers),
                         batch_size=int(input_context.get_per_replica_batch_size(batch_size)),
                         global_batch=int(batch_size))
    if training and not share.train_examples():
        raise ValueError(
            f"`--batch_size` {batch_size} is too large for {what} across {workers} "
            f"workers: the smallest worker share holds {min(share.sizes)} examples, "
            f"fewer than one step ({share.batch_size * share.replicas} per worker). "
            f"Use a smaller --batch_size. Received: batch_size={batch_size}")
    if not training and min(share.sizes) < share.replicas:
        raise ValueError(
            f"{what} has {sum(share.sizes)} examples, fewer than one per replica "
            f"({replicas} replicas on {workers} workers); add examples or use "
            "fewer workers.")
    return share


def batch_pipeline(ds: tf.data.Dataset, *, training: bool, batch_size: int,
                   num_examples: int, cache: str = "memory", seed: int = 1337,
                   shuffle_buffer: int = 0, deterministic: bool = False,
                   options: Optional[tf.data.Options] = None,
                   share: Optional[_WorkerShare] = None) -> tf.data.Dataset:
    """The tail every source shares: cache -> shuffle -> batch -> prefetch.

    Args:
      ds: a dataset of decoded ``(uint8 image, label)`` elements.
      training: shuffle (reshuffled every epoch) and drop the last partial batch.
      batch_size: global batch size.
      num_examples: elements in ``ds`` (the default shuffle buffer).
      cache: ``"memory"``, ``"none"`` or a cache file path prefix.
      seed: shuffle seed.
      shuffle_buffer: shuffle buffer size; 0 means ``num_examples`` with
        ``cache="memory"``, else at most :data:`STREAM_SHUFFLE_BUFFER` (memory
        bounded by the buffer, not the split). Never less than the examples an
        epoch leaves out plus two, so the shuffle reads ``ds`` to its end and
        a cache in it is complete after the first epoch.
      deterministic: keep element order fixed in parallel stages.
      options: extra ``tf.data.Options`` merged in (e.g. a source's
        auto-shard policy).
      share: this worker's share of a multi-worker job (``ds`` then holds
        only that share): batches are per replica, every worker runs the
        same number of steps, and tf.distribute is told not to shard again.

    Returns:
      The batched, prefetched dataset.
    """
    if cache == "memory":
        ds = ds.cache()
    elif cache and cache != "none":
        ds = ds.cache(cache)
    if training:
        n = max(1, int(num_examples))
        buffer = shuffle_buffer or (n if cache == "memory" else min(n, STREAM_SHUFFLE_BUFFER))
        used = share.train_examples() if share else (n // batch_size) * batch_size
        buffer = min(n, max(int(buffer), n - used + 2))
        ds = ds.shuffle(buffer, seed=seed, reshuffle_each_iteration=True)
    if share is None:
        ds = ds.batch(batch_size, drop_remainder=training,
                      num_parallel_calls=tf.data.AUTOTUNE, deterministic=deterministic)
    elif training:
        used = share.train_examples()
        if used < share.num_examples:
            # Leave out the excess AFTER the shuffle (a different few every
            # epoch), reading to the end so a file cache upstream is completed.
            ds = ds.enumerate().filter(lambda i, _: i < used).map(lambda _, e: e)
        ds = ds.batch(share.batch_size, drop_remainder=True,
                      num_parallel_calls=tf.data.AUTOTUNE, deterministic=deterministic)
        ds = ds.apply(tf.data.experimental.assert_cardinality(used // share.batch_size))
    else:
        sizes = share.eval_batch_sizes()
        ds = ds.batch(max(sizes))
        if min(sizes) != max(sizes):
            ds = ds.rebatch(tf.constant(sizes, tf.int64))
        ds = ds.apply(tf.data.experimental.assert_cardinality(len(sizes)))
    ds = ds.prefetch(tf.data.AUTOTUNE)
    base = tf.data.Options()
    base.deterministic = bool(deterministic)
    # Lets tf.data parallelise any stateless map a user appends downstream.
    base.experimental_optimization.map_parallelization = True
    if options is not None:
        base = base.merge(options)
    if share is not None:
        # Each worker already holds only its own share.
        base.experimental_distribute.auto_shard_policy = (
            tf.data.experimental.AutoShardPolicy.OFF)
    return ds.with_options(base)


@dataclasses.dataclass
class SourceSplit:
    """One split of a TFRecord or TFDS source: what to read and how many examples.

    Stands in for :class:`SplitFiles` in a :class:`DataIndex` (``len()`` is
    the number of examples).

    Attributes:
      source: shard file paths (TFRecords) or the TFDS split string.
      num_examples: number of examples in the split.
    """

    source: object
    num_examples: int

    def __len__(self) -> int:
        return int(self.num_examples)


def index_source(data_config, progress: bool = True) -> DataIndex:
    """The :class:`DataIndex` of whichever source ``data_config`` names.

    Folder (``train_dir``): :func:`index_data`. TFRecords
    (``train_tfrecords``): the shards and their ``manifest.json``. TFDS
    (``tfds_name``): the dataset's info (prepared if needed).
    """
    if data_config.train_tfrecords:
        from catdog import tfrecords  # pylint: disable=import-outside-toplevel
        return tfrecords.index_tfrecords(data_config)
    if data_config.tfds_name:
        from catdog import tfds_source  # pylint: disable=import-outside-toplevel
        return tfds_source.index_tfds(data_config)
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
    """
    files = index.train if split == "train" else index.val
    common = dict(num_classes=index.num_classes, image_size=data_config.image_size,
                  batch_size=data_config.batch_size, training=training,
                  cache=data_config.cache, seed=data_config.seed,
                  shuffle_buffer=data_config.shuffle_buffer,
                  deterministic=data_config.deterministic,
                  # Validation always decodes exactly: the checkpoint is chosen
                  # on the pixels evaluation, prediction and export see.
                  dct_scaling=data_config.dct_scaling and split == "train",
                  input_context=input_context)
    if data_config.train_tfrecords:
        from catdog import tfrecords  # pylint: disable=import-outside-toplevel
        return tfrecords.build_tfrecord_dataset(files.source, num_examples=len(files),
                                                split=split, **common)
    if data_config.tfds_name:
        from catdog import tfds_source  # pylint: disable=import-outside-toplevel
        return tfds_source.build_tfds_dataset(data_config, files.source,
                                              num_examples=len(files), **common)
    return build_dataset(files.paths, files.labels, split=split, **common)
