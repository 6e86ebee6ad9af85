"""The CSV source: image files labelled by the rows of a CSV file.

What ``ImageDataGenerator.flow_from_dataframe`` read, without copying files
into class folders: one row per image, a file name column and a label
column. :func:`read_csv_rows` resolves the rows of one CSV against its image
folder and counts every messy row; :func:`index_csv` turns a training CSV
(and an optional validation CSV) into a :class:`catdog.batching.DataIndex`
of file paths and int labels, so everything downstream (the folder
``build_dataset``, caches, ``split.json``, resuming, fine-tuning's inherited
split, the multi-worker partition) reads it as it reads a folder.

A file name may be a path relative to the image folder (``Cat1.jpg``,
``train/x.jpg``) or an id without extension (``000bec18``): an id stands
for the one image file of the image folder whose path without extension
it is. A path that leaves the image folder (``../x.jpg``, an absolute path,
a symlink pointing out) is resolved with ``os.path.realpath`` and refused
before anything opens it. Local files only.
"""

from __future__ import annotations

import collections
import csv
import dataclasses
import os
from typing import Optional

from absl import logging

from catdog import batching
from catdog import label_sets
from catdog import scan
from catdog import splits

#: Examples kept per kind of problem (the count is always exact).
MAX_EXAMPLES = 5

#: Each kind of problem a CSV can have, and what it means.
PROBLEMS = {
    "empty_filename": "rows with an empty file name (left out)",
    "empty_label": "rows with an empty label (left out)",
    "extra_cells": "rows with more filled cells than the header has columns, e.g. an "
                   "unquoted comma in a label (left out)",
    "outside_image_dir": "rows whose path leaves the image folder (never read)",
    "missing_file": "rows whose file is not in the image folder (left out)",
    "ambiguous_id": "rows whose id matches several image files (left out)",
    "duplicate_row": "rows listing a file again with the same label (used once)",
    "conflicting_label": "files listed with different labels (left out)",
    "unknown_label": "rows whose label is not a class of the run (left out)",
    "unlisted_image": "image files in the image folder without a row (not used)",
}


@dataclasses.dataclass
class CsvRows:
    """The rows of one CSV, resolved against its image folder.

    Attributes:
      csv_path: the CSV file.
      image_dir: the folder its file names are relative to.
      rows: data rows read (the header not counted).
      paths: the resolved files, one per file, in row order.
      labels: their labels as written in the CSV (strings; with a label
        separator, sorted tuples of strings).
      problems: ``{kind: {"count", "examples"}}`` of :data:`PROBLEMS`.
      listed: real paths of every file some row resolved to.
      images: the image files of ``image_dir`` (inside it, resolved).
      used: files of a class of the run, once labelled; in the report of a
        run or a shard set, those that also passed the file check (the
        others are its skipped files).
    """

    csv_path: str
    image_dir: str
    rows: int = 0
    paths: list = dataclasses.field(default_factory=list)
    labels: list = dataclasses.field(default_factory=list)
    problems: dict = dataclasses.field(default_factory=dict)
    listed: set = dataclasses.field(default_factory=set)
    images: dict = dataclasses.field(default_factory=dict)
    used: Optional[int] = None

    def add_problem(self, kind: str, example: str) -> None:
        entry = self.problems.setdefault(kind, {"count": 0, "examples": []})
        entry["count"] += 1
        if len(entry["examples"]) < MAX_EXAMPLES:
            entry["examples"].append(example)

    def report(self) -> dict:
        """What ``metrics.json`` records of this CSV (JSON-ready)."""
        return {"csv": self.csv_path, "image_dir": self.image_dir, "rows": self.rows,
                "used": len(self.paths) if self.used is None else self.used,
                "problems": {k: dict(self.problems[k], what=PROBLEMS[k])
                             for k in PROBLEMS if k in self.problems}}


def _inside(real: str, real_root: str) -> bool:
    return os.path.commonpath([real, real_root]) == real_root


def _key(name: str) -> str:
    """A file name or label as text compares: normalized path, Unicode NFC.

    A name typed or written by one tool (NFC: "é" one code point) and the
    same name from another (NFD, as macOS stores it: "e" + accent) look the
    same and must be the same file or class.
    """
    return scan.nfc(os.path.normpath(name) if name else name)


def _add(table: dict, name: str, path: str) -> None:
    """Files the CSV may name by ``name``: as :func:`_key`, and case-folded."""
    table[_key(name)].append(path)
    table[("folded", _key(name).casefold())].append(path)


