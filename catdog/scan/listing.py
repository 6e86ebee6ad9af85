"""Which files of a folder are image candidates, and their classes.

One walker (:func:`walk_image_files`) lists the candidates of a folder for
every entry point (training's class folders, evaluation, the audit,
prediction, the augmentation pictures), so they all see the same files.
:func:`list_image_files` adds the classes with the semantics of
``keras.utils.image_dataset_from_directory``. Nothing is opened here:
whether a candidate is a usable image is decided by :mod:`catdog.scan.check`.
Local paths use ``os``; paths with a scheme (``gs://...``) ``tf.io.gfile``.
"""

from __future__ import annotations

import collections
import os
import unicodedata
from typing import Sequence

from catdog import fileio

# The extensions keras.utils.image_dataset_from_directory indexes.
IMAGE_EXTENSIONS = (".bmp", ".gif", ".jpeg", ".jpg", ".png")

# Operating-system litter that is never an image. Hidden files (".DS_Store",
# AppleDouble "._*" files) are skipped by their leading dot already.
_IGNORED_FILE_NAMES = frozenset({".ds_store", "thumbs.db", "desktop.ini"})
# Directories that never hold real images: macOS zip metadata.
_IGNORED_DIR_NAMES = frozenset({"__macosx"})


class ScanInputError(ValueError):
    """A directory, class name or setting given to the scan is unusable."""


def _is_candidate(file_name: str) -> bool:
    """Whether a file name is an image candidate (extension, not litter)."""
    lower = file_name.lower()
    if lower.startswith(".") or lower in _IGNORED_FILE_NAMES:
        return False
    return lower.endswith(IMAGE_EXTENSIONS)


def _is_ignored_dir(dir_name: str) -> bool:
    return dir_name.startswith(".") or dir_name.lower() in _IGNORED_DIR_NAMES


def _leads_back(path: str, top: str) -> bool:
    """A folder that is ``top`` or one of its parents (a link cycle when followed)."""
    real = os.path.realpath(path)
    return top == real or top.startswith(real.rstrip(os.sep) + os.sep)


def _walk_files(directory: str, follow_links: bool) -> tuple[list[str], list[str]]:
    """Lists the files under ``directory``, recursively, in sorted order.

    Returns:
      ``(candidates, ignored)``: paths with an image extension, and the other
      non-hidden files (a ``.webp`` or ``.heic`` photo silently left out of a
      dataset is worth telling the user about). Hidden files, OS litter and
      hidden / ``__MACOSX`` directories appear in neither list. With
      ``follow_links``, a folder is listed once (under the first path that
      reaches it) and a link back to ``directory`` or above it is not
      followed, so link cycles end.
    """
    guard = follow_links and not fileio.is_remote(directory)
    top = os.path.realpath(directory) if guard else ""
    seen = set()
    walked = []
    for root, dirs, files in fileio.walk(directory, follow_links):
        if guard:
            real = os.path.realpath(root)
            if real in seen:
                dirs[:] = []
                continue
            seen.add(real)
        # Prune in place so hidden directories (.git, .ipynb_checkpoints, ...)
        # are not descended into.
        dirs[:] = sorted(d for d in dirs if not _is_ignored_dir(d.rstrip("/"))
                         and not (guard and _leads_back(os.path.join(root, d), top)))
        walked.append((root, sorted(files)))
    # Sorted by directory path, then file name: the order
    # keras.utils.image_dataset_from_directory uses with shuffle=False.
    walked.sort(key=lambda item: item[0])
    candidates, ignored = [], []
    for root, files in walked:
        for name in files:
            if _is_candidate(name):
                candidates.append(fileio.join(root, name))
            elif not name.startswith(".") and name.lower() not in _IGNORED_FILE_NAMES:
                ignored.append(fileio.join(root, name))
    return candidates, ignored


def walk_image_files(directory: str, follow_links: bool = False) -> list[str]:
    """The image candidates under ``directory``, recursively, in sorted order.

    The one folder walker of catdog: training's class folders, evaluation,
    the scan, prediction and the augmentation pictures all list files with
    it, so every entry point sees the same files. Candidates end in
    :data:`IMAGE_EXTENSIONS` (any case); hidden files, ``.DS_Store``,
    ``Thumbs.db``, ``desktop.ini``, AppleDouble ``._*`` files, hidden and
    ``__MACOSX`` folders are skipped; symlinked folders are followed only
    with ``follow_links``. Nothing is opened.

    Args:
      directory: a local folder or a ``tf.io.gfile`` URL.
      follow_links: descend into symlinked subfolders.

    Returns:
      The candidate paths.
    """
    return _walk_files(directory, follow_links)[0]


def _class_folders(directory: str) -> list[str]:
    return sorted(
        name for name in fileio.listdir(directory)
        if not _is_ignored_dir(name) and fileio.isdir(fileio.join(directory, name)))


def nfc(name: str) -> str:
    """``name`` in Unicode NFC: how a class or file name compares with another.

    A name typed on most systems is NFC ("é" one character); macOS file
    names, and archives made there, are NFD ("e" + accent). They look the
    same and are the same class.
    """
    return unicodedata.normalize("NFC", name)


