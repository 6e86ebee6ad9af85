"""TFRecord shards: write a class folder once, read it fast from anywhere.

A folder of class subfolders becomes ``N`` shards plus ``manifest.json``::

    output_dir/
      train-00000-of-00008.tfrecord ... train-00007-of-00008.tfrecord
      manifest.json   class names, counts per class, shards, skipped files

Each example holds the ENCODED image bytes (the original file unless
``max_side`` re-encodes it), the label, the file name relative to the
folder, the format and the image height/width (from the file check or the
JPEG header; 0 when neither gave them). Files are listed and checked with :mod:`catdog.scan`
first, so a bad file never enters a shard; the manifest names each skipped
file and why. Everything goes through ``tf.io.gfile`` (``gs://`` and other
cloud paths work) and every file is written to a temporary name and renamed,
so readers never see half a shard.

Reading (:func:`build_tfrecord_dataset`) decodes with the same
:func:`catdog.data.decode_and_resize` as the folder source: shards written
without ``max_side`` give the same pixels as the folder they came from.
"""

from __future__ import annotations

import collections
import json
import os
from typing import Optional, Sequence

import numpy as np
import tensorflow as tf

from catdog import data as data_lib
from catdog import decode
from catdog import fileio
from catdog import scan

MANIFEST = "manifest.json"
MANIFEST_FORMAT = "catdog-tfrecords-v1"
#: Aim for shards of about this many bytes when ``num_shards`` is not given
#: (100-200 MB shards read efficiently from cloud storage).
TARGET_SHARD_BYTES = 128 * 1024 * 1024

_FEATURES = {
    "image/encoded": tf.io.FixedLenFeature([], tf.string),
    "image/class/label": tf.io.FixedLenFeature([], tf.int64),
    "image/filename": tf.io.FixedLenFeature([], tf.string, default_value=""),
    "image/format": tf.io.FixedLenFeature([], tf.string, default_value=""),
    "image/height": tf.io.FixedLenFeature([], tf.int64, default_value=0),
    "image/width": tf.io.FixedLenFeature([], tf.int64, default_value=0),
}


def _bytes(value: bytes) -> tf.train.Feature:
    return tf.train.Feature(bytes_list=tf.train.BytesList(value=[value]))


def _int64(value: int) -> tf.train.Feature:
    return tf.train.Feature(int64_list=tf.train.Int64List(value=[int(value)]))


def _reencode(contents: bytes, max_side: int, quality: int):
    """Returns (jpeg bytes, height, width) with the longest side <= max_side."""
    image = tf.io.decode_image(contents, channels=3, dtype=tf.uint8,
                               expand_animations=False)
    h, w = int(image.shape[0]), int(image.shape[1])
    scale = min(1.0, max_side / max(h, w))
    if scale < 1.0:
        h, w = max(1, round(h * scale)), max(1, round(w * scale))
        # antialias: a one-off downscale that every later epoch reads, worth
        # the better filter.
        image = tf.image.resize(image, (h, w), method="bilinear", antialias=True)
        image = tf.cast(tf.clip_by_value(tf.round(image), 0.0, 255.0), tf.uint8)
    return tf.io.encode_jpeg(image, quality=quality).numpy(), h, w


def _header_size(check, contents: bytes):
    if check.height and check.width:
        return int(check.height), int(check.width)
    if contents[:2] == b"\xff\xd8":
        shape = tf.io.extract_jpeg_shape(contents).numpy()
        return int(shape[0]), int(shape[1])
    return 0, 0


