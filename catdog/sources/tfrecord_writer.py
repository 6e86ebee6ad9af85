"""Write a class folder once into TFRecord shards, to read it fast from anywhere.

A folder of class subfolders becomes ``N`` shards plus ``manifest.json``::

    output_dir/
      train-00000-of-00008.tfrecord ... train-00007-of-00008.tfrecord
      manifest.json   class names, counts per class, shards, skipped files

Each example holds the ENCODED image bytes (the original file unless
``max_side`` re-encodes it), the label, the file name relative to the
folder, the format, the image height/width as the image is seen (from the
file check or the JPEG header, sides swapped for an EXIF orientation of 5-8;
0 when neither gave them) and the EXIF orientation of the stored bytes (from
the file check). A re-encoded photo is turned upright by its EXIF
orientation first (the new JPEG has no EXIF: orientation 1); a copied file
keeps its tag, which the training decode applies. The manifest's
``orientations`` says whether every stored image is upright (``"upright"``)
or each example's orientation is needed (``"per_example"``), so the reader
never parses EXIF in its graph.

With ``image_size`` every image is stored at the training size: decoded and
resized by :func:`catdog.decode.decode_and_resize` with the given
:class:`~catdog.decode.DecodeOptions` (the pixels training would decode),
then re-encoded as JPEG, or with ``raw`` kept as its uint8 HxWxC bytes
(format ``raw``, height, width and channels in the example). The manifest
records the size and the options, so the reader can skip its resize.

Files are listed and checked with :mod:`catdog.scan` first, so a bad file
never enters a shard; the manifest names each skipped file and why.
Everything goes through ``tf.io.gfile`` (``gs://`` and other cloud paths
work) and every file is written to a temporary name and renamed, so readers
never see half a shard.

Used by ``scripts/build_tfrecords.py``; training reads the shards with
:mod:`catdog.sources.tfrecords`.
"""

from __future__ import annotations

import collections
import os
from typing import Optional, Sequence

import numpy as np
import tensorflow as tf

from catdog import config
from catdog import decode
from catdog import fileio
from catdog import scan
from catdog.sources import csv_labels
from catdog.sources.tfrecords import MANIFEST, MANIFEST_FORMAT

#: Aim for shards of about this many bytes when ``num_shards`` is not given
#: (100-200 MB shards read efficiently from cloud storage).
TARGET_SHARD_BYTES = 128 * 1024 * 1024


def _bytes(value: bytes) -> tf.train.Feature:
    return tf.train.Feature(bytes_list=tf.train.BytesList(value=[value]))


def _int64(value: int) -> tf.train.Feature:
    return tf.train.Feature(int64_list=tf.train.Int64List(value=[int(value)]))


def _reencode(contents: bytes, max_side: int, quality: int):
    """Returns (jpeg bytes, height, width) with the longest side <= max_side.

    The new JPEG carries no EXIF, so a photo with an EXIF orientation is
    turned upright first: the shard holds the pixels the photo shows.
    """
    image = tf.io.decode_image(contents, channels=3, dtype=tf.uint8,
                               expand_animations=False)
    image = decode.apply_exif_orientation(image, tf.constant(contents))
    h, w = int(image.shape[0]), int(image.shape[1])
    scale = min(1.0, max_side / max(h, w))
    if scale < 1.0:
        h, w = max(1, round(h * scale)), max(1, round(w * scale))
        # antialias: a one-off downscale that every later epoch reads, worth
        # the better filter.
        image = tf.image.resize(image, (h, w), method="bilinear", antialias=True)
        image = tf.cast(tf.clip_by_value(tf.round(image), 0.0, 255.0), tf.uint8)
    return tf.io.encode_jpeg(image, quality=quality).numpy(), h, w


def _orientation(check, contents: bytes) -> int:
    """The EXIF orientation training would read from ``contents``: the file
    check's (the same parse of the same bytes), else parsed here."""
    if check.exif_orientation is not None:
        return int(check.exif_orientation)
    if contents[:2] != b"\xff\xd8":
        return 1
    return int(decode.exif_orientation(tf.constant(contents)))


def _header_size(check, contents: bytes, orientation: int):
    """(height, width) as the image is seen: a JPEG whose EXIF orientation
    turns it by 90 degrees has its header's sides swapped."""
    if check.height and check.width:
        height, width = int(check.height), int(check.width)
    elif contents[:2] == b"\xff\xd8":
        shape = tf.io.extract_jpeg_shape(contents).numpy()
        height, width = int(shape[0]), int(shape[1])
    else:
        return 0, 0
    if orientation >= 5:
        height, width = width, height
    return height, width


#: ``--jpeg_chroma`` of JPEGs stored at a size: ``auto`` (the default, see
#: :func:`stored_chroma`), full-resolution colour, or colour halved both ways.
JPEG_CHROMA = ("auto", "444", "420")

