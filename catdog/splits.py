"""The training / validation split of a run and its record, split.json.

:func:`split_files` holds out a stratified, stable, seeded share of each
class; :func:`split_record` is what ``split.json`` stores of any source, and
:func:`split_digest` / :func:`describe_split_change` compare two records
independently of where the data lies (fine-tuning and resuming must read
exactly the split of the run they continue).
"""

from __future__ import annotations

import collections
import hashlib
import json
import math
import os
from typing import Optional

from absl import logging

from catdog import batching
from catdog import fileio
from catdog import label_sets
from catdog import scan


def split_files(paths, labels, validation_split: float, seed: int, class_dirs=None):
    """Splits files into (train, val): stratified, stable and reproducible.

    Each class holds out ``validation_split`` of its own files, rounded to
    the nearest file (the per-class split ``ImageDataGenerator`` made): the
    first ones in the order of a seeded hash of each file's path relative to
    its class folder. Which files are held out depends only on the seed and
    the names within each class (not on their order or on where the folder
    is), so adding or removing one file moves at most one other file between
    the splits, and moving the whole data folder keeps the split.
    (``keras.utils.image_dataset_from_directory`` instead shuffles the whole
    file list, so one new file reshuffles every split.) A label set
    (multi-label) is stratified by its first class, so every file is in
    exactly one stratum and the split stays a stable partition.

    Args:
      paths: the usable files.
      labels: their integer labels (or label sets: tuples of them).
      validation_split: fraction of each class held out, in (0, 1).
      seed: seed of the hash order; another seed gives another split.
      class_dirs: folder of each class, by label; file names are hashed
        relative to it. Default: the paths as given.

    Returns:
      ``(train, val)`` :class:`catdog.batching.SplitFiles`, each in the order of ``paths``;
      no file is in both.
    """
    members = collections.defaultdict(list)
    for i, label in enumerate(labels):
        members[label_sets.stratum(label)].append(i)
    held_out = set()
    for label, indices in members.items():
        root = class_dirs[label] if class_dirs is not None else None
        order = sorted(indices, key=lambda i: _hash_key(paths[i], root, seed))
        held_out.update(order[:_num_held_out(len(indices), validation_split)])
    take = lambda keep: batching.SplitFiles([p for i, p in enumerate(paths) if keep(i)],
                                            [l for i, l in enumerate(labels) if keep(i)])
    return take(lambda i: i not in held_out), take(lambda i: i in held_out)


def _file_keys(paths) -> list:
    """Each file's identity: its real path (a linked file: its target's)."""
    real_dirs, keys = {}, []
    for path in paths:
        if fileio.is_remote(path):
            keys.append(path)
            continue
        folder, name = os.path.split(os.path.abspath(path))
        real = real_dirs.get(folder)
        if real is None:
            real = real_dirs[folder] = os.path.realpath(folder)
        full = os.path.join(real, name)
        keys.append(os.path.realpath(full) if os.path.islink(full) else full)
    return keys


def shared_files(first, second) -> list:
    """The files of ``second`` that are also in ``first`` (same real file)."""
    seen = set(_file_keys(first))
    return [path for path, key in zip(second, _file_keys(second)) if key in seen]


def check_disjoint(train, val, train_what: str, val_what: str) -> None:
    """Refuses validation files that are also training files.

    Validation figures over images the model trains on are not validation
    figures: the same folder twice, a validation folder inside the training
    one, a CSV row in both, or a link to a training file. ValueError names
    both inputs and a few of the files.
    """
    both = shared_files(train.paths, val.paths)
    if both:
        shown = ", ".join(repr(p) for p in both[:3]) + (", ..." if len(both) > 3 else "")
        raise ValueError(
            f"{len(both)} of the {len(val)} validation images of {val_what} are also "
            f"training images of {train_what} (the same files: {shown}), so the "
            "validation figures would be measured on images the model trained on. "
            f"Give validation images that are not in {train_what}, or leave out "
            f"{val_what.split()[0]} and hold out a --validation_split instead.")