def _lookup(table: dict, name: str) -> list:
    """The files named ``name`` in a table of :func:`_add`; in another letter
    case (a CSV made where file names ignore case) only when none match as
    written."""
    return table.get(_key(name)) or table.get(("folded", _key(name).casefold()), [])


def _resolve(name: str, root: str, real_root: str, by_stem: dict, by_name: dict):
    """``(path, None)`` of the file a row names, or ``(None, problem kind)``.

    A name written with Windows separators (``train\\cat.1.jpg``) that is no
    file as written is read again with ``/``, through the same checks.
    """
    path, problem = _resolve_as_written(name, root, real_root, by_stem, by_name)
    if problem == "missing_file" and "\\" in name:
        return _resolve_as_written(name.replace("\\", "/"), root, real_root, by_stem,
                                   by_name)
    return path, problem


def _resolve_as_written(name: str, root: str, real_root: str, by_stem: dict,
                        by_name: dict):
    """:func:`_resolve` of ``name`` as it is written.

    The containment checks come first and touch nothing outside ``root``:
    the name as text (absolute, ``..``), then ``realpath`` (symlinks), each
    with ``commonpath``; only a path inside is ever looked at. A name that
    is no file as written is looked up among the folder's image files (see
    :func:`_lookup`), as a file name, then as an id (a stem).
    """
    if "\0" in name:  # no file system has such a name
        return None, "missing_file"
    path = os.path.normpath(os.path.join(root, name))
    if os.path.isabs(name) or not _inside(os.path.abspath(path), os.path.abspath(root)):
        return None, "outside_image_dir"
    if not _inside(os.path.realpath(path), real_root):
        return None, "outside_image_dir"
    if os.path.isfile(path):
        return path, None
    matches = _lookup(by_name, name)
    if len(matches) == 1:
        return matches[0], None
    if name.lower().endswith(scan.IMAGE_EXTENSIONS):
        return None, "missing_file"
    matches = _lookup(by_stem, name)
    if len(matches) > 1:
        return None, "ambiguous_id"
    return (matches[0], None) if matches else (None, "missing_file")


def _read_table(csv_path: str, flag: str):
    """``(rows, the file line each row starts on)``; ValueError names the file.

    Lines are counted in the file, so a quoted cell spanning lines does not
    shift the line numbers of the rows after it.
    """
    table, lines, start = [], [], 1
    try:
        with open(csv_path, newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f)
            for row in reader:
                table.append(row)
                lines.append(start)
                start = reader.line_num + 1
    except UnicodeDecodeError as e:
        raise ValueError(
            f"--{flag} {csv_path!r} is not UTF-8 text (byte {e.start} of the file: "
            f"{e.reason}); save it as UTF-8 (in a spreadsheet: 'CSV UTF-8') and run "
            "again.") from None
    except csv.Error as e:
        raise ValueError(f"--{flag} {csv_path!r} cannot be read as CSV at line {start}: "
                         f"{e}. Fix that line and run again.") from None
    if table and any("\n" in cell or "\r" in cell for cell in table[-1]):
        _check_quotes_closed(csv_path, flag, lines[-1], start - 1)
    return table, lines


def _check_quotes_closed(csv_path: str, flag: str, first: int, last: int) -> None:
    """Refuses a file whose last row is a quote left open to the end.

    The lenient reader takes everything after an unclosed quote as one cell,
    so the rows below it would vanish; the strict one tells that case from a
    quoted cell that legitimately spans lines.
    """
    try:
        with open(csv_path, newline="", encoding="utf-8-sig") as f:
            for _ in csv.reader(f, strict=True):
                pass
    except csv.Error as e:
        if "unexpected end of data" in str(e):
            raise ValueError(
                f"--{flag} {csv_path!r}: a quote (\") opened on line {first} is never "
                f"closed, so lines {first}-{last} would be read as one cell and their "
                "rows lost. Close or remove that quote and run again.") from None


def _columns(header, path, flag, filename_column, label_column):
    header = [h.strip() for h in header]

    def pick(column, flag_name, default_index):
        if column:
            if column not in header:
                raise ValueError(
                    f"`--{flag_name}` {column!r} is not a column of --{flag} {path!r}; "
                    f"its header is {header}. Received: {flag_name}={column!r}")
            return header.index(column)
        if len(header) <= default_index:
            other = next((name for sep, name in ((";", "semicolons"), ("\t", "tabs"))
                          if len(header) == 1 and sep in header[0]), None)
            if other:
                raise ValueError(
                    f"--{flag} {path!r} seems separated by {other} (its header is "
                    f"{header}); catdog reads comma-separated files: save it as CSV "
                    "with commas (in a spreadsheet: 'CSV UTF-8').")
            raise ValueError(
                f"--{flag} {path!r} needs a header row with a file name and a label "
                f"column; its header is {header}. Name them with --filename_column "
                "and --label_column.")
        return default_index

    fi, li = (pick(filename_column, "filename_column", 0),
              pick(label_column, "label_column", 1))
    if fi == li:
        raise ValueError(
            f"`--label_column` and `--filename_column` are both column {header[fi]!r} "
            f"of --{flag} {path!r}; name two columns of its header {header}.")
    return fi, li