#: ``auto`` halves the colour (4:2:0) when both stored sides are at least this.
#: On 100 of the dev photos at q95 that costs 1.2 dB of PSNR at 128 px and
#: 0.7 dB at 224 (worst photo 33.9 / 35.7 dB) and saves a fifth of the decode
#: in every first epoch; at 64 px and below the worst photo loses 4-8 dB.
AUTO_CHROMA_MIN_SIDE = 128

#: Default ``--jpeg_quality`` of JPEGs stored at the training size: decoded in
#: every first epoch and never resized again, so q90 (38-40 dB against the
#: training pixels at 224 px) buys the cheaper decode that takes such shards
#: past 2x stock Keras (BUILD_NOTES.md).
AT_SIZE_JPEG_QUALITY = 90
#: Default ``--jpeg_quality`` of ``--max_side`` re-encodes, which training
#: resizes again: the higher quality keeps the second resampling's input close.
MAX_SIDE_JPEG_QUALITY = 95


def stored_chroma(jpeg_chroma: str, image_size, raw: bool) -> Optional[str]:
    """The chroma the JPEGs stored at ``image_size`` get; None when no JPEG is encoded at a size."""
    if not image_size or raw:
        return None
    if jpeg_chroma == "auto":
        return "420" if min(image_size) >= AUTO_CHROMA_MIN_SIDE else "444"
    return jpeg_chroma


def _at_size_encoder(image_size, options: decode.DecodeOptions, raw: bool, quality: int,
                     chroma: str = "444"):
    """``contents -> (stored bytes, format)`` of an image stored at ``image_size``.

    The training decode (EXIF orientation, color mode, resize mode and
    interpolation as ``options`` say), traced once for every image.
    """
    @tf.function(input_signature=[tf.TensorSpec([], tf.string)])
    def pixels(contents):
        return decode.decode_and_resize(contents, image_size, options)

    def encode(contents: bytes):
        image = pixels(tf.constant(contents))
        if raw:
            return image.numpy().tobytes(), "raw"
        # 4:2:0 blurs colour edges over a share of the image that grows as
        # the image shrinks, and saves decode time; the caller chose
        # (stored_chroma, BUILD_NOTES.md).
        return tf.io.encode_jpeg(image, quality=quality,
                                 chroma_downsampling=chroma == "420").numpy(), "jpeg"
    return encode


def _check_at_size(image_size, max_side: int, raw: bool):
    """``image_size`` as ``(height, width)`` or None; ValueError names the flags."""
    if raw and not image_size:
        raise ValueError("`--raw` stores decoded pixels at the training size: give "
                         "--image_size too. Received: raw=True, image_size=None")
    if not image_size:
        return None
    size = tuple(int(s) for s in image_size)
    if len(size) != 2 or min(size) < 1:
        raise ValueError("`--image_size` must be one or two positive integers "
                         f"(height,width). Received: image_size={image_size!r}")
    if max_side:
        raise ValueError("`--max_side` and `--image_size` exclude each other: "
                         "--image_size stores every image at the training size, "
                         "--max_side only caps the longest side. Received: "
                         f"max_side={max_side}, image_size={','.join(map(str, size))}")
    return size


