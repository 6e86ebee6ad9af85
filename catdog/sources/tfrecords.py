"""The TFRecord source: shards written by ``scripts/build_tfrecords.py``.

:func:`resolve_shards` finds the shards of a flag and their
``manifest.json`` (class names, counts, skipped files; written by
:mod:`catdog.sources.tfrecord_writer`); :func:`build_tfrecord_dataset`
reads them with the same :func:`catdog.decode.decode_and_resize` as the
folder source: shards written without ``max_side`` give the same pixels as
the folder they came from. Shards stored at the training size
(``build_tfrecords.py --image_size``, see :func:`stored_form`) are only
decoded (raw pixels: reshaped) when the run's size and decode options are
the ones they were written with; at another size they are resized from the
stored pixels, with a warning.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Optional, Sequence

from absl import logging
import tensorflow as tf

from catdog import batching
from catdog import decode
from catdog import file_cache
from catdog import fileio
from catdog import splits
from catdog import tfdata

MANIFEST = "manifest.json"
MANIFEST_FORMAT = "catdog-tfrecords-v1"

_FEATURES = {
    "image/encoded": tf.io.FixedLenFeature([], tf.string),
    "image/class/label": tf.io.FixedLenFeature([], tf.int64),
    "image/filename": tf.io.FixedLenFeature([], tf.string, default_value=""),
    "image/format": tf.io.FixedLenFeature([], tf.string, default_value=""),
    "image/height": tf.io.FixedLenFeature([], tf.int64, default_value=0),
    "image/width": tf.io.FixedLenFeature([], tf.int64, default_value=0),
    "image/channels": tf.io.FixedLenFeature([], tf.int64, default_value=0),
    # 0: written before the writer recorded it (the bytes are parsed instead).
    "image/orientation": tf.io.FixedLenFeature([], tf.int64, default_value=0),
}
#: Manifest keys of how the images are stored (absent in manifests of
#: shards written before images could be stored at a size: as files).
STORED_KEYS = ("image_size", "raw", "jpeg_quality", "jpeg_chroma", "max_side",
               "exif_orientation", "resize_mode", "interpolation", "color_mode")



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


def index_tfrecords(data_config) -> batching.DataIndex:
    """The :class:`catdog.batching.DataIndex` of ``train_tfrecords``/``val_tfrecords``.

    Class names come from the training manifest; the validation manifest
    must list the same classes in the same order.
    """
    train_files, train_manifest, n_train = resolve_shards(
        data_config.train_tfrecords, "train_tfrecords")
    val_files, val_manifest, n_val = resolve_shards(
        data_config.val_tfrecords, "val_tfrecords")
    both = splits.shared_files(train_files, val_files)
    if both:
        raise ValueError(
            f"`--val_tfrecords` matches {len(both)} shard file(s) that --train_tfrecords "
            f"matches too ({', '.join(repr(f) for f in both[:3])}), so validation would "
            "be measured on training examples. Give validation shards built from other "
            f"images. Received: train_tfrecords={data_config.train_tfrecords!r}, "
            f"val_tfrecords={data_config.val_tfrecords!r}")
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
    return batching.DataIndex(class_names,
                              batching.SourceSplit(train_files, n_train),
                              batching.SourceSplit(val_files, n_val),
                              skipped)


def stored_form(manifest: dict):
    """``(image_size, DecodeOptions, raw)`` of shards stored at a training size.

    None for shards holding the image files (or their ``max_side``
    re-encodes), including every manifest written before sizes were stored.
    """
    size = manifest.get("image_size")
    if not size:
        return None
    defaults = decode.DecodeOptions()
    options = decode.DecodeOptions(**{name: manifest.get(name, default) for name, default
                                      in defaults.record().items()})
    return tuple(int(s) for s in size), options, bool(manifest.get("raw"))


def _size_text(size) -> str:
    return ",".join(str(int(s)) for s in size)


def _shard_decoder(folder: str, manifest: dict, image_size, options, dct_scaling: bool):
    """The decode ``(contents, image_size, orientation) -> uint8 image`` of
    the shards in ``folder`` (``orientation``: the example's
    ``image/orientation``).

    Shards stored at ``image_size`` with ``options``: decode only (raw:
    reshape). Stored at another size or with other resize options: a
    warning, then the run's resize of the stored pixels. Another color mode
    is refused: its channels cannot be made back into the run's pixels.
    """
    stored = stored_form(manifest)
    if stored is None:
        return _file_decoder(manifest, options, dct_scaling)
    size, made, raw = stored
    if made.color_mode != options.color_mode:
        raise ValueError(
            f"The shards in {folder} hold {made.color_mode} pixels (color_mode="
            f"{made.color_mode} in {MANIFEST}) but this run decodes --color_mode="
            f"{options.color_mode}. Rebuild them with build_tfrecords.py --color_mode="
            f"{options.color_mode}, or train with --color_mode={made.color_mode}.")
    shape = (*size, made.channels)

    def pixels(contents):
        if raw:
            return tf.reshape(tf.io.decode_raw(contents, tf.uint8), shape)
        return tf.ensure_shape(tf.io.decode_jpeg(contents, channels=made.channels), shape)

    if size == tuple(image_size) and made == options:
        return lambda contents, _, __: pixels(contents)
    differ = [f"{name}={getattr(made, name)} (this run: --{name}={getattr(options, name)})"
              for name in options.record() if getattr(made, name) != getattr(options, name)]
    logging.warning(
        "The shards in %s are stored at %s%s; this run's --image_size=%s: every "
        "image is resized again from the stored pixels (not from the original "
        "file). Rebuild them with build_tfrecords.py --image_size=%s and this "
        "run's decode flags to read them without a resize.", folder, _size_text(size),
        f" with {', '.join(differ)}" if differ else "", _size_text(image_size),
        _size_text(image_size))
    if raw:
        return lambda contents, target, _: decode.resize_to_uint8(pixels(contents), target,
                                                                  options)
    # A stored JPEG has no EXIF: the run's decode gives the stored pixels, resized.
    resize = decode.decoder(dct_scaling, dataclasses.replace(options, exif_orientation=False))
    return lambda contents, target, _: resize(contents, target)


def _file_decoder(manifest: dict, options, dct_scaling: bool):
    """The decode of shards holding the files' bytes (not stored at a size).

    The writer read every file's EXIF orientation (manifest
    ``orientations``): all upright decodes with no EXIF op, some turned
    takes each example's ``image/orientation``; shards written before that
    parse the bytes in the graph. The pixels are the same either way.
    """
    known = manifest.get("orientations") if options.exif_orientation else None
    if known == "upright":
        upright = decode.decoder(dct_scaling, dataclasses.replace(options, exif_orientation=False))
        return lambda contents, target, _: upright(contents, target)
    decode_image = decode.decoder(dct_scaling, options)
    if known == "per_example":
        return lambda contents, target, turn: decode_image(contents, target,
                                                           tf.cast(turn, tf.int32))
    return lambda contents, target, _: decode_image(contents, target)


def parse_example(serialized: tf.Tensor):
    """Parses one serialized example into ``(encoded bytes, int64 label)``."""
    return parse_record(serialized)[:2]


def parse_record(serialized: tf.Tensor):
    """Parses one serialized example into ``(encoded bytes, int64 label,
    int64 EXIF orientation of the bytes)`` (orientation 0: not recorded)."""
    parsed = tf.io.parse_single_example(serialized, _FEATURES)
    return parsed["image/encoded"], parsed["image/class/label"], parsed["image/orientation"]


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
                           decode_options: Optional[decode.DecodeOptions] = None,
                           input_context: Optional[tf.distribute.InputContext] = None
                           ) -> tf.data.Dataset:
    """Reads shards into batches of ``(uint8 images, labels)``.

    ``list_files`` (shuffled with ``seed`` when training) -> parallel
    ``interleave`` of the shards -> parse -> decode + resize -> cache uint8
    -> shuffle -> batch -> prefetch. A training file cache is written per
    shard file, and the cached files are read in a new random order every
    epoch (the shuffle buffer is bounded without ``cache="memory"``). The
    options set file-level auto-sharding (``AutoShardPolicy.FILE``) for a
    dataset handed to tf.distribute as it is.
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
        ``cache="memory"``, else :data:`catdog.batching.STREAM_SHUFFLE_BUFFER`.
      deterministic: fixed element order in the parallel stages.
      split: name of the cache file.
      dct_scaling: decode with :func:`catdog.decode.decode_and_resize_scaled`.
      decode_options: the :class:`catdog.decode.DecodeOptions` of every image
        (default: ``DecodeOptions()``); part of the file cache key.
      input_context: the ``tf.distribute.InputContext`` of this worker under
        ``strategy.distribute_datasets_from_function`` (see
        :func:`catdog.data.build_split`).

    Returns:
      The batched dataset.
    """
    image_size = tuple(int(s) for s in image_size)
    files = list(files)
    folder = os.path.dirname(files[0])
    manifest = read_manifest(folder)
    decode_options = decode_options or decode.DecodeOptions()
    decode_image = _shard_decoder(folder, manifest, image_size, decode_options,
                                  dct_scaling)
    share, record_shard = None, None
    if input_context is not None:
        workers = int(input_context.num_input_pipelines)
        what = f"the {split} shards"
        if len(files) >= workers:
            owned, sizes = _assign_files(files, _file_sizes(files), workers)
            share = batching.worker_share(
                input_context, sizes, batch_size, training, what)
            files = owned[share.index]
        else:
            share = batching.worker_share(
                input_context, batching.element_shares(
                    num_examples, workers), batch_size, training, what)
            record_shard = (workers, share.index)
        num_examples = share.num_examples

    def load(serialized):
        contents, label, orientation = parse_record(serialized)
        return (decode_image(contents, image_size, orientation),
                batching.encode_labels(label, num_classes))

    use_file_cache = cache not in ("memory", "none")
    name = batching.split_name(f"tfrecords-{split}", share)
    prefix = None
    if use_file_cache:
        # The shards by name, size and modification time (a rebuilt shard set
        # is another cache), the manifest that labels them and how they store
        # the images.
        identity = {"source": "tfrecords",
                    "stored": {key: manifest.get(key) for key in STORED_KEYS},
                    "shards": file_cache.file_stamps(files),
                    "manifest": file_cache.file_stamps(
                        [fileio.join(folder, MANIFEST)]),
                    "record_shard": list(record_shard or ()),
                    "num_classes": int(num_classes), "image_size": list(image_size),
                    "dct_scaling": bool(dct_scaling), "decode": decode_options.record()}
        per_file = training and not record_shard
        prefix = file_cache.cache_prefix(
            cache, name, dict(identity, layout=["per-file" if per_file else "whole",
                                                bool(deterministic)]),
            len(files) if per_file else 0)
    if use_file_cache and training and not record_shard and prefix:
        # A file cache freezes the order it is written in: cache every shard
        # file on its own and read them in a new random order every epoch.
        names = tf.constant(files)

        def chunk(k):
            return tf.data.TFRecordDataset(names[k]).map(
                load, num_parallel_calls=tfdata.parallel_calls(), deterministic=deterministic)

        ds = file_cache.cached_chunks(
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
        ds = ds.map(load, num_parallel_calls=tfdata.parallel_calls(), deterministic=deterministic)
        if use_file_cache:
            cache = prefix or "none"
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = (
        tf.data.experimental.AutoShardPolicy.FILE)
    return batching.batch_pipeline(ds, training=training, batch_size=batch_size,
                                   num_examples=num_examples, cache=cache, seed=seed,
                                   shuffle_buffer=shuffle_buffer,
                                   deterministic=deterministic, options=options,
                                   share=share)