def read_csv_rows(csv_path: str, image_dir: str = "", filename_column: str = "",
                  label_column: str = "", flag: str = "train_csv",
                  label_separator: str = "") -> CsvRows:
    """Reads one CSV and resolves its file names against its image folder.

    Every row that cannot be used is counted in ``problems``; only the rows
    that name a file inside the image folder are ever resolved further, and
    nothing is opened but the CSV (the images are checked later, by
    :func:`catdog.scan.keep_usable`).

    Args:
      csv_path: the CSV file (UTF-8, a byte-order mark is allowed).
      image_dir: folder of the images; default: the CSV's folder.
      filename_column: header name of the file name / id column (default:
        the first column).
      label_column: header name of the label column (default: the second).
      flag: the flag naming the CSV, for messages.
      label_separator: the label cell is a set of labels separated by this
        (split, stripped, empty parts dropped, duplicates collapsed);
        empty: one label per row.

    Raises:
      ValueError: the CSV or image folder is missing, a column is unknown,
        or the CSV has no data rows.
    """
    if not csv_path or not os.path.isfile(csv_path):
        raise ValueError(f"`--{flag}` must name an existing CSV file. "
                         f"Received: {flag}={csv_path!r}")
    root = splits.csv_image_dir(csv_path, image_dir)
    if not os.path.isdir(root):
        raise ValueError(f"`--image_dir` {root!r} (the folder of the file names in "
                         f"--{flag} {csv_path!r}) is not a folder. Received: "
                         f"image_dir={image_dir!r}")
    table, lines = _read_table(csv_path, flag)
    while table and not any(cell.strip() for cell in table[0]):
        table.pop(0)
        lines.pop(0)
    if not table:
        raise ValueError(f"--{flag} {csv_path!r} is empty; it needs a header row and one "
                         "row per image.")
    fi, li = _columns(table[0], csv_path, flag, filename_column, label_column)
    out = CsvRows(csv_path=csv_path, image_dir=root)
    real_root = os.path.realpath(root)
    by_stem, by_name = collections.defaultdict(list), collections.defaultdict(list)
    for path in scan.walk_image_files(root):
        real = os.path.realpath(path)
        if _inside(real, real_root):
            out.images[real] = path
            relative = os.path.relpath(path, root)
            _add(by_name, relative, path)
            _add(by_stem, os.path.splitext(relative)[0], path)
    first = lambda row, i: row[i].strip() if i < len(row) else ""
    head = first(table[0], fi)
    # A first row is data when it names an image AND its label is a label of
    # the rows below: a header "image,label" beside an image.jpg is a header.
    if (head and _resolve(head, root, real_root, by_stem, by_name)[0]
            and first(table[0], li) in {first(row, li) for row in table[1:]}):
        raise ValueError(
            f"The first row of --{flag} {csv_path!r} looks like data ({head!r} is an "
            f"image of {root!r}), not a header row; add a header row naming the "
            "columns (e.g. 'file,label') so no image is lost.")
    chosen = {}  # real path -> (path, label, line)
    conflicting = {}
    for line, row in zip(lines[1:], table[1:]):
        if not any(cell.strip() for cell in row):
            continue  # a blank line is no row
        out.rows += 1
        cell = lambda i: row[i].strip() if i < len(row) else ""
        name, label = cell(fi), scan.nfc(cell(li))
        if label_separator:
            label = label_sets.parse(label, label_separator)
        where = f"line {line}: {name!r}"
        if not name:
            out.add_problem("empty_filename", f"line {line}")
            continue
        if not label:
            out.add_problem("empty_label", where)
            continue
        if any(cell.strip() for cell in row[len(table[0]):]):
            out.add_problem("extra_cells", where)
            continue
        # A path that leaves the image folder (.., absolute, symlinks) is
        # refused before anything touches the file: it is never opened.
        path, problem = _resolve(name, root, real_root, by_stem, by_name)
        if problem == "ambiguous_id":
            matches = _lookup(by_stem, name.replace("\\", "/")) or _lookup(by_stem, name)
            out.add_problem(problem, f"{where} matches " + ", ".join(
                os.path.basename(m) for m in matches))
            out.listed.update(os.path.realpath(m) for m in matches)
            continue
        if problem:
            out.add_problem(problem, where)
            continue
        real = os.path.realpath(path)
        out.listed.add(real)
        if real in conflicting:
            conflicting[real].append((label, line))
        elif real in chosen:
            if chosen[real][1] == label:
                out.add_problem("duplicate_row", f"{where} (first on line {chosen[real][2]})")
            else:
                earlier = chosen.pop(real)
                conflicting[real] = [(earlier[1], earlier[2]), (label, line)]
        else:
            chosen[real] = (path, label, line)
    for real, seen in conflicting.items():
        labels = ", ".join(f"{_shown(l)!r} (line {n})" for l, n in seen)
        out.add_problem("conflicting_label",
                        f"{os.path.relpath(real, real_root)!r}: {labels}")
    for path, label, _ in chosen.values():
        out.paths.append(path)
        out.labels.append(label)
    if not out.rows:
        raise ValueError(f"--{flag} {csv_path!r} has no rows below its header; it needs "
                         "one row per image.")
    return out