def write_tfrecords(data_dir: str, output_dir: str, *, num_shards: int = 0,
                    max_side: int = 0, jpeg_quality: int = 95,
                    class_names: Optional[Sequence[str]] = None,
                    prefix: str = "", seed: int = 1337,
                    max_pixels: int = scan.DEFAULT_MAX_PIXELS,
                    progress: bool = True) -> dict:
    """Writes the images of a class folder into TFRecord shards.

    Files are shuffled (with ``seed``) before they are dealt into shards, so
    every shard holds a mix of classes and reading a few shards in parallel
    already gives mixed batches.

    Args:
      data_dir: folder with one subfolder per class.
      output_dir: where the shards and ``manifest.json`` go (created; local or
        a ``tf.io.gfile`` URL).
      num_shards: number of shards; 0 picks about 128 MB per shard.
      max_side: when > 0, images whose longest side exceeds it are decoded,
        downscaled to it (aspect ratio kept) and re-encoded as JPEG; smaller
        ones are stored as they are. 0 stores every file's bytes unchanged.
      jpeg_quality: JPEG quality of re-encoded images (1-100).
      class_names: explicit class order (default: alphanumeric folders).
      prefix: shard file name prefix; default the folder's base name.
      seed: seed of the file order.
      max_pixels: files whose header declares more pixels are skipped.
      progress: show progress of the file check.

    Returns:
      The manifest (also written to ``output_dir/manifest.json``).

    Raises:
      ValueError: bad arguments or folder (naming the argument and value).
    """
    if num_shards < 0:
        raise ValueError(f"`--num_shards` must be >= 0 (0: about 128 MB per "
                         f"shard). Received: num_shards={num_shards}")
    if max_side < 0:
        raise ValueError(f"`--max_side` must be >= 0 (0: keep every file as it "
                         f"is). Received: max_side={max_side}")
    if not 1 <= jpeg_quality <= 100:
        raise ValueError(f"`--jpeg_quality` must be in 1..100. Received: "
                         f"jpeg_quality={jpeg_quality}")
    paths, labels, class_names = scan.list_image_files(
        data_dir, class_names=list(class_names) if class_names else None)
    good, skipped = scan.usable_checks(paths, labels, max_pixels, progress)
    if not good:
        raise ValueError(f"No readable image in {data_dir!r}; nothing to write.")
    total_bytes = sum(int(c.size_bytes or 0) for c, _ in good)
    if not num_shards:
        num_shards = max(1, int(np.ceil(total_bytes / TARGET_SHARD_BYTES)))
    num_shards = min(num_shards, len(good))
    order = np.random.RandomState(seed).permutation(len(good))
    prefix = prefix or os.path.basename(os.path.normpath(data_dir)) or "data"
    tf.io.gfile.makedirs(output_dir)

    shards = []
    counts = collections.Counter()
    for shard in range(num_shards):
        name = f"{prefix}-{shard:05d}-of-{num_shards:05d}.tfrecord"
        path = fileio.join(output_dir, name)
        members = order[shard::num_shards]
        with fileio.atomic_path(path) as tmp, tf.io.TFRecordWriter(tmp) as writer:
            for i in members:
                check, label = good[int(i)]
                with tf.io.gfile.GFile(check.path, "rb") as f:
                    contents = f.read()
                fmt = (check.format or os.path.splitext(check.path)[1].lstrip(".")).lower()
                height, width = _header_size(check, contents)
                if max_side and (not height or max(height, width) > max_side):
                    contents, height, width = _reencode(contents, max_side, jpeg_quality)
                    fmt = "jpeg"
                example = tf.train.Example(features=tf.train.Features(feature={
                    "image/encoded": _bytes(contents),
                    "image/class/label": _int64(label),
                    "image/filename": _bytes(os.path.relpath(check.path, data_dir)
                                             .encode("utf-8")),
                    "image/format": _bytes(fmt.encode("utf-8")),
                    "image/height": _int64(height),
                    "image/width": _int64(width),
                }))
                writer.write(example.SerializeToString())
                counts[class_names[label]] += 1
        shards.append({"file": name, "num_examples": int(len(members))})

    manifest = {
        "format": MANIFEST_FORMAT,
        "source_dir": fileio.abspath(data_dir),
        "class_names": list(class_names),
        "num_examples": int(sum(s["num_examples"] for s in shards)),
        "counts": {name: int(counts.get(name, 0)) for name in class_names},
        "shards": shards,
        "skipped": skipped,
        "max_side": int(max_side),
        "jpeg_quality": int(jpeg_quality) if max_side else None,
    }
    fileio.write_json(fileio.join(output_dir, MANIFEST), manifest)
    return manifest


