"""Find the image files of a folder and every file training could not use.

Layers, each importing only those above it:

- :mod:`~catdog.scan.listing`: the one folder walker and the class folders
  (which files are candidates; nothing is opened);
- :mod:`~catdog.scan.headers`: format, size and truncation from a file's
  first and last bytes;
- :mod:`~catdog.scan.progress`, :mod:`~catdog.scan.cache`: the progress bar
  and thread pool, and the on-disk cache of earlier verdicts;
- :mod:`~catdog.scan.check`: the check training runs (header, pixel limit,
  the real decode) and :func:`keep_usable`, which every entry point uses to
  skip bad files;
- :mod:`~catdog.scan.audit`: the folder audit (counts, duplicates,
  imbalance) that only ``scripts/scan_data.py`` prints.

Training and ``scripts/scan_data.py`` run the same check, so they agree file
by file. Nothing here modifies, moves or deletes a scanned file.
"""

from catdog.config import DEFAULT_MAX_PIXELS
from catdog.scan.audit import ClassSummary, ScanReport, identical_across, scan_directory
from catdog.scan.cache import default_cache_dir
from catdog.scan.check import (
    FileCheck, check_file, check_files, keep_usable, known_orientations, usable_checks)
from catdog.scan.headers import ImageHeader, sniff_header
from catdog.scan.listing import (
    IMAGE_EXTENSIONS, ScanInputError, list_image_files, nfc, walk_image_files)

__all__ = [
    "ClassSummary",
    "DEFAULT_MAX_PIXELS",
    "IMAGE_EXTENSIONS",
    "FileCheck",
    "ImageHeader",
    "ScanInputError",
    "ScanReport",
    "check_file",
    "check_files",
    "default_cache_dir",
    "identical_across",
    "keep_usable",
    "known_orientations",
    "list_image_files",
    "nfc",
    "scan_directory",
    "sniff_header",
    "usable_checks",
    "walk_image_files",
]