def _shown(label) -> str:
    return "|".join(label) if isinstance(label, tuple) else label


def _log_problems(rows: CsvRows) -> None:
    for kind, entry in rows.report()["problems"].items():
        logging.warning("%s: %d %s, e.g. %s", rows.csv_path, entry["count"], PROBLEMS[kind],
                        "; ".join(entry["examples"]))


def _summary(rows: CsvRows) -> str:
    found = rows.report()["problems"]
    return "; ".join(f"{e['count']} {PROBLEMS[k]}" for k, e in found.items()) or "no problem"


def _class_names(rows: CsvRows, given, label_column: str, flag: str = "train_csv") -> list:
    found = sorted({name for label in rows.labels
                    for name in (label if isinstance(label, tuple) else (label,))})
    column = label_column or "the second column"
    if given:
        given = [scan.nfc(str(n)) for n in given]
        absent = [n for n in given if n not in found]
        if absent:
            raise ValueError(
                f"`--class_names` {absent} have no usable row in --{flag} "
                f"{rows.csv_path!r} (column {column}); its labels are {found}. "
                f"Received: class_names={given}")
        return given
    if len(found) < 2:
        raise ValueError(
            f"--{flag} {rows.csv_path!r} needs at least two classes in its label "
            f"column ({column}) among its usable rows; found {found} "
            f"({_summary(rows)}).")
    return found


def _labelled(rows: CsvRows, class_names):
    # NFC, as the labels are: a run's class names written in another form match.
    number = {scan.nfc(name): i for i, name in enumerate(class_names)}
    paths, labels = [], []
    for path, label in zip(rows.paths, rows.labels):
        if isinstance(label, tuple) and any(name in number for name in label):
            # A label set keeps the labels of the run; the others are dropped.
            paths.append(path)
            labels.append(tuple(sorted(number[name] for name in label if name in number)))
        elif label in number:
            paths.append(path)
            labels.append(number[label])
        else:
            rows.add_problem("unknown_label", f"{os.path.relpath(path, rows.image_dir)!r}: "
                                              f"{_shown(label)!r}")
    rows.used = len(paths)
    return paths, labels


