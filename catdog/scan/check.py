"""The check training runs: is each file an image catdog can decode?

A single empty or truncated file makes ``tf.io.decode_image`` fail in the
middle of an epoch and takes the whole run down, so every entry point
(training, evaluation, TFRecord writing, the audit) checks its files first
with :func:`check_files` and skips the bad ones, reporting each with its
path and the reason. How a file is judged:

1. **Header** (:mod:`catdog.scan.headers`): empty files, non-images,
   formats TensorFlow cannot decode (TIFF, HEIC, AVIF, JPEG XL, ...) and
   truncated JPEG / PNG / WebP files are rejected with a readable reason.
2. **Decompression-bomb guard**: an image whose header claims more than
   ``max_pixels`` pixels is rejected without ever being decoded.
3. **Full decode**: everything else goes through
   :func:`catdog.decode.decode_and_resize`, the decode training uses. It is
   the arbiter: a file passes only if that decode succeeds. The decode runs
   as a parallel ``tf.data`` map with ``ignore_errors()`` that carries each
   file's index, so the surviving indices tell which files failed; only the
   failures are decoded again, eagerly, to capture the error message.

The decode also reads each file's EXIF orientation
(:func:`catdog.decode.exif_orientation`, the parse training would run).
:func:`known_orientations` gives those of the files this process checked,
so a training split whose files are all known skips the parse
(:func:`catdog.sources.folder.build_dataset`): most photos are upright,
and then their decode runs no EXIF op at all, with the same pixels.

Results are cached on disk (:mod:`catdog.scan.cache`). Nothing here
modifies, moves or deletes a checked file.
"""

from __future__ import annotations

import dataclasses
import os
import re
from typing import Iterable, Sequence

from absl import logging
import tensorflow as tf

from catdog import decode
from catdog import fileio
from catdog import tfdata
from catdog.config import DEFAULT_MAX_PIXELS
from catdog.scan import cache as check_cache
from catdog.scan import headers
from catdog.scan import progress as progress_lib
from catdog.scan.listing import ScanInputError

# Output size of the check decode. The resize cannot fail once the decode
# succeeded, so a tiny size keeps the check cheap.
_CHECK_IMAGE_SIZE = (16, 16)

# Reasons starting with this describe the file system, not the file's
# content (permissions, a vanished file, a network error): never cached.
_READ_ERROR = "cannot read file: "


@dataclasses.dataclass(frozen=True)
class FileCheck:
    """Whether one file is a usable image, and why not.

    Attributes:
      path: the file, as it was given.
      ok: True if ``catdog.decode.decode_and_resize`` decodes it and it passed
        the header checks.
      reason: why the file is unusable, or None if ``ok``.
      format: format from the magic bytes (see ``ImageHeader.format``).
      width: width in pixels from the header, or None.
      height: height in pixels from the header, or None.
      size_bytes: file size, or None if the file could not be read.
      exif_orientation: for a usable file, the EXIF orientation catdog's
        decode reads from it (1-8; 1 for upright and for anything without
        the tag, PNG included); None when not decoded.
    """

    path: str
    ok: bool
    reason: str | None
    format: str | None
    width: int | None
    height: int | None
    size_bytes: int | None
    exif_orientation: int | None = None

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _pixel_limit_problem(width: int, height: int, max_pixels: int) -> str | None:
    pixels = width * height
    if pixels <= max_pixels:
        return None
    return (f"image is {width}x{height} ({pixels / 1e6:.1f} MP), above "
            f"max_pixels={max_pixels}; raise --max_pixels to use it")


def validate_max_pixels(max_pixels) -> int:
    """``max_pixels`` if it is a positive integer; ScanInputError otherwise."""
    if isinstance(max_pixels, bool) or not isinstance(max_pixels, int) or max_pixels <= 0:
        raise ScanInputError(
            f"max_pixels must be a positive integer; got max_pixels={max_pixels!r}.")
    return max_pixels


def _check_header(path: str, max_pixels: int, stamp=None):
    """Runs the header checks on one file.

    Args:
      path: the file.
      max_pixels: the pixel limit.
      stamp: ``(size, mtime_ns)`` if the caller has stat-ed the file already.

    Returns:
      ``(check, stamp)``: ``check`` is the final ``FileCheck`` when the header
      settles it, or a provisional ok ``FileCheck`` when the file still needs
      the full decode; ``stamp`` is ``(size, mtime_ns)`` for the cache, or
      None when the file could not be read (such results are not cached: the
      error may be transient).
    """
    try:
        stamp = stamp or fileio.stat(path)
        with fileio.open_binary(path) as handle:
            header = headers.read_header(handle, stamp[0])
    except (OSError, tf.errors.OpError) as e:
        message = e.message if isinstance(e, tf.errors.OpError) else str(e)
        return FileCheck(path, False, f"{_READ_ERROR}{message}",
                         None, None, None, None), None
    problem = header.problem
    if problem is None:
        problem = _pixel_limit_problem(header.width, header.height, max_pixels)
    check = FileCheck(path, problem is None, problem, header.format,
                      header.width, header.height, header.size_bytes)
    return check, stamp