def read_manifest(directory: str) -> dict:
    """Reads ``directory/manifest.json``; ValueError says how to get one."""
    path = fileio.join(directory, MANIFEST)
    if not tf.io.gfile.exists(path):
        raise ValueError(
            f"No {MANIFEST} next to the shards in {directory!r}; catdog reads "
            "shards written by scripts/build_tfrecords.py, which writes the "
            "manifest (class names and counts) beside them.")
    with tf.io.gfile.GFile(path, "r") as f:
        manifest = json.load(f)
    if manifest.get("format") != MANIFEST_FORMAT:
        raise ValueError(f"{path!r} is not a catdog TFRecord manifest "
                         f"(format {manifest.get('format')!r}, expected "
                         f"{MANIFEST_FORMAT!r}).")
    return manifest


def resolve_shards(pattern: str, flag: str = "train_tfrecords"):
    """Returns (sorted shard paths, manifest, examples in those shards).

    Args:
      pattern: a glob (or comma-separated globs) of shard files, all in one
        folder with its ``manifest.json``.
      flag: the flag name for error messages.

    Raises:
      ValueError: nothing matches, the shards span folders, or a shard is
        not listed in the manifest.
    """
    files = sorted({f for p in pattern.split(",") if p.strip()
                    for f in tf.io.gfile.glob(p.strip())})
    files = [f for f in files if fileio.TMP_MARKER not in f and not f.endswith(MANIFEST)]
    if not files:
        raise ValueError(f"`--{flag}` matches no file. Received: {flag}={pattern!r}")
    folders = {os.path.dirname(f) for f in files}
    if len(folders) > 1:
        raise ValueError(f"`--{flag}` matches shards in several folders {sorted(folders)}; "
                         f"each set of shards has its own manifest. Received: "
                         f"{flag}={pattern!r}")
    folder = folders.pop()
    manifest = read_manifest(folder)
    sizes = {s["file"]: int(s["num_examples"]) for s in manifest["shards"]}
    unknown = [os.path.basename(f) for f in files if os.path.basename(f) not in sizes]
    if unknown:
        raise ValueError(f"`--{flag}` matches files not listed in {folder}/{MANIFEST}: "
                         f"{unknown[:5]}. Received: {flag}={pattern!r}")
    return files, manifest, sum(sizes[os.path.basename(f)] for f in files)


def index_tfrecords(data_config) -> data_lib.DataIndex:
    """The :class:`catdog.data.DataIndex` of ``train_tfrecords``/``val_tfrecords``.

    Class names come from the training manifest; the validation manifest
    must list the same classes in the same order.
    """
    train_files, train_manifest, n_train = resolve_shards(
        data_config.train_tfrecords, "train_tfrecords")
    val_files, val_manifest, n_val = resolve_shards(
        data_config.val_tfrecords, "val_tfrecords")
    class_names = list(train_manifest["class_names"])
    if list(val_manifest["class_names"]) != class_names:
        raise ValueError(
            f"Validation shards have classes {val_manifest['class_names']}, training "
            f"shards {class_names}; build both from folders with the same classes "
            "(or pass the same --class_names to build_tfrecords.py).")
    if data_config.class_names and list(data_config.class_names) != class_names:
        raise ValueError(
            f"`--class_names` {list(data_config.class_names)} differ from the "
            f"shards' classes {class_names} (labels are fixed when the shards are "
            "written). Received: class_names="
            f"{','.join(data_config.class_names)}")
    skipped = list(train_manifest.get("skipped", [])) + list(val_manifest.get("skipped", []))
    return data_lib.DataIndex(class_names,
                              data_lib.SourceSplit(train_files, n_train),
                              data_lib.SourceSplit(val_files, n_val),
                              skipped)