def write_tfrecords(data_dir: str, output_dir: str, *, num_shards: int = 0,
                    max_side: int = 0, jpeg_quality: Optional[int] = None,
                    image_size=None, jpeg_chroma: str = "auto",
                    decode_options: Optional[decode.DecodeOptions] = None,
                    raw: bool = False,
                    class_names: Optional[Sequence[str]] = None,
                    prefix: str = "", seed: int = 1337,
                    max_pixels: int = config.DEFAULT_MAX_PIXELS,
                    progress: bool = True, csv_path: str = "",
                    filename_column: str = "", label_column: str = "") -> dict:
    """Writes the images of a class folder (or of a CSV's rows) into TFRecord shards.

    Files are shuffled (with ``seed``) before they are dealt into shards, so
    every shard holds a mix of classes and reading a few shards in parallel
    already gives mixed batches.

    Args:
      data_dir: folder with one subfolder per class; with ``csv_path``, the
        folder the CSV's file names are relative to ("": the CSV's folder).
      output_dir: where the shards and ``manifest.json`` go (created; local or
        a ``tf.io.gfile`` URL).
      num_shards: number of shards; 0 picks about 128 MB per shard.
      max_side: when > 0, images whose longest side exceeds it are decoded,
        downscaled to it (aspect ratio kept) and re-encoded as JPEG; smaller
        ones are stored as they are. 0 stores every file's bytes unchanged.
      jpeg_quality: JPEG quality of re-encoded images (1-100); None:
        ``AT_SIZE_JPEG_QUALITY`` (90) with ``image_size``,
        ``MAX_SIDE_JPEG_QUALITY`` (95) for ``max_side`` re-encodes.
      jpeg_chroma: with ``image_size`` (not ``raw``), the colour resolution
        of the stored JPEGs: ``"444"`` full, ``"420"`` halved both ways (a
        cheaper decode, softer colour edges), ``"auto"`` (the default)
        ``"420"`` when both sides are at least ``AUTO_CHROMA_MIN_SIDE``,
        else ``"444"``. The manifest records the chroma stored.
      image_size: ``(height, width)``: store every image decoded and resized
        to it as training decodes it (exclusive with ``max_side``); None
        stores the files (or their ``max_side`` re-encodes).
      decode_options: with ``image_size``, how images are decoded and
        resized (default ``DecodeOptions()``, training's defaults).
      raw: with ``image_size``, store uint8 pixels instead of a JPEG
        (exactly the pixels training decodes; larger shards, no decode).
      class_names: explicit class order (default: alphanumeric folders).
      prefix: shard file name prefix; default the folder's base name.
      seed: seed of the file order.
      max_pixels: files whose header declares more pixels are skipped.
      progress: show progress of the file check.
      csv_path: labels from this CSV instead of class folders (see
        :mod:`catdog.sources.csv_labels`); its rows and their problems go to
        the manifest's ``csv_report``.
      filename_column, label_column: the CSV's columns (default: the first two).

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
    if jpeg_quality is None:
        jpeg_quality = AT_SIZE_JPEG_QUALITY if image_size else MAX_SIDE_JPEG_QUALITY
    if not 1 <= jpeg_quality <= 100:
        raise ValueError(f"`--jpeg_quality` must be in 1..100. Received: "
                         f"jpeg_quality={jpeg_quality}")
    image_size = _check_at_size(image_size, max_side, raw)
    if jpeg_chroma not in JPEG_CHROMA:
        raise ValueError(f"`--jpeg_chroma` must be one of {', '.join(JPEG_CHROMA)}. "
                         f"Received: jpeg_chroma={jpeg_chroma!r}")
    if jpeg_chroma == "420" and (not image_size or raw):
        raise ValueError("`--jpeg_chroma` applies to JPEGs stored at a size: give "
                         "--image_size, without --raw.")
    jpeg_chroma = stored_chroma(jpeg_chroma, image_size, raw)
    options = decode_options or decode.DecodeOptions()
    at_size = (_at_size_encoder(image_size, options, raw, jpeg_quality, jpeg_chroma)
               if image_size else None)
    report = None
    if csv_path:
        paths, labels, class_names, rows = csv_labels.csv_examples(
            csv_path, list(class_names) if class_names else None, image_dir=data_dir or "",
            filename_column=filename_column, label_column=label_column, flag="csv",
            check_classes=True)
        data_dir, report = rows.image_dir, rows.report()
    else:
        paths, labels, class_names = scan.list_image_files(
            data_dir, class_names=list(class_names) if class_names else None)
    good, skipped = scan.usable_checks(paths, labels, max_pixels, progress)
    if report is not None:
        report["used"] = len(good)  # the files that passed the check
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
    turned = 0
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
                orientation = _orientation(check, contents)
                height, width = _header_size(check, contents, orientation)
                channels = 0
                if at_size:
                    contents, fmt = at_size(contents)
                    (height, width), channels = image_size, options.channels
                    orientation = 1  # stored upright, with no EXIF
                elif max_side and (not height or max(height, width) > max_side):
                    contents, height, width = _reencode(contents, max_side, jpeg_quality)
                    fmt, orientation = "jpeg", 1
                turned += orientation != 1
                example = tf.train.Example(features=tf.train.Features(feature={
                    "image/encoded": _bytes(contents),
                    "image/class/label": _int64(label),
                    "image/filename": _bytes(os.path.relpath(check.path, data_dir)
                                             .encode("utf-8")),
                    "image/format": _bytes(fmt.encode("utf-8")),
                    "image/height": _int64(height),
                    "image/width": _int64(width),
                    "image/channels": _int64(channels),
                    "image/orientation": _int64(orientation),
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
        **({"source_csv": csv_path, "csv_report": report} if csv_path else {}),
        "max_side": int(max_side),
        "jpeg_quality": (int(jpeg_quality) if max_side or (image_size and not raw)
                         else None),
        "jpeg_chroma": jpeg_chroma,
        # The stored form (catdog.sources.tfrecords.stored_form reads it back).
        "image_size": list(image_size) if image_size else None,
        "raw": bool(raw),
        # The EXIF orientation of every stored image, read once here: the
        # reader builds no EXIF parse (catdog.sources.tfrecords).
        "orientations": "per_example" if turned else "upright",
        **{name: (value if image_size else None)
           for name, value in options.record().items()},
    }
    fileio.write_json(fileio.join(output_dir, MANIFEST), manifest)
    return manifest

