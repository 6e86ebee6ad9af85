"""Image files a user names: files and folders expanded to the files to read.

Prediction and the augmentation pictures take "these files and folders" from
the command line; both expand them here, with the folder walker training
uses (:func:`catdog.scan.walk_image_files`), so every entry point sees the
same files.
"""

from __future__ import annotations

import os
from typing import Iterable


from catdog import fileio
from catdog import scan

#: File extensions treated as images when a folder is expanded (lower case).
IMAGE_EXTENSIONS = scan.IMAGE_EXTENSIONS


def expand_paths(paths: Iterable) -> list[tuple[str, str | None]]:
    """Expands files and folders to the image files to predict on.

    Folders are listed by :func:`catdog.scan.walk_image_files`, the walker
    training uses: recursively, in sorted order, only files whose extension
    is in :data:`IMAGE_EXTENSIONS` (any case), without hidden files and
    folders, OS litter (``Thumbs.db``, ``__MACOSX``, ...) or symlinked
    folders. A file named explicitly is always kept, whatever its
    extension, because the user asked for it. Duplicates are dropped,
    keeping the first.

    Args:
      paths: files and/or folders (local or any ``tf.io.gfile`` filesystem).

    Returns:
      A list of ``(path, error)``; ``error`` is None for a file to predict on,
      or a message for a path that does not exist or a folder without images.
    """
    entries: list[tuple[str, str | None]] = []
    seen = set()

    def add(path, error=None):
        key = fileio.normpath(path)
        if key not in seen:
            seen.add(key)
            entries.append((path, error))

    for path in paths:
        path = os.fspath(path)
        # fileio, not tf.io.gfile: a local name need not be valid UTF-8.
        if fileio.isdir(path):
            found = scan.walk_image_files(path)
            for name in found:
                add(name)
            if not found:
                add(path, "no image files (" + " ".join(IMAGE_EXTENSIONS) +
                    ") in this folder or its subfolders")
        elif fileio.exists(path):
            add(path)
        else:
            add(path, "no such file or folder")
    return entries