def parse_example(serialized: tf.Tensor):
    """Parses one serialized example into ``(encoded bytes, int64 label)``."""
    parsed = tf.io.parse_single_example(serialized, _FEATURES)
    return parsed["image/encoded"], parsed["image/class/label"]


def _assign_files(files: Sequence[str], sizes: Sequence[int], num_workers: int):
    """Deals shard files to workers so their example counts are as even as possible.

    Largest shard first, each to the worker holding the fewest examples so
    far (ties: the lower worker index). Deterministic, so every worker
    computes the same assignment.

    Returns:
      ``(files of each worker, examples of each worker)``, files in input order.
    """
    owned = [[] for _ in range(num_workers)]
    load = [0] * num_workers
    for i in sorted(range(len(files)), key=lambda i: (-int(sizes[i]), i)):
        w = min(range(num_workers), key=lambda w: (load[w], w))
        owned[w].append(i)
        load[w] += int(sizes[i])
    return [[files[i] for i in sorted(ids)] for ids in owned], load


def _file_sizes(files: Sequence[str]) -> list:
    manifest = read_manifest(os.path.dirname(files[0]))
    sizes = {s["file"]: int(s["num_examples"]) for s in manifest["shards"]}
    return [sizes[os.path.basename(f)] for f in files]


def build_tfrecord_dataset(files: Sequence[str], *, num_classes: int, image_size,
                           batch_size: int, training: bool, num_examples: int,
                           cache: str = "memory", seed: int = 1337,
                           shuffle_buffer: int = 0, deterministic: bool = False,
                           split: str = "train", dct_scaling: bool = False,
                           input_context: Optional[tf.distribute.InputContext] = None
                           ) -> tf.data.Dataset:
    """Reads shards into batches of ``(uint8 images, labels)``.

    ``list_files`` (shuffled with ``seed`` when training) -> parallel
    ``interleave`` of the shards -> parse -> decode + resize -> cache uint8
    -> shuffle -> batch -> prefetch. A training file cache is written per
    shard file, and the cached files are read in a new random order every
    epoch (the shuffle buffer is bounded without ``cache="memory"``). The options set file-level auto-sharding
    (``AutoShardPolicy.FILE``) for a dataset handed to tf.distribute as it is.
    With ``input_context`` the dataset is this worker's share: its own shard
    files (dealt out by example count, see :func:`_assign_files`), or, with
    fewer files than workers, every ``num_input_pipelines``-th record of a
    fixed-order read, decoded by this worker only.

    Args:
      files: shard paths (:func:`resolve_shards`).
      num_classes: number of classes (2 gives float labels of shape (1,)).
      image_size: ``(height, width)``.
      batch_size: global batch size.
      training: shuffle files and examples; drop the last partial batch.
      num_examples: examples in ``files`` (the default shuffle buffer).
      cache: ``"memory"``, ``"none"`` or a folder for cache files.
      seed: seed of the file and example shuffles.
      shuffle_buffer: example shuffle buffer; 0 means ``num_examples`` with
        ``cache="memory"``, else :data:`catdog.data.STREAM_SHUFFLE_BUFFER`.
      deterministic: fixed element order in the parallel stages.
      split: name of the cache file.
      dct_scaling: decode with :func:`catdog.data.decode_and_resize_scaled`.
      input_context: the ``tf.distribute.InputContext`` of this worker under
        ``strategy.distribute_datasets_from_function`` (see
        :func:`catdog.data.build_split`).

    Returns:
      The batched dataset.
    """
    image_size = tuple(int(s) for s in image_size)
    files = list(files)
    share, record_shard = None, None
    if input_context is not None:
        workers = int(input_context.num_input_pipelines)
        what = f"the {split} shards"
        if len(files) >= workers:
            owned, sizes = _assign_files(files, _file_sizes(files), workers)
            share = data_lib._worker_share(  # pylint: disable=protected-access
                input_context, sizes, batch_size, training, what)
            files = owned[share.index]
        else:
            share = data_lib._worker_share(  # pylint: disable=protected-access
                input_context, data_lib._element_shares(  # pylint: disable=protected-access
                    num_examples, workers), batch_size, training, what)
            record_shard = (workers, share.index)
        num_examples = share.num_examples
    decode_image = decode.decoder(dct_scaling)

    def load(serialized):
        contents, label = parse_example(serialized)
        if num_classes == 2:
            label = tf.reshape(tf.cast(label, tf.float32), (1,))
        else:
            label = tf.cast(label, tf.int32)
        return decode_image(contents, image_size), label

    file_cache = cache not in ("memory", "none")
    name = data_lib._split_name(f"tfrecords-{split}", share)  # pylint: disable=protected-access
    prefix = None
    if file_cache:
        # The shards by name, size and modification time (a rebuilt shard set
        # is another cache), and the manifest that labels them.
        folder = os.path.dirname(files[0])
        identity = {"source": "tfrecords",
                    "shards": data_lib._file_stamps(files),  # pylint: disable=protected-access
                    "manifest": data_lib._file_stamps(  # pylint: disable=protected-access
                        [fileio.join(folder, MANIFEST)]),
                    "record_shard": list(record_shard or ()),
                    "num_classes": int(num_classes), "image_size": list(image_size),
                    "dct_scaling": bool(dct_scaling)}
        per_file = training and not record_shard
        prefix = data_lib._cache_file(  # pylint: disable=protected-access
            cache, name, dict(identity, layout=["per-file" if per_file else "whole",
                                                bool(deterministic)]),
            len(files) if per_file else 0)
    if file_cache and training and not record_shard and prefix:
        # A file cache freezes the order it is written in: cache every shard
        # file on its own and read them in a new random order every epoch.
        names = tf.constant(files)

        def chunk(k):
            return tf.data.TFRecordDataset(names[k]).map(
                load, num_parallel_calls=tf.data.AUTOTUNE, deterministic=deterministic)

        ds = data_lib._cached_chunks(  # pylint: disable=protected-access
            chunk, len(files), prefix, seed=seed, deterministic=deterministic,
            cycle_length=16)
        ds = ds.apply(tf.data.experimental.assert_cardinality(num_examples))
        cache = "none"  # cached above, file by file
    else:
        if record_shard:
            # Fewer files than workers: every worker reads the records in the
            # same fixed order and keeps its own, before anything is decoded.
            ds = tf.data.Dataset.from_tensor_slices(files)
            ds = ds.interleave(tf.data.TFRecordDataset, cycle_length=min(len(files), 16),
                               block_length=1, num_parallel_calls=tf.data.AUTOTUNE,
                               deterministic=True)
            ds = ds.shard(*record_shard)
        else:
            ds = tf.data.Dataset.list_files(files, shuffle=training, seed=seed)
            ds = ds.interleave(tf.data.TFRecordDataset, cycle_length=min(len(files), 16),
                               block_length=1, num_parallel_calls=tf.data.AUTOTUNE,
                               deterministic=deterministic)
        ds = ds.map(load, num_parallel_calls=tf.data.AUTOTUNE, deterministic=deterministic)
        if file_cache:
            cache = prefix or "none"
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = (
        tf.data.experimental.AutoShardPolicy.FILE)
    return data_lib.batch_pipeline(ds, training=training, batch_size=batch_size,
                                   num_examples=num_examples, cache=cache, seed=seed,
                                   shuffle_buffer=shuffle_buffer,
                                   deterministic=deterministic, options=options,
                                   share=share)