def _split_names(data_config) -> tuple[str, str]:
    """How messages name the training and the validation input of a file source."""
    d = data_config
    flag, train = (("csv", d.train_csv) if d.train_csv else ("dir", d.train_dir))
    val = d.val_csv if d.train_csv else d.val_dir
    train_what = f"--train_{flag} {train!r}"
    return train_what, (f"--val_{flag} {val!r}" if val else
                        f"the --validation_split held out of {train_what}")


def copies_across(data_config, train, val) -> list:
    """Warns about validation images that are copies of training images.

    A file copied (not linked) into both splits has other paths, so
    :func:`check_disjoint` cannot see it, yet the validation figures count
    it as unseen: the audit's byte comparison finds it (only files of a
    size on both sides are read). A warning, not a refusal: a few copies
    are common in scraped photo sets and the user decides.

    Returns:
      ``[[training path, validation path], ...]``, one pair per copied
      image (its first path on each side), for ``split.json``.
    """
    groups = scan.identical_across(train.paths, val.paths)
    if not groups:
        return []
    pairs = [[group[0][0], group[1][0]] for group in groups]
    train_what, val_what = _split_names(data_config)
    copied = sum(len(group[1]) for group in groups)
    shown = ", ".join(f"{v!r} == {t!r}" for t, v in pairs[:3]) + (
        ", ..." if len(pairs) > 3 else "")
    d = data_config
    where = (f"--csv={d.train_csv}" if d.train_csv else f"--data_dir={d.train_dir}")
    other = (csv_image_dir(d.val_csv, d.image_dir) if d.train_csv and d.val_csv else
             "" if d.train_csv else d.val_dir)
    if other:
        where += f" --other_dirs={other}"
    logging.warning(
        "%d of the %d validation images of %s are byte-identical copies of training "
        "images of %s (%s): the validation figures count them as unseen images, "
        "so they read higher than on new photos. Remove one of each pair (split.json "
        "lists them under identical_across_splits; scripts/scan_data.py %s lists "
        "every identical file).", copied, len(val), val_what, train_what, shown, where)
    return pairs


def seen_in_split(record: Optional[dict], paths, test_what: str = "the test set",
                  run: str = "the run") -> Optional[dict]:
    """Which of ``paths`` (images to evaluate) a run trained or validated on.

    A test image counts when it is the same real file as one of the run's
    training or validation files (``record``, its ``split.json``), or
    byte-identical to one; an image found on both sides counts as training.
    Any found are named in a warning.

    Returns:
      ``{"training_images": n, "validation_images": m, "images": {"train":
      [...], "val": [...]}}`` (the paths, in the order of ``paths``); None
      when the record lists no files (no ``split.json``, or a TFRecord or
      TFDS source).
    """
    if not record or record.get("source") not in ("folder", "csv"):
        return None
    paths = list(paths)
    found = {}
    for side in ("train", "val"):
        files = list(record.get(side) or [])
        found[side] = set(shared_files(files, paths)) | {
            path for _, test in scan.identical_across(files, paths) for path in test}
    train = [p for p in paths if p in found["train"]]
    val = [p for p in paths if p in found["val"] and p not in found["train"]]
    if train or val:
        logging.warning(
            "%d of the %d test images of %s are training images of %s and %d are its "
            "validation images (the same files or byte-identical copies; listed in "
            "evaluation.json under seen_by_the_run): these figures overstate how the "
            "model does on new photos.", len(train), len(paths), test_what, run, len(val))
    return {"training_images": len(train), "validation_images": len(val),
            "images": {"train": train, "val": val}}