_TF_ERROR_NOISE = (
    re.compile(r"^\{\{function_node [^}]*\}\}\s*"),
    re.compile(r"\s*\[Op:[^\]]*\].*$", re.DOTALL),
)


def _clean_tf_message(message: str) -> str:
    for pattern in _TF_ERROR_NOISE:
        message = pattern.sub("", message)
    return message.strip().splitlines()[0] if message.strip() else "unknown error"


def _decode_one(path: str) -> tuple[str | None, int | None]:
    """Decodes one file eagerly; returns ``(error message, None)`` or
    ``(None, EXIF orientation)``."""
    try:
        contents = tf.io.read_file(fileio.tf_path(path))
    except tf.errors.OpError as e:
        return f"{_READ_ERROR}{_clean_tf_message(e.message)}", None
    try:
        orientation = decode.exif_orientation(contents)
        decode.decode_and_resize(contents, _CHECK_IMAGE_SIZE, orientation=orientation)
    except tf.errors.OpError as e:
        return f"decode failed: {_clean_tf_message(e.message)}", None
    return None, int(orientation)


def _decode_survivors(paths: Sequence[str], num_parallel, on_done) -> dict[int, int]:
    """Decodes ``paths`` in a parallel tf.data map; returns ``{index: EXIF
    orientation}`` of those that decoded. ``ignore_errors`` drops each
    failing element, so a failure costs nothing here; the caller re-decodes
    only the missing indices."""

    def decode_one(index, path):
        contents = tf.io.read_file(path)
        orientation = decode.exif_orientation(contents)
        image = decode.decode_and_resize(contents, _CHECK_IMAGE_SIZE,
                                         orientation=orientation)
        # Depend on the pixels: the resized shape is static, so returning only
        # the index would let the optimizer prune the decode away.
        return index, orientation, tf.reduce_max(image)

    indices = tf.range(len(paths), dtype=tf.int64)
    names = tf.constant([fileio.tf_path(p) for p in paths], tf.string)
    dataset = tf.data.Dataset.from_tensor_slices((indices, names))
    dataset = dataset.map(
        decode_one, num_parallel_calls=num_parallel or tfdata.parallel_calls(),
        deterministic=False)
    dataset = dataset.ignore_errors().map(lambda index, turn, _: (index, turn)).batch(64)
    dataset = tfdata.finish(dataset)
    survivors = {}
    for indices, turns in dataset.as_numpy_iterator():
        survivors.update((int(i), int(t)) for i, t in zip(indices, turns))
        on_done(len(indices))
    return survivors


def check_file(path: str, max_pixels: int = DEFAULT_MAX_PIXELS) -> FileCheck:
    """Checks one file: header, pixel limit, then the real decode.

    Args:
      path: the file.
      max_pixels: largest width*height accepted; bigger images are rejected
        from their header, without being decoded.

    Returns:
      A ``FileCheck``. Never raises for a bad or unreadable file.
    """
    max_pixels = validate_max_pixels(max_pixels)
    check, _ = _check_header(os.fspath(path), max_pixels)
    if check.ok:
        error, orientation = _decode_one(check.path)
        check = (dataclasses.replace(check, ok=False, reason=error) if error else
                 dataclasses.replace(check, exif_orientation=orientation))
    return check


def _remember(cache, check: FileCheck, stamp, max_pixels: int) -> None:
    # A read error may be transient (permissions, a network error): checked
    # again next time rather than cached.
    if check.reason and check.reason.startswith(_READ_ERROR):
        return
    cache.put(check.path, stamp, max_pixels,
              (check.ok, check.reason, check.format, check.width, check.height,
               check.exif_orientation))


# The EXIF orientation of every usable file this process checked:
# {absolute path: ((size, mtime_ns), orientation)}.
_ORIENTATIONS: dict[str, tuple] = {}


def _note_orientation(check: FileCheck, stamp) -> None:
    key = fileio.abspath(check.path)
    if check.ok and check.exif_orientation is not None and stamp is not None:
        _ORIENTATIONS[key] = (tuple(stamp), int(check.exif_orientation))
    else:
        _ORIENTATIONS.pop(key, None)


def known_orientations(paths: Sequence[str]) -> list[int] | None:
    """The EXIF orientation of each of ``paths``, as this process's check read
    it (:func:`check_files`), or None unless every one is known.

    A local file is known only while it keeps the size and modification time
    it had when checked (one ``stat`` each), so a file replaced since reads
    None and is parsed in the graph again; a remote file is taken as checked.
    """
    turns = []
    for path in paths:
        entry = _ORIENTATIONS.get(fileio.abspath(path))
        if entry is None:
            return None
        if not fileio.is_remote(path):
            try:
                if fileio.stat(path) != entry[0]:
                    return None
            except OSError:
                return None
        turns.append(entry[1])
    return turns


