"""Results of earlier file checks, on disk, so a folder is decode-checked once.

Keyed by (absolute path, size, mtime_ns, max_pixels), so the training
stages run back to back check a folder only once and a changed file is
checked again. The cache lives in ``cache_dir``, ``$CATDOG_CACHE_DIR`` or
``~/.cache/catdog/scan`` and is never written inside the checked folder;
results of another TensorFlow version or of older checks are not reused.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from typing import Sequence

import tensorflow as tf

from catdog import fileio

_log = logging.getLogger(__package__)

_CACHE_ENV_VAR = "CATDOG_CACHE_DIR"
# Bump when the checks change, so results of older checks are not reused.
# 2: a verdict keeps the file's EXIF orientation.
_CACHE_SCHEMA = 2


def default_cache_dir() -> str:
    """``$CATDOG_CACHE_DIR`` if set, else ``~/.cache/catdog/scan``."""
    return os.environ.get(_CACHE_ENV_VAR) or os.path.join(
        os.path.expanduser("~"), ".cache", "catdog", "scan")


class CheckCache:
    """Check results of earlier runs, in one JSON file per data folder.

    A result is the verdict on one file, ``(ok, reason, format, width,
    height, exif_orientation)``, valid while the file keeps its size and modification time and
    for the same ``max_pixels``. Saving forgets the local files that no
    longer exist, so the cache of a folder whose files are renamed or
    replaced over time stays the size of the folder.
    """

    def __init__(self, cache_dir: str | None, paths: Sequence[str]):
        self.file = None
        self._entries: dict[str, list] = {}
        self._dirty = False
        self._used: set[str] = set()  # keys looked up or stored by this check
        local = [os.path.abspath(p) for p in paths if not fileio.is_remote(p)]
        folders = sorted({os.path.dirname(p) for p in local})
        data_root = os.path.commonpath(folders) if folders else None
        key_root = data_root if data_root else (paths[0].rsplit("/", 1)[0] if paths else "")
        cache_dir = os.path.realpath(os.path.expanduser(cache_dir or default_cache_dir()))
        if data_root and fileio.is_within(cache_dir, data_root):
            _log.warning(
                "Not caching scan results: cache dir %s is inside the data folder %s "
                "and catdog never writes there. Set %s or cache_dir elsewhere.",
                cache_dir, data_root, _CACHE_ENV_VAR)
            return
        digest = hashlib.sha256(key_root.encode("utf-8", "surrogateescape")).hexdigest()
        self.file = os.path.join(cache_dir, f"scan-{digest[:16]}.json")
        self._entries = self._load()

    def _load(self) -> dict:
        try:
            with open(self.file, "rb") as f:
                content = json.loads(f.read().decode("utf-8"))
            if (content.get("schema") != _CACHE_SCHEMA
                or content.get("tensorflow") != tf.__version__
                or not isinstance(content.get("entries"), dict)):
                return {}
            return content["entries"]
        except FileNotFoundError:
            return {}
        except (OSError, ValueError, AttributeError) as e:
            # A damaged cache only costs a re-check; it is rewritten afterwards.
            _log.warning("Ignoring unreadable scan cache %s: %s", self.file, e)
            self._dirty = True
            return {}

    def get(self, path: str, stamp, max_pixels: int):
        """The cached verdict on ``path`` at ``stamp`` (``(size, mtime_ns)``), or None."""
        key = fileio.abspath(path)
        self._used.add(key)
        entry = self._entries.get(key)
        try:
            size, mtime_ns, limit, ok, reason, fmt, width, height, turn = entry
        except (TypeError, ValueError):
            return None
        if [size, mtime_ns, limit] != [stamp[0], stamp[1], max_pixels]:
            return None
        if not isinstance(ok, bool) or (reason is not None and not isinstance(reason, str)):
            return None
        if ok and (isinstance(turn, bool) or not isinstance(turn, int) or not 1 <= turn <= 8):
            return None
        return ok, reason, fmt, width, height, turn

    def put(self, path: str, stamp, max_pixels: int, verdict) -> None:
        """Stores ``verdict`` (``(ok, reason, format, width, height,
        exif_orientation)``) for ``path``."""
        key = fileio.abspath(path)
        self._used.add(key)
        self._entries[key] = [stamp[0], stamp[1], max_pixels, *verdict]
        self._dirty = True

    def _forget_missing(self) -> None:
        # Only entries this check did not use can be of files that are gone
        # (one lstat each); entries of other files that still exist are kept
        # (validation files are checked apart from the training files of the
        # same folder). Remote entries are kept: a network call each would
        # cost more than the entry.
        gone = [key for key in self._entries
                if key not in self._used and not fileio.is_remote(key)
                and not os.path.lexists(key)]
        for key in gone:
            del self._entries[key]
        self._dirty = self._dirty or bool(gone)

    def save(self) -> None:
        if self.file is None:
            return
        self._forget_missing()
        if not self._dirty:
            return
        content = {"schema": _CACHE_SCHEMA, "tensorflow": tf.__version__,
                   "entries": self._entries}
        folder = os.path.dirname(self.file)
        try:
            os.makedirs(folder, exist_ok=True)
            # Atomic, so a concurrent reader never sees half a file.
            fileio.write_text(self.file, json.dumps(content))
        except OSError as e:
            _log.warning("Could not write scan cache %s: %s", self.file, e)