def check_split_classes(train, val, class_names, validation_split: float,
                        where: str, val_flag: str) -> None:
    """After a ``--validation_split``: every class must keep a training image.

    A class whose every image was held out would give a model that never saw
    it (ValueError naming the class and what to do); a class with no
    validation image only weakens its validation figures (a warning).
    """
    def missing(labels):
        present = {i for label in labels
                   for i in (label if isinstance(label, (tuple, list)) else (label,))}
        return [name for i, name in enumerate(class_names) if i not in present]

    untrained = missing(train.labels)
    if untrained:
        raise ValueError(
            f"Class(es) {untrained} of {where} have no training image: "
            f"--validation_split={validation_split:g} holds out all of their "
            "usable images. Add images to them, lower --validation_split, or give "
            f"the validation images with {val_flag}.")
    unvalidated = missing(val.labels)
    if unvalidated:
        logging.warning(
            "Class(es) %s of %s have no validation image after --validation_split=%g "
            "(too few usable images): their validation figures will be missing. Add "
            "images to them, raise --validation_split, or use %s.",
            unvalidated, where, validation_split, val_flag)


def _num_held_out(n: int, fraction: float) -> int:
    # Nearest file, halves up: never more than half a file from the fraction,
    # and one file more in a class changes the count by at most one.
    return int(math.floor(fraction * n + 0.5))


def _relative(path: str, root: Optional[str]) -> str:
    if root is None:
        return path
    prefix = root.rstrip("/") + "/"
    if path.startswith(prefix) and "/./" not in path and "/../" not in path:
        return path[len(prefix):]  # the usual case, without relpath's cost
    return os.path.relpath(path, root).replace(os.sep, "/")


def _hash_key(path: str, root: Optional[str], seed: int):
    name = _relative(path, root)
    digest = hashlib.sha256(f"{int(seed)}\n{name}".encode("utf-8", "surrogateescape"))
    return digest.hexdigest(), name


# ---------------------------------------------------------------------------
# split.json: the exact inputs of a run, for fine-tuning and resuming.
# ---------------------------------------------------------------------------

SPLIT_FORMAT = "catdog-split-v1"


def source_kind(data_config) -> str:
    """``"folder"``, ``"csv"``, ``"tfrecords"`` or ``"tfds"``: the input source of a config."""
    if getattr(data_config, "train_csv", ""):
        return "csv"
    if data_config.train_tfrecords:
        return "tfrecords"
    if data_config.tfds_name:
        return "tfds"
    return "folder"


def csv_image_dir(csv_path: str, image_dir: str = "") -> str:
    """The folder the file names of ``csv_path`` are relative to: ``image_dir``
    or else the CSV file's own folder."""
    return image_dir or os.path.dirname(os.path.abspath(csv_path))


def split_record(data_config, index: batching.DataIndex) -> dict:
    """What ``split.json`` holds: the training and validation inputs of a run.

    ``train`` and ``val`` are the file paths exactly as training reads them
    (folders), the shard files (TFRecords) or the split strings (TFDS). A
    folder or CSV record also has the labels and the folders the files came
    from (class folders' parent; a CSV's image folder), so the split can be
    compared by paths relative to them.
    """
    kind = source_kind(data_config)
    record = {"format": SPLIT_FORMAT, "source": kind,
              "class_names": list(index.class_names)}
    if kind in ("folder", "csv"):
        record.update(
            train=list(index.train.paths), val=list(index.val.paths),
            train_labels=[label_sets.record(l) for l in index.train.labels],
            val_labels=[label_sets.record(l) for l in index.val.labels])
        if kind == "folder":
            # "val" is empty when validation is held out of the training folder.
            record["roots"] = {"train": data_config.train_dir, "val": data_config.val_dir}
        else:
            d = data_config
            record["roots"] = {
                "train": csv_image_dir(d.train_csv, d.image_dir),
                "val": csv_image_dir(d.val_csv, d.image_dir) if d.val_csv else ""}
            record["csv"] = {"train": d.train_csv, "val": d.val_csv}
        if index.copies:
            record["identical_across_splits"] = [list(p) for p in index.copies]
        return record
    listed = ((lambda s: list(s.source)) if kind == "tfrecords" else
              (lambda s: [s.source]))
    record.update(train=listed(index.train), val=listed(index.val),
                  train_examples=len(index.train), val_examples=len(index.val))
    if kind == "tfds":
        record["tfds_name"] = data_config.tfds_name
    return record


