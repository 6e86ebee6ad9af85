"""Multi-label input (``--label_separator``): a set of labels per image.

A CSV's label cell such as ``"cat|outdoor"`` is split on the separator
(:func:`parse`); an image's label is then the sorted tuple of its class
numbers and its target a multi-hot float32 row (:func:`multi_hot`), for one
sigmoid output per label and binary cross-entropy. :func:`validate` refuses
the settings that have no meaning for label sets, before anything is read.
"""

from __future__ import annotations

import numpy as np

from catdog.class_weighting import parse_class_weight
from catdog.options import flag_error


def is_multi_label(label) -> bool:
    """Whether ``label`` is a label set (a tuple or list of class numbers)."""
    return isinstance(label, (tuple, list))


def parse(cell: str, separator: str) -> tuple:
    """The label set of one CSV cell: split, stripped, empty parts dropped, sorted, unique."""
    return tuple(sorted({part.strip() for part in cell.split(separator) if part.strip()}))


def record(label):
    """A label as JSON holds it: an int, or the sorted list of a set's class numbers."""
    return sorted(int(i) for i in label) if is_multi_label(label) else int(label)


def stratum(label) -> int:
    """The class a label is stratified by when splitting: a set's first (smallest) class."""
    if is_multi_label(label):
        return int(min(label)) if len(label) else -1
    return int(label)


def multi_hot(labels, num_classes: int) -> np.ndarray:
    """``(N, num_classes)`` float32 targets of label sets (1.0 for each label of a row)."""
    out = np.zeros((len(labels), int(num_classes)), np.float32)
    for row, label in zip(out, labels):
        row[[int(i) for i in label]] = 1.0
    return out


def validate(config) -> None:
    """Refuses ``--label_separator`` with what has no meaning for label sets.

    Raises:
      ValueError: naming the flag (exit 2 from a script).
    """
    d, t = config.data, config.train
    if not d.label_separator:
        return
    if not d.train_csv:
        flag_error("label_separator", d.label_separator,
                   "goes with --train_csv (sets of labels read from a CSV column); "
                   "folders, TFRecords and TFDS hold one label per image")
    if "\n" in d.label_separator or "\r" in d.label_separator:
        flag_error("label_separator", d.label_separator,
                   "must be a character such as '|', ';' or ' ' (not a line break)")
    refused = {
        "class_weight": (parse_class_weight(t.class_weight),
                         "weights one class per image; an image with --label_separator "
                         "has several"),
        "mixup": (t.mixup, "mixes one class per image"),
        "cutmix": (t.cutmix, "mixes one class per image"),
        "label_smoothing": (t.label_smoothing, "smooths one class per image"),
        "top_k": (t.top_k, "ranks one true class per image"),
        "fast_features": (t.fast_features, "trains a single-label head"),
    }
    for name, (value, why) in refused.items():
        if value:
            flag_error(name, getattr(t, name),
                       f"{why}; it cannot go with --label_separator "
                       f"{d.label_separator!r} (label sets): leave one of the two out")