def check_files(
    paths: Iterable[str],
    max_pixels: int = DEFAULT_MAX_PIXELS,
    num_parallel: int | None = None,
    progress: progress_lib.ProgressArg = False,
    cache_dir: str | None = None,
    use_cache: bool = True,
) -> list[FileCheck]:
    """Checks many files; same verdicts as ``check_file``, much faster.

    Header checks run in a thread pool (they are I/O); files that pass them are
    decoded in a parallel ``tf.data`` map; only the files that fail that
    decode are decoded again, one by one, for their error message.

    Args:
      paths: files to check, e.g. the paths from ``list_image_files``.
      max_pixels: largest width*height accepted; bigger images are rejected
        from their header, without being decoded.
      num_parallel: threads for the header checks and parallel calls of the
        decode map; None picks them from the CPU count.
      progress: False for silence, True for a progress bar on stderr (tqdm if
        installed, else a line every few seconds), or a callable
        ``progress(done, total)``.
      cache_dir: folder of the scan cache; None means ``$CATDOG_CACHE_DIR`` or
        ``~/.cache/catdog/scan``. A folder inside the scanned data is refused
        (with a warning, and no caching).
      use_cache: whether to read and write the scan cache.

    Returns:
      One ``FileCheck`` per path, in the order of ``paths``.
    """
    paths = [os.fspath(p) for p in paths]
    max_pixels = validate_max_pixels(max_pixels)
    if num_parallel is not None and (not isinstance(num_parallel, int) or num_parallel < 1):
        raise ScanInputError(
            f"num_parallel must be a positive integer or None; got {num_parallel!r}.")
    total = len(paths)
    results: list[FileCheck | None] = [None] * total
    if not total:
        return []
    cache = check_cache.CheckCache(cache_dir, paths) if use_cache else None
    stamps: list = [None] * total
    bar = progress_lib.Progress(progress, total, "checking images")
    try:
        threads = num_parallel or progress_lib.default_threads(paths)

        def header_phase(index):
            path = paths[index]
            if cache is not None:
                try:
                    stamp = fileio.stat(path)
                except OSError:
                    stamp = None
                verdict = cache.get(path, stamp, max_pixels) if stamp else None
                if verdict is not None:
                    *verdict, turn = verdict
                    return (FileCheck(path, *verdict, stamp[0], exif_orientation=turn),
                            stamp, True)
                check, stamp = _check_header(path, max_pixels, stamp)
            else:
                check, stamp = _check_header(path, max_pixels)
            return check, stamp, False

        to_decode = []
        for index, (check, stamp, cached) in enumerate(
                progress_lib.thread_map(header_phase, range(total), threads)):
            results[index] = check
            stamps[index] = stamp
            if cached or not check.ok:
                bar.update()
                if cache is not None and not cached and stamp is not None:
                    _remember(cache, check, stamp, max_pixels)
            else:
                to_decode.append(index)

        if to_decode:
            survivors = _decode_survivors(
                [paths[i] for i in to_decode], num_parallel, bar.update)
            for position, index in enumerate(to_decode):
                if position in survivors:
                    results[index] = dataclasses.replace(
                        results[index], exif_orientation=survivors[position])
                else:
                    error, orientation = _decode_one(paths[index])
                    results[index] = (
                        dataclasses.replace(results[index], ok=False, reason=error) if error
                        else dataclasses.replace(results[index], exif_orientation=orientation))
                    bar.update()
                if cache is not None and stamps[index] is not None:
                    _remember(cache, results[index], stamps[index], max_pixels)
    finally:
        bar.close()
    if cache is not None:
        cache.save()
    for check, stamp in zip(results, stamps):
        _note_orientation(check, stamp)
    return results


def usable_checks(paths, labels, max_pixels: int = DEFAULT_MAX_PIXELS,
                  progress: progress_lib.ProgressArg = False):
    """Checks every file as training does; returns ``(usable, skipped)``.

    ``usable`` is ``[(FileCheck, label)]`` of the files that pass, in the
    order of ``paths``; ``skipped`` is ``[{"path", "reason"}]`` of the
    others, each also logged.
    """
    checks = check_files(paths, max_pixels=max_pixels, progress=progress)
    usable, skipped = [], []
    for check, label in zip(checks, labels):
        if check.ok:
            usable.append((check, label))
        else:
            skipped.append({"path": check.path, "reason": check.reason})
            logging.warning("Skipping %s: %s", check.path, check.reason)
    return usable, skipped


def keep_usable(paths, labels, max_pixels, progress=False):
    """Checks every file as training does; returns (paths, labels, skipped).

    ``skipped`` is ``[{"path", "reason"}]``; each skipped file is also logged.
    Training, evaluation and TFRecord writing all skip files through
    :func:`usable_checks`, so every entry point skips the same files.
    """
    usable, skipped = usable_checks(paths, labels, max_pixels, progress)
    return ([check.path for check, _ in usable], [label for _, label in usable],
            skipped)
