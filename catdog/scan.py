"""Finding image files and checking them before training (interim version)."""

from __future__ import annotations

import dataclasses
import os
from typing import Optional

import tensorflow as tf

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".gif", ".bmp")
DEFAULT_MAX_PIXELS = 89_478_485


@dataclasses.dataclass(frozen=True)
class FileCheck:
    path: str
    ok: bool
    reason: Optional[str] = None
    format: Optional[str] = None
    width: Optional[int] = None
    height: Optional[int] = None
    size_bytes: int = 0


def list_image_files(directory, class_names=None, follow_links=False):
    if not os.path.isdir(directory):
        raise ValueError(f"Directory not found: {directory!r}.")
    subdirs = sorted(d for d in os.listdir(directory)
                     if os.path.isdir(os.path.join(directory, d)) and not d.startswith("."))
    if class_names is None:
        class_names = subdirs
    else:
        missing = [c for c in class_names if c not in subdirs]
        if missing:
            raise ValueError(f"class_names {missing} are not subfolders of {directory!r}; found {subdirs}.")
    if len(class_names) < 2:
        raise ValueError(f"{directory!r} needs at least two class subfolders; found {subdirs}.")
    paths, labels = [], []
    for label, name in enumerate(class_names):
        found = []
        for root, dirs, files in os.walk(os.path.join(directory, name), followlinks=follow_links):
            dirs.sort()
            for f in sorted(files):
                if f.lower().endswith(IMAGE_EXTENSIONS) and not f.startswith("."):
                    found.append(os.path.join(root, f))
        if not found:
            raise ValueError(f"Class folder {os.path.join(directory, name)!r} has no image files.")
        paths += found
        labels += [label] * len(found)
    return paths, labels, list(class_names)


def check_file(path, max_pixels=DEFAULT_MAX_PIXELS):
    from catdog.data import decode_and_resize
    size = os.path.getsize(path)
    if size == 0:
        return FileCheck(path, False, "empty file (0 bytes)", size_bytes=0)
    try:
        decode_and_resize(tf.io.read_file(path), (8, 8))
    except Exception as e:  # noqa: BLE001
        return FileCheck(path, False, f"cannot decode: {str(e).splitlines()[0]}", size_bytes=size)
    return FileCheck(path, True, size_bytes=size)


def check_files(paths, max_pixels=DEFAULT_MAX_PIXELS, num_parallel=None, progress=False, cache_dir=None):
    return [check_file(p, max_pixels) for p in paths]
