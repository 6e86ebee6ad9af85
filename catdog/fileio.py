"""File access for every catdog module: local paths and ``scheme://`` paths.

Local paths go through ``os`` (atomic rename, fsync); paths with a scheme
(``gs://``, ``s3://``, ...) go through ``tf.io.gfile``. Every file catdog
writes is written atomically: into a temporary file beside the target, then
renamed over it, so a reader (another worker, a scheduler, TF Serving) sees
the old content or the new, never half a file, and a failed write leaves
the old file and no temporary behind.

This is a leaf module: it imports nothing else of catdog.
"""

from __future__ import annotations

import contextlib
import json
import os
import uuid
from typing import Iterator

import numpy as np
import tensorflow as tf

#: Marks catdog's temporary files (``<target>.tmp-<pid>-<random>``), so
#: readers that list a folder can leave half-written files out.
TMP_MARKER = ".tmp-"


def is_remote(path) -> bool:
    """Whether ``path`` names a file system other than the local one."""
    return "://" in os.fspath(path)


def join(*parts: str) -> str:
    """``os.path.join`` for local paths, ``/``-joining for remote ones."""
    if is_remote(parts[0]):
        return "/".join([parts[0].rstrip("/")] + [p.strip("/") for p in parts[1:]])
    return os.path.join(*parts)


def isdir(path: str) -> bool:
    return tf.io.gfile.isdir(path) if is_remote(path) else os.path.isdir(path)


def exists(path: str) -> bool:
    return tf.io.gfile.exists(path) if is_remote(path) else os.path.exists(path)


def listdir(path: str) -> list:
    if is_remote(path):
        return [name.rstrip("/") for name in tf.io.gfile.listdir(path)]
    return os.listdir(path)


def walk(path: str, follow_links: bool = False):
    """``os.walk`` (top-down, so ``dirs`` can be pruned in place) or gfile's."""
    if is_remote(path):
        return tf.io.gfile.walk(path)
    return os.walk(path, followlinks=follow_links)


def stat(path: str) -> tuple:
    """Returns ``(size_bytes, mtime_ns)``; raises ``OSError`` if unreadable."""
    if is_remote(path):
        try:
            info = tf.io.gfile.stat(path)
        except tf.errors.OpError as e:
            raise OSError(e.message) from e
        return int(info.length), int(info.mtime_nsec)
    info = os.stat(path)
    return int(info.st_size), int(info.st_mtime_ns)


def open_binary(path: str):
    """Opens ``path`` for reading bytes."""
    return tf.io.gfile.GFile(path, "rb") if is_remote(path) else open(path, "rb")


def abspath(path: str) -> str:
    return path if is_remote(path) else os.path.abspath(path)


def is_within(path: str, folder: str) -> bool:
    """Whether local ``path`` is ``folder`` or inside it (links resolved)."""
    path, folder = os.path.realpath(path), os.path.realpath(folder)
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def normpath(path: str) -> str:
    """``os.path.normpath`` for local paths; remote paths unchanged."""
    return path if is_remote(path) else os.path.normpath(path)


def tf_path(path: str) -> bytes:
    """The path as bytes for TensorFlow ops.

    ``os.fsencode`` gives back the exact on-disk bytes of a local name that is
    not valid UTF-8 (common for archives made on Windows with a legacy code
    page), which ``tf.constant(str)`` would refuse to encode.
    """
    return path.encode("utf-8") if is_remote(path) else os.fsencode(path)


def makedirs(path: str) -> None:
    tf.io.gfile.makedirs(path) if is_remote(path) else os.makedirs(path, exist_ok=True)


def read_text(path: str):
    """The text of ``path``, or None when it does not exist."""
    if not tf.io.gfile.exists(path):
        return None
    with tf.io.gfile.GFile(path, "r") as f:
        return f.read()


def read_json(path: str):
    """The parsed JSON of ``path``, or None when it is missing or unreadable."""
    try:
        text = read_text(path)
        return None if text is None else json.loads(text)
    except (OSError, ValueError, tf.errors.OpError):
        return None


def rename(src: str, dst: str) -> None:
    """Renames ``src`` over ``dst`` (atomic on one local file system)."""
    if is_remote(src):
        tf.io.gfile.rename(src, dst, overwrite=True)
    else:
        os.replace(src, dst)


def remove(path: str) -> None:
    """Removes ``path`` if it exists."""
    if tf.io.gfile.exists(path):
        tf.io.gfile.remove(path)


def temporary_name(path: str, suffix: str = "") -> str:
    """A fresh temporary file name beside ``path`` (same file system)."""
    return f"{path}{TMP_MARKER}{os.getpid()}-{uuid.uuid4().hex[:8]}{suffix}"


@contextlib.contextmanager
def atomic_path(path: str, suffix: str = "") -> Iterator[str]:
    """Yields a temporary path to write; on success it replaces ``path``.

    On any error (also KeyboardInterrupt) the temporary is removed and
    ``path`` keeps its old content.

    Args:
      path: the file to write.
      suffix: ending of the temporary name (e.g. ``".png"`` for writers that
        choose the format by extension).
    """
    tmp = temporary_name(path, suffix)
    try:
        yield tmp
        rename(tmp, path)
    except BaseException:
        try:
            remove(tmp)
        except (OSError, tf.errors.OpError):
            pass
        raise


@contextlib.contextmanager
def atomic_open(path: str, mode: str = "w", newline=None, errors=None):
    """Opens a temporary file for writing; on success it replaces ``path``.

    Local files are flushed to disk (fsync) before the rename, so a crash
    right after leaves the new content or the old, never an empty file.

    Args:
      path: the file to write.
      mode: ``"w"`` (UTF-8 text) or ``"wb"``.
      newline: as for ``open`` (``""`` for the csv module).
      errors: as for ``open`` in text mode, e.g. ``"backslashreplace"`` for
        file names that are not valid UTF-8 (local files only).
    """
    with atomic_path(path) as tmp:
        if is_remote(path):
            with tf.io.gfile.GFile(tmp, mode) as f:
                yield f
        else:
            encoding = None if "b" in mode else "utf-8"
            with open(tmp, mode, encoding=encoding, newline=newline,
                      errors=None if "b" in mode else errors) as f:
                yield f
                f.flush()
                os.fsync(f.fileno())


def write_text(path: str, text: str) -> None:
    """Replaces ``path`` with ``text`` atomically."""
    with atomic_open(path) as f:
        f.write(text)


def _json_default(o):
    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, np.floating):
        return float(o)
    if isinstance(o, (tuple, set)):
        return list(o)
    raise TypeError(f"not JSON serializable: {type(o).__name__}")


def to_json(obj, indent=2) -> str:
    """JSON text of ``obj`` (numpy scalars and tuples allowed), ending in a newline.

    Text is UTF-8; a file name that is not valid UTF-8 (held by Python as
    surrogate escapes) makes the whole text ASCII with escapes instead, so it
    stays valid JSON and reads back to the same name.
    """
    text = json.dumps(obj, indent=indent, ensure_ascii=False, default=_json_default)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        text = json.dumps(obj, indent=indent, ensure_ascii=True, default=_json_default)
    return text + "\n"


def write_json(path: str, obj, indent=2) -> None:
    """Writes ``obj`` as JSON atomically (see :func:`to_json`)."""
    write_text(path, to_json(obj, indent=indent))
