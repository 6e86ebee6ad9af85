"""The audit of a class folder that ``scripts/scan_data.py`` prints.

On top of the check training runs (:func:`catdog.scan.check_files`) the
audit counts usable and bad files per class, summarises image sizes and
formats, finds byte-identical files across classes (label noise), across
``data_dir`` and ``other_dirs`` (train/validation leakage) and within a
class, and warns about class imbalance and folders whose "classes" look
like dataset splits. Training does not use it.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import os
import re
import statistics
import time
from typing import Sequence

import tensorflow as tf

from catdog import fileio
from catdog.config import DEFAULT_MAX_PIXELS
from catdog.scan import listing
from catdog.scan import progress as progress_lib
from catdog.scan.check import FileCheck, check_files, validate_max_pixels

_READ_CHUNK_BYTES = 1024 * 1024
_PREFIX_BYTES = 4096  # read first when looking for identical files


@dataclasses.dataclass(frozen=True)
class ClassSummary:
    """File counts of one class folder."""

    name: str
    total: int
    usable: int
    bad: int


@dataclasses.dataclass(frozen=True)
class ScanReport:
    """Everything ``scan_directory`` found; ``to_dict`` and ``format_text``
    render it.

    Attributes:
      data_dir: the scanned folder.
      other_dirs: folders compared against ``data_dir`` for leaked files.
      class_names: class names in label order.
      max_pixels: pixel limit used.
      classes: per-class counts.
      checks: one ``FileCheck`` per candidate file of ``data_dir``.
      labels: label of each entry of ``checks``.
      ignored_files: non-image files left out of the index.
      duplicates_across_classes: groups of byte-identical files filed under
        different classes (label noise).
      duplicates_across_dirs: groups of byte-identical files found both in
        ``data_dir`` and in an ``other_dirs`` folder (train/validation leakage).
      duplicates_within_class: groups of byte-identical files of one class.
      seconds: wall time of the scan.
      layout_warnings: doubts about the folder layout itself.
      csv_report: files labelled by a CSV: its rows and their problems
        (``{"csv", "image_dir", "rows", "used", "problems"}``), else None.
    """

    data_dir: str
    other_dirs: tuple[str, ...]
    class_names: tuple[str, ...]
    max_pixels: int
    classes: tuple[ClassSummary, ...]
    checks: tuple[FileCheck, ...]
    labels: tuple[int, ...]
    ignored_files: tuple[str, ...]
    duplicates_across_classes: tuple[tuple[str, ...], ...]
    duplicates_across_dirs: tuple[tuple[str, ...], ...]
    duplicates_within_class: tuple[tuple[str, ...], ...]
    seconds: float
    layout_warnings: tuple[str, ...] = ()
    csv_report: dict | None = None

    @property
    def bad_files(self) -> list[FileCheck]:
        return [c for c in self.checks if not c.ok]

    @property
    def imbalance_ratio(self) -> float | None:
        """Usable files of the largest class over the smallest; None if a class
        has no usable file."""
        counts = [c.usable for c in self.classes]
        if not counts or min(counts) == 0:
            return None
        return max(counts) / min(counts)

    @property
    def warnings(self) -> list[str]:
        lines = list(self.layout_warnings)
        for summary in self.classes:
            if summary.usable == 0:
                lines.append(f"class {summary.name!r} has no usable image")
        ratio = self.imbalance_ratio
        if ratio is not None and ratio > 1.5:
            largest = max(self.classes, key=lambda c: c.usable)
            smallest = min(self.classes, key=lambda c: c.usable)
            lines.append(
                f"class imbalance: largest/smallest = {ratio:.2f} ({largest.name} "
                f"{largest.usable} / {smallest.name} {smallest.usable}); consider "
                f"class weights or resampling")
        if self.duplicates_across_classes:
            lines.append(
                f"{len(self.duplicates_across_classes)} group(s) of identical files "
                f"under different classes (label noise)")
        if self.duplicates_across_dirs:
            lines.append(
                f"{len(self.duplicates_across_dirs)} group(s) of identical files in "
                f"{self.data_dir} and {', '.join(self.other_dirs)} (leakage)")
        return lines

    def _size_stats(self) -> dict:
        usable = [c for c in self.checks if c.ok]
        stats = {}
        for field in ("width", "height"):
            values = [getattr(c, field) for c in usable if getattr(c, field)]
            stats[field] = ({"min": min(values), "median": statistics.median(values),
                             "max": max(values)} if values else None)
        return stats

    def _reason_counts(self) -> dict:
        """Bad files counted by the kind of reason, most frequent first."""
        kinds = collections.Counter()
        for check in self.bad_files:
            kind = re.split(r"[:;]", check.reason)[0]
            kinds["above max_pixels" if kind.startswith("image is ") else kind] += 1
        return dict(kinds.most_common())

    def _format_counts(self) -> dict:
        counts = collections.Counter(c.format for c in self.checks if c.ok)
        return dict(sorted(counts.items()))

    def to_dict(self) -> dict:
        """A JSON-ready summary (bad files listed, usable files counted)."""
        return {
            "data_dir": self.data_dir,
            "other_dirs": list(self.other_dirs),
            "class_names": list(self.class_names),
            "max_pixels": self.max_pixels,
            "num_files": len(self.checks),
            "num_usable": sum(c.ok for c in self.checks),
            "num_bad": sum(not c.ok for c in self.checks),
            "classes": [dataclasses.asdict(c) for c in self.classes],
            "imbalance_ratio": self.imbalance_ratio,
            "warnings": self.warnings,
            "image_sizes": self._size_stats(),
            "formats": self._format_counts(),
            "bad_reasons": self._reason_counts(),
            "bad_files": [{"path": c.path, "reason": c.reason} for c in self.bad_files],
            "ignored_files": list(self.ignored_files),
            "duplicates": {
                "across_classes": [list(g) for g in self.duplicates_across_classes],
                "across_dirs": [list(g) for g in self.duplicates_across_dirs],
                "within_class": [list(g) for g in self.duplicates_within_class],
            },
            "seconds": round(self.seconds, 3),
            **({"csv_report": self.csv_report} if self.csv_report else {}),
        }

    def _short(self, path: str) -> str:
        """``path`` relative to ``data_dir`` when it is inside it."""
        prefix = self.data_dir.rstrip("/" + os.sep)
        for sep in (os.sep, "/"):
            if path.startswith(prefix + sep):
                return path[len(prefix) + 1:]
        return path

    def format_text(self, max_listed: int = 50) -> str:
        """The report as text for a terminal.

        Args:
          max_listed: bad files / duplicate groups / ignored files listed per
            section before the rest is summarised as "... and N more" (the JSON
            report always lists them all).

        Returns:
          The report, lines joined with newlines.
        """
        lines = [f"catdog scan of {self.data_dir} (max_pixels={self.max_pixels}, "
                 f"{self.seconds:.1f}s)"]
        width = max(len(c.name) for c in self.classes + (ClassSummary("total", 0, 0, 0),))
        lines.append(f"  {'class':<{width}}  {'files':>7}  {'usable':>7}  {'bad':>5}")
        for c in self.classes:
            lines.append(f"  {c.name:<{width}}  {c.total:>7}  {c.usable:>7}  {c.bad:>5}")
        lines.append(
            f"  {'total':<{width}}  {len(self.checks):>7}  "
            f"{sum(c.usable for c in self.classes):>7}  "
            f"{sum(c.bad for c in self.classes):>5}")
        ratio = self.imbalance_ratio
        lines.append("class balance: largest/smallest = "
                     + (f"{ratio:.2f}" if ratio is not None else "n/a"))
        stats = self._size_stats()
        if stats["width"]:
            lines.append(
                "image size (usable): width {min}/{median:g}/{max}, ".format(**stats["width"])
                + "height {min}/{median:g}/{max} (min/median/max)".format(**stats["height"]))
        formats = self._format_counts()
        if formats:
            lines.append("formats (usable): " + ", ".join(
                f"{name} {count}" for name, count in formats.items()))

        def section(title, items, render):
            lines.append(f"{title}: {len(items)}")
            for item in items[:max_listed]:
                lines.append("  " + render(item))
            if len(items) > max_listed:
                lines.append(f"  ... and {len(items) - max_listed} more "
                             f"(the JSON report lists all)")

        if self.csv_report:
            r = self.csv_report
            lines.append(f"CSV {r['csv']}: {r['rows']} rows, {r['used']} files used; "
                         f"row problems: {sum(e['count'] for e in r['problems'].values())}")
            for entry in r["problems"].values():
                lines.append(f"  {entry['count']} {entry['what']}, e.g. "
                             + "; ".join(entry["examples"]))
        reasons = self._reason_counts()
        if reasons:
            lines.append("bad files by reason: " + ", ".join(
                f"{kind} {count}" for kind, count in reasons.items()))
        section("bad files (skipped by training)", self.bad_files,
                lambda c: f"{self._short(c.path)}: {c.reason}")
        section("identical files across classes (label noise)",
                self.duplicates_across_classes,
                lambda g: " == ".join(self._short(p) for p in g))
        if self.other_dirs:
            section("identical files across data_dir and other_dirs (leakage)",
                    self.duplicates_across_dirs,
                    lambda g: " == ".join(self._short(p) for p in g))
        section("identical files within a class", self.duplicates_within_class,
                lambda g: " == ".join(self._short(p) for p in g))
        if self.ignored_files:
            section("ignored non-image files", list(self.ignored_files), self._short)
        for warning in self.warnings:
            lines.append(f"WARNING: {warning}")
        return "\n".join(lines)


def _file_digest(path: str) -> str:
    digest = hashlib.sha256()
    with fileio.open_binary(path) as handle:
        while True:
            chunk = handle.read(_READ_CHUNK_BYTES)
            if not chunk:
                return digest.hexdigest()
            digest.update(chunk)


def _prefix_digest(path: str) -> str:
    with fileio.open_binary(path) as handle:
        return hashlib.sha256(handle.read(_PREFIX_BYTES)).hexdigest()


def _regroup(groups, digest_of, num_threads: int) -> list[list]:
    """Splits each group of items by ``digest_of(path)``; keeps groups of 2+."""
    to_hash = [item for group in groups for item in group]

    def digest(item):
        try:
            return digest_of(item[0])
        except (OSError, tf.errors.OpError):
            return None

    by_digest = collections.defaultdict(list)
    for item, value in zip(to_hash, progress_lib.thread_map(digest, to_hash, num_threads)):
        if value is not None:
            by_digest[(item[1], value)].append(item)
    return [g for g in by_digest.values() if len(g) > 1]


def _identical_groups(items, num_threads: int, keep=lambda group: True) -> list[list]:
    """Groups ``(path, size, tag)`` items whose bytes are identical.

    Only files whose size collides with another file's are read, and of
    those only the first ``_PREFIX_BYTES`` until that part matches too:
    most photos have a unique size, and files of one size (fixed-size
    images in an uncompressed format) differ early. ``keep(group)`` drops
    groups at every stage (e.g. those all on one side of a comparison).
    """
    by_size = collections.defaultdict(list)
    for item in items:
        if item[1]:  # Empty files are bad files, reported already.
            by_size[item[1]].append(item)
    groups = [g for g in by_size.values() if len(g) > 1 and keep(g)]
    groups = [g for g in _regroup(groups, _prefix_digest, num_threads) if keep(g)]
    groups = [g for g in _regroup(groups, _file_digest, num_threads) if keep(g)]
    groups.sort(key=lambda g: g[0][0])
    return groups


def identical_across(first: Sequence[str], second: Sequence[str],
                     num_threads: int | None = None) -> list[tuple[tuple, tuple]]:
    """Byte-identical files found in both ``first`` and ``second``.

    Copies within one list are not reported; a path in both lists is
    reported as its own copy. Unreadable files are left out (the file check
    reports them).

    Returns:
      For each set of identical files on both sides, sorted by its first
      path: ``(its paths in first, its paths in second)``.
    """
    tagged = [(path, 0) for path in first] + [(path, 1) for path in second]
    threads = num_threads or progress_lib.default_threads([*first, *second])

    def size(item):  # one stat per file, on threads (remote files wait on the network)
        try:
            return fileio.stat(item[0])[0]
        except OSError:
            return None

    items = [(path, value, tag) for (path, tag), value in
             zip(tagged, progress_lib.thread_map(size, tagged, threads)) if value is not None]
    both_sides = lambda group: len({item[2] for item in group}) == 2
    return [(tuple(i[0] for i in g if i[2] == 0), tuple(i[0] for i in g if i[2] == 1))
            for g in _identical_groups(items, threads, keep=both_sides)]


def _split_like_warning(data_dir, paths, labels, names) -> tuple[str, ...]:
    """Warns when the "classes" look like dataset splits.

    Pointing at the parent of ``training_set`` / ``test_set`` makes each
    split a class; there every file sits in a subfolder and every "class"
    has the same subfolders (``cats``, ``dogs``).
    """
    subfolders = [set() for _ in names]
    for path, label in zip(paths, labels):
        relative = path[len(fileio.join(data_dir, names[label])):].lstrip("/" + os.sep)
        parts = relative.replace(os.sep, "/").split("/")
        if len(parts) < 2:
            return ()  # A file directly in a class folder: a real class.
        subfolders[label].add(parts[0])
    if len(subfolders[0]) < 2 or any(s != subfolders[0] for s in subfolders):
        return ()
    return (f"every class folder {names} holds the same subfolders "
            f"{sorted(subfolders[0])}: these look like dataset splits, not classes; "
            f"point at one split, e.g. {fileio.join(data_dir, names[0])}",)


def scan_directory(
    data_dir,
    class_names: Sequence[str] | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    other_dirs: Sequence[str] = (),
    progress: progress_lib.ProgressArg = True,
    cache_dir: str | None = None,
    use_cache: bool = True,
    follow_links: bool = False,
    num_parallel: int | None = None,
    files: tuple | None = None,
    csv_report: dict | None = None,
) -> ScanReport:
    """Checks every image of a class folder and looks for duplicates.

    Args:
      data_dir: folder with one subfolder per class.
      class_names: optional class folders to use, in label order.
      max_pixels: largest width*height accepted.
      other_dirs: folders (e.g. the validation set) whose files are compared
        with ``data_dir`` byte for byte, to find leakage. Their files are
        listed (any depth, same extension rules) but not decode-checked: scan
        them on their own for that.
      progress: as in ``check_files``.
      cache_dir: as in ``check_files``.
      use_cache: as in ``check_files``.
      follow_links: as in ``list_image_files``.
      num_parallel: as in ``check_files``.
      files: ``(paths, labels, class_names)`` to check instead of the class
        folders of ``data_dir`` (files labelled by a CSV; ``data_dir`` is
        then their image folder).
      csv_report: the CSV's rows and problems, kept in the report.

    Returns:
      A ``ScanReport``.

    Raises:
      ScanInputError (a ``ValueError``): unusable ``data_dir``,
        ``class_names``, ``other_dirs`` or ``max_pixels``.
    """
    start = time.perf_counter()
    max_pixels = validate_max_pixels(max_pixels)
    data_dir = os.fspath(data_dir)
    if isinstance(other_dirs, (str, os.PathLike)):
        other_dirs = [other_dirs]
    other_dirs = [listing.require_directory(d, "other directory") for d in other_dirs]
    if files is None:
        paths, labels, names, ignored = listing.index_class_folders(
            data_dir, class_names, follow_links)
        layout = _split_like_warning(data_dir, paths, labels, names)
    else:
        (paths, labels, names), ignored, layout = (list(f) for f in files), [], ()
    checks = check_files(paths, max_pixels=max_pixels, num_parallel=num_parallel,
                         progress=progress, cache_dir=cache_dir, use_cache=use_cache)

    # One pass over the files, whatever the number of classes.
    totals, usable = collections.Counter(labels), collections.Counter(
        l for c, l in zip(checks, labels) if c.ok)
    classes = [ClassSummary(name, totals[label], usable[label],
                            totals[label] - usable[label])
               for label, name in enumerate(names)]

    # Tag each file with where it came from: ("class", label) or ("other", i).
    items = [(c.path, c.size_bytes, ("class", l))
             for c, l in zip(checks, labels) if c.ok]
    scanned = {fileio.abspath(c.path) for c in checks}
    for number, other in enumerate(other_dirs):
        for path in listing.walk_image_files(other, follow_links):
            if fileio.abspath(path) in scanned:
                continue  # other_dirs overlapping data_dir: a file is not its own copy.
            try:
                items.append((path, fileio.stat(path)[0], ("other", number)))
            except OSError:
                pass  # Unreadable: not this folder's concern; its own scan says why.
    threads = num_parallel or progress_lib.default_threads(paths)
    across_classes, across_dirs, within_class = [], [], []
    for group in _identical_groups(items, threads):
        group_paths = tuple(item[0] for item in group)
        class_labels = [item[2][1] for item in group if item[2][0] == "class"]
        has_other = any(item[2][0] == "other" for item in group)
        if len(set(class_labels)) > 1:
            across_classes.append(group_paths)
        if class_labels and has_other:
            across_dirs.append(group_paths)
        per_class = collections.Counter(class_labels)  # not .count() per copy
        if len(class_labels) != len(per_class):
            within_class.append(tuple(
                item[0] for item in group
                if item[2][0] == "class" and per_class[item[2][1]] > 1))

    return ScanReport(
        data_dir=data_dir,
        other_dirs=tuple(other_dirs),
        class_names=tuple(names),
        max_pixels=max_pixels,
        classes=tuple(classes),
        checks=tuple(checks),
        labels=tuple(labels),
        ignored_files=tuple(ignored),
        duplicates_across_classes=tuple(across_classes),
        duplicates_across_dirs=tuple(across_dirs),
        duplicates_within_class=tuple(within_class),
        seconds=time.perf_counter() - start,
        layout_warnings=layout,
        csv_report=csv_report,
    )