def _split_entries(record: dict) -> dict:
    """``{input key: "train" | "val"}``, keyed independently of where the data lies.

    Folder files are keyed by the folder they came from (training or
    validation folder), class and path relative to the class folder; CSV
    files by the CSV they came from, class and path relative to its image
    folder; shards
    by file name; TFDS splits by dataset and split string.
    """
    entries = {}
    kind = record.get("source")
    for side in ("train", "val"):
        if kind == "folder":
            roots = record["roots"]
            origin = "val_dir" if side == "val" and roots["val"] else "train_dir"
            root = roots["val"] if origin == "val_dir" else roots["train"]
            names = record["class_names"]
            for path, label in zip(record[side], record[f"{side}_labels"]):
                name = names[label]
                key = (origin, name, _relative(path, os.path.join(root, name)))
                entries[key] = side
        elif kind == "csv":
            roots = record["roots"]
            origin = "val_csv" if side == "val" and roots["val"] else "train_csv"
            root = roots["val"] if origin == "val_csv" else roots["train"]
            names = record["class_names"]
            for path, label in zip(record[side], record[f"{side}_labels"]):
                name = ("|".join(names[i] for i in label) if label_sets.is_multi_label(label)
                        else names[label])
                entries[(origin, name, _relative(path, root))] = side
        elif kind == "tfrecords":
            for path in record[side]:
                entries[("shard", os.path.basename(path))] = side
        else:
            for split in record[side]:
                entries[("tfds", record.get("tfds_name", ""), split)] = side
    return entries


def split_digest(record: dict) -> str:
    """A digest of a split that stays the same when the data folder moves."""
    canonical = {"source": record.get("source"), "class_names": record.get("class_names"),
                 "entries": sorted([*key, side] for key, side in _split_entries(record).items())}
    for key in ("train_examples", "val_examples"):
        if key in record:
            canonical[key] = int(record[key])
    text = json.dumps(canonical, sort_keys=True, ensure_ascii=True)
    return hashlib.sha256(text.encode("ascii")).hexdigest()


def describe_split_change(old: dict, new: dict) -> str:
    """How split ``new`` differs from ``old``, for an error message."""
    unit = {"folder": "file", "csv": "file", "tfrecords": "shard file", "tfds": "TFDS split"}.get(
        new.get("source"), "input")
    if old.get("source") != new.get("source"):
        return f"the input source changed from {old.get('source')} to {new.get('source')}"
    if old.get("class_names") != new.get("class_names"):
        return f"the classes changed from {old.get('class_names')} to {new.get('class_names')}"
    a, b = _split_entries(old), _split_entries(new)
    added = sorted(set(b) - set(a))
    removed = sorted(set(a) - set(b))
    moved = sorted(k for k in set(a) & set(b) if a[k] != b[k])
    plural = lambda n: f"{unit}{'' if n == 1 else 's'}"
    text = (f"{len(added)} {plural(len(added))} added, {len(removed)} removed, "
            f"{len(moved)} moved between training and validation")
    example = lambda keys: ", ".join("/".join(k[1:]) for k in keys[:3])
    for what, keys in (("added", added), ("removed", removed), ("moved", moved)):
        if keys:
            text += f"; {what}: {example(keys)}{', ...' if len(keys) > 3 else ''}"
    counts = [(len(old.get(s, [])), len(new.get(s, []))) for s in ("train", "val")]
    for key in ("train_examples", "val_examples"):
        if key in old and old.get(key) != new.get(key):
            text += f"; {key} {old.get(key)} -> {new.get(key)}"
    if not (added or removed or moved):
        text += (f" (training {counts[0][0]} -> {counts[0][1]}, validation "
                 f"{counts[1][0]} -> {counts[1][1]} {unit}s)")
    return text