def _same_looking(names) -> list:
    groups = collections.defaultdict(list)
    for name in names:
        groups[nfc(name)].append(name)
    return [g for g in groups.values() if len(g) > 1]


def require_directory(directory, what: str) -> str:
    """``directory`` as a string; ScanInputError unless it is an existing folder."""
    if isinstance(directory, os.PathLike):
        directory = os.fspath(directory)
    if not isinstance(directory, str) or not directory:
        raise ScanInputError(f"{what} must be a folder path; got {directory!r}.")
    if not fileio.exists(directory):
        raise ScanInputError(
            f"{what} {directory!r} does not exist; pass an existing folder.")
    if not fileio.isdir(directory):
        raise ScanInputError(f"{what} {directory!r} is a file, not a folder.")
    return directory


def index_class_folders(directory, class_names=None, follow_links: bool = False):
    """:func:`list_image_files`, plus the non-image files it left out.

    Returns:
      ``(paths, labels, class_names, ignored)``; ``ignored`` lists the other
      non-hidden files (a ``.webp`` or ``.heic`` photo silently left out of a
      dataset is worth telling the user about).
    """
    directory = require_directory(directory, "data directory")
    found = _class_folders(directory)
    same_looking = _same_looking(found)
    if same_looking:
        raise ScanInputError(
            f"{directory!r} has class folders whose names differ only in their Unicode "
            f"form (e.g. 'é' as one character or as 'e' + accent), so they would be "
            "classes that print the same: " + "; ".join(
                " and ".join(ascii(name) for name in group) for group in same_looking)
            + ". Merge or rename them.")
    folder_of = {nfc(name): name for name in found}
    if class_names is None:
        class_names = found
    else:
        if isinstance(class_names, str):
            raise ScanInputError(
                f"class_names must be a list of folder names, got the string "
                f"{class_names!r}; pass e.g. ['cats', 'dogs'].")
        class_names = [str(name) for name in class_names]
        duplicated = sorted({n for group in _same_looking(class_names) for n in group})
        if duplicated:
            raise ScanInputError(
                f"class_names lists {duplicated} more than once: {class_names}.")
        for name in class_names:
            if name not in found and nfc(name) not in folder_of:
                raise ScanInputError(
                    f"class name {name!r} is not a subfolder of {directory!r}; "
                    f"subfolders found: {found}. Fix class_names or the folder layout.")
    if len(class_names) < 2:
        raise ScanInputError(
            f"{directory!r} must contain one subfolder per class, at least 2; "
            f"found {len(class_names)} class folder(s): {class_names}. Expected a "
            f"layout like {fileio.join(directory, 'cats')} and {fileio.join(directory, 'dogs')}.")
    paths, labels, ignored = [], [], []
    for label, name in enumerate(class_names):
        # A name in another Unicode form than the folder's is that folder.
        class_dir = fileio.join(directory, name if name in found else folder_of[nfc(name)])
        candidates, other = _walk_files(class_dir, follow_links)
        if not candidates:
            raise ScanInputError(
                f"class folder {class_dir!r} has no image files (extensions "
                f"{', '.join(IMAGE_EXTENSIONS)}, any case). Add images or leave the "
                f"class out with class_names.")
        paths.extend(candidates)
        labels.extend([label] * len(candidates))
        ignored.extend(other)
    return paths, labels, list(class_names), ignored


def list_image_files(
    directory,
    class_names: Sequence[str] | None = None,
    follow_links: bool = False,
) -> tuple[list[str], list[int], list[str]]:
    """Lists the candidate image files of a one-subfolder-per-class folder.

    Same semantics as ``keras.utils.image_dataset_from_directory(labels=
    "inferred", shuffle=False)``: the class of a file is the top-level subfolder
    it is in (files in nested subfolders count for that class), classes are in
    alphanumeric order unless ``class_names`` gives the order, and files are
    in a deterministic sorted order. Candidates are files ending in
    ``.jpg .jpeg .png .gif .bmp`` in any case; hidden files, ``.DS_Store``,
    ``Thumbs.db``, ``desktop.ini``, AppleDouble ``._*`` files, hidden
    directories and ``__MACOSX`` are ignored. Nothing is opened: whether a
    candidate is a usable image is decided by ``check_files``.

    Local paths use ``os``; paths with a scheme (``gs://...``) use
    ``tf.io.gfile``.

    Args:
      directory: the folder holding one subfolder per class.
      class_names: optional list of class folder names to use, in label order.
        Folders not listed are left out.
      follow_links: whether to descend into symlinked subdirectories below
        the class folders.

    Returns:
      ``(paths, labels, class_names)``: file paths (strings), their integer
      labels (index into ``class_names``) and the class names.

    Raises:
      ScanInputError (a ``ValueError``): the directory is missing, has fewer
        than 2 class folders, ``class_names`` names a folder that does not
        exist, or a class folder has no candidate files.
    """
    paths, labels, names, _ = index_class_folders(directory, class_names, follow_links)
    return paths, labels, names