def index_csv(data_config, progress: bool = True) -> batching.DataIndex:
    """The :class:`catdog.batching.DataIndex` of ``data_config.train_csv``.

    Classes are the training CSV's labels, sorted (or ``class_names``);
    rows of other labels are left out and counted. Files are decode-checked
    like a folder's (:func:`catdog.scan.keep_usable`). Without ``val_csv``,
    ``validation_split`` of each class is held out by
    :func:`catdog.splits.split_files`, hashing paths relative to the image
    folder (the split survives moving the folder). Every problem is logged
    and recorded in ``csv_report``: ``{"train": ..., "val": ...}`` each with
    the CSV, its image folder, rows read, files used and
    ``{kind: {"count", "examples"}}`` of :data:`PROBLEMS`.

    Raises:
      ValueError: a CSV, column or folder is wrong, no row is usable, fewer
        than two classes, a ``class_names`` entry no row has, or a class
        without a usable image.
    """
    d = data_config
    columns = dict(filename_column=d.filename_column, label_column=d.label_column,
                   label_separator=d.label_separator)
    train_rows = read_csv_rows(d.train_csv, d.image_dir, flag="train_csv", **columns)
    val_rows = (read_csv_rows(d.val_csv, d.image_dir, flag="val_csv", **columns)
                if d.val_csv else None)
    if not train_rows.paths:
        raise ValueError(f"--train_csv {d.train_csv!r} has no usable row: "
                         f"{_summary(train_rows)} (image folder {train_rows.image_dir!r}; "
                         "set --image_dir if the file names are relative to another folder).")
    class_names = _class_names(train_rows, d.class_names, d.label_column)
    listed = train_rows.listed | (val_rows.listed if val_rows else set())
    for rows in (train_rows, val_rows):
        if rows is None or (rows is val_rows and rows.image_dir == train_rows.image_dir):
            continue  # one folder's unlisted images are reported once
        for real, path in rows.images.items():
            if real not in listed:
                rows.add_problem("unlisted_image", os.path.relpath(path, rows.image_dir))
    paths, labels = _labelled(train_rows, class_names)
    vpaths, vlabels = _labelled(val_rows, class_names) if val_rows else ([], [])
    for rows in (train_rows, val_rows):
        if rows is not None:
            _log_problems(rows)
    report = {"train": train_rows.report()}
    paths, labels, skipped = scan.keep_usable(paths, labels, d.max_pixels, progress)
    report["train"]["used"] = len(paths)  # the files that passed the check
    if not paths:
        raise ValueError(f"--train_csv {d.train_csv!r} has no usable image: every file its "
                         "rows name was skipped (see the skipped files logged above).")
    batching.require_every_class(labels, class_names, f"--train_csv {d.train_csv!r}")
    if val_rows is not None:
        report["val"] = val_rows.report()
        vpaths, vlabels, vskipped = scan.keep_usable(vpaths, vlabels, d.max_pixels, progress)
        report["val"]["used"] = len(vpaths)
        skipped += vskipped
        batching.require_every_class(vlabels, class_names, f"--val_csv {d.val_csv!r}")
        train, val = batching.SplitFiles(paths, labels), batching.SplitFiles(vpaths, vlabels)
        splits.check_disjoint(train, val, f"--train_csv {d.train_csv!r}",
                              f"--val_csv {d.val_csv!r}")
    else:
        roots = [train_rows.image_dir] * len(class_names)
        train, val = splits.split_files(paths, labels, d.validation_split, d.seed,
                                        class_dirs=roots)
        if not len(val) or not len(train):
            raise ValueError(
                f"`--validation_split` {d.validation_split} of {len(paths)} usable "
                f"images of --train_csv {d.train_csv!r} leaves an empty split; use "
                "more images, another split, or --val_csv.")
        splits.check_split_classes(train, val, class_names, d.validation_split,
                                   f"--train_csv {d.train_csv!r}", "--val_csv")
    return batching.DataIndex(class_names, train, val, skipped, csv_report=report,
                              copies=splits.copies_across(d, train, val))


def csv_examples(csv_path: str, class_names=None, *, image_dir: str = "",
                 filename_column: str = "", label_column: str = "",
                 flag: str = "test_csv", check_classes: bool = False,
                 label_separator: str = ""):
    """``(paths, labels, class_names, rows)`` of one CSV, for evaluation and TFRecords.

    Rows whose label is not one of ``class_names`` are counted as
    ``unknown_label``, unlisted images of the image folder as
    ``unlisted_image``; nothing is decode-checked here. ``class_names=None``
    takes the CSV's labels, sorted; ``check_classes`` refuses, as training
    does, a given class no row has or fewer than two classes. With
    ``label_separator`` each label is a sorted tuple of class numbers.

    Raises:
      ValueError: as :func:`read_csv_rows`, no usable row, or (with
        ``check_classes``) bad classes.
    """
    rows = read_csv_rows(csv_path, image_dir, filename_column, label_column, flag=flag,
                         label_separator=label_separator)
    if not rows.paths:
        raise ValueError(f"--{flag} {csv_path!r} has no usable row: {_summary(rows)} "
                         f"(image folder {rows.image_dir!r}).")
    if class_names is None or check_classes:
        class_names = _class_names(rows, class_names, label_column, flag)
    for real, path in rows.images.items():
        if real not in rows.listed:
            rows.add_problem("unlisted_image", os.path.relpath(path, rows.image_dir))
    paths, labels = _labelled(rows, list(class_names))
    _log_problems(rows)
    return paths, labels, list(class_names), rows


def problem_lines(report: Optional[dict]) -> list:
    """Readable lines of a :meth:`CsvRows.report` (for scripts and reports)."""
    if not report:
        return []
    lines = [f"{report['csv']}: {report['rows']} rows, {report['used']} files used "
             f"(images in {report['image_dir']})"]
    for kind, entry in report["problems"].items():
        lines.append(f"- {entry['count']} {entry['what']}, e.g. "
                     + "; ".join(entry["examples"]))
    return lines
