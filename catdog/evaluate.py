"""Evaluation of a trained catdog model on a held-out test set.

:func:`evaluate` runs a training run's ``model.keras`` over a test folder
(one subfolder per class, the same class names as the model), a CSV of
files and labels (resolved and reported as training reads one, see
:mod:`catdog.sources.csv_labels`) or a TFDS split, and writes into
``out_dir`` (default ``<model_dir>/evaluation``):

- ``evaluation.json``: every metric, the confusion matrix, the threshold,
  the counts, the skipped files (``[{"path", "reason"}]``) and, for a CSV,
  its rows and their problems (``csv_report``);
- ``evaluation.md``: the same as readable Markdown tables;
- ``predictions.csv``: one row per image, columns
  ``path,label,probability,predicted,correct``;
- ``confusion_matrix.png`` and ``worst_mistakes.png``.

The ``probability`` column of ``predictions.csv``:

- binary models (two classes): the model's probability of
  ``class_names[1]`` (its sigmoid output, the number ``--threshold`` is
  compared with: ``predicted = class_names[1]`` when ``probability >
  threshold``). Keeping the raw score lets you re-threshold or draw a ROC
  curve from the CSV alone;
- multi-class models: the probability of the predicted class (the largest
  softmax output; ties go to the first class).

Rows are sorted with the most confident mistakes first (by the probability
the model gave its wrong answer), then the correct predictions, least
confident first (the ones closest to becoming mistakes); ties by path.

Pixels are exactly the training pipeline's: files are checked with
:func:`catdog.scan.check_files` (bad files are skipped and reported, as in
training, never deleted) and batched through
:func:`catdog.data.build_dataset` with ``training=False``.

Metrics are computed with numpy from the probabilities, so they are exact
and independent of Keras' streaming metrics: ROC AUC is the rank-based
(Mann-Whitney) statistic with tied scores sharing their average rank.
Precision, recall and F1 that are undefined (no predicted or no true
example of a class) are 0.0; a ROC AUC that is undefined (only one class
present) is None.
"""

from __future__ import annotations

import csv
import math
import os
from typing import Optional, Sequence

from absl import logging
import numpy as np
import tensorflow as tf

from catdog import data as data_lib
from catdog import fileio
from catdog import figures
from catdog import model_io
from catdog import models
from catdog import rundir
from catdog import scan
from catdog.sources import csv_labels
from catdog.sources import tfds as tfds_source

EVALUATION_DIR = "evaluation"
JSON_FILE = "evaluation.json"
MARKDOWN_FILE = "evaluation.md"
PREDICTIONS_FILE = "predictions.csv"
CONFUSION_FILE = "confusion_matrix.png"
MISTAKES_FILE = "worst_mistakes.png"
PREDICTION_COLUMNS = ("path", "label", "probability", "predicted", "correct")
#: How many mistakes worst_mistakes.png shows.
MISTAKES_SHOWN = 16


# ---------------------------------------------------------------------------
# Metrics (numpy only; exact).
# ---------------------------------------------------------------------------

def roc_auc(y_true, scores) -> Optional[float]:
    """Exact ROC AUC of ``scores`` for the binary labels ``y_true``.

    The rank-based (Mann-Whitney U) form: the probability that a random
    positive scores higher than a random negative, ties counting one half.
    Tied scores share their average rank, so the value equals the area
    under the exact ROC curve with ties drawn as diagonal segments.

    Args:
      y_true: 0/1 labels (1 = positive).
      scores: a score per example; higher means more positive.

    Returns:
      The AUC in [0, 1], or None when only one class is present.
    """
    y = np.asarray(y_true).astype(bool).ravel()
    s = np.asarray(scores, np.float64).ravel()
    if y.shape != s.shape:
        raise ValueError(f"y_true has {y.size} values but scores has {s.size}.")
    n_pos = int(y.sum())
    n_neg = int(y.size - n_pos)
    if n_pos == 0 or n_neg == 0:
        return None
    # Average ranks (1-based) with ties: every member of a group of equal
    # scores gets the mean of the ranks the group spans.
    _, inverse, counts = np.unique(s, return_inverse=True, return_counts=True)
    ends = np.cumsum(counts)
    average_rank = ends - (counts - 1) / 2.0
    ranks = average_rank[inverse]
    u = ranks[y].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


def confusion_matrix(y_true, y_pred, num_classes: int) -> np.ndarray:
    """Counts of (true, predicted) pairs: rows are true, columns predicted."""
    y_true = np.asarray(y_true, np.int64).ravel()
    y_pred = np.asarray(y_pred, np.int64).ravel()
    flat = np.bincount(y_true * num_classes + y_pred,
                       minlength=num_classes * num_classes)
    return flat.reshape(num_classes, num_classes)


def _ratio(num, den) -> float:
    # Undefined precision / recall (nothing predicted / nothing true) is 0.0,
    # the convention of the common toolkits, so macro averages stay defined.
    return float(num) / float(den) if den else 0.0


def _f1(precision: float, recall: float) -> float:
    return 2 * precision * recall / (precision + recall) if precision + recall else 0.0


def predicted_labels(probabilities, threshold: float = 0.5) -> np.ndarray:
    """Predicted label of each row of ``(N, C)`` class probabilities.

    Two classes: ``1`` when ``P(class 1) > threshold`` (so at 0.5 a tie goes
    to class 0, as ``argmax`` and Keras' ``BinaryAccuracy`` do). More:
    ``argmax``, ties to the first class.
    """
    probs = np.asarray(probabilities, np.float64)
    if probs.shape[1] == 2:
        return (probs[:, 1] > threshold).astype(np.int64)
    return probs.argmax(axis=1).astype(np.int64)


def compute_metrics(labels, probabilities, class_names: Sequence[str],
                    threshold: float = 0.5, top_k: int = 0) -> dict:
    """All metrics of ``(N, C)`` probabilities against integer labels.

    Args:
      labels: true labels, integers in ``[0, C)``.
      probabilities: ``(N, C)`` class probabilities (a binary model's ``p``
        as ``[1 - p, p]``, see :func:`catdog.model_io.probabilities_fn`).
      class_names: the C class names in label order.
      threshold: binary decision threshold on ``P(class_names[1])``.
      top_k: with more than two classes, also ``top_k_accuracy`` (the true
        class among the k most probable) and ``top_k``; 0: off.

    Returns:
      A dict with ``accuracy``; ``per_class`` (``{name: {precision, recall,
      f1, support, roc_auc}}``, one-vs-rest); ``macro_precision``,
      ``macro_recall``, ``macro_f1``, ``macro_roc_auc`` (mean over classes
      whose AUC is defined); ``confusion_matrix`` (``{"class_names",
      "matrix"}``, rows true, columns predicted); ``num_examples``. Binary
      results also have ``precision``, ``recall``, ``f1`` and ``roc_auc``
      of the positive class ``class_names[1]``, and ``positive_class``.
    """
    labels = np.asarray(labels, np.int64).ravel()
    probs = np.asarray(probabilities, np.float64)
    num_classes = len(class_names)
    if probs.ndim != 2 or probs.shape != (labels.size, num_classes):
        raise ValueError(
            f"probabilities must have shape ({labels.size}, {num_classes}) for "
            f"{labels.size} labels and class_names {list(class_names)}. "
            f"Received: shape {probs.shape}")
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(f"labels must be in [0, {num_classes}). Received: "
                         f"min {labels.min()}, max {labels.max()}")
    predicted = predicted_labels(probs, threshold)
    matrix = confusion_matrix(labels, predicted, num_classes)
    per_class = {}
    for c, name in enumerate(class_names):
        tp = int(matrix[c, c])
        precision = _ratio(tp, matrix[:, c].sum())
        recall = _ratio(tp, matrix[c, :].sum())
        per_class[name] = {
            "precision": precision, "recall": recall, "f1": _f1(precision, recall),
            "support": int(matrix[c, :].sum()),
            "roc_auc": roc_auc(labels == c, probs[:, c]),
        }
    aucs = [v["roc_auc"] for v in per_class.values() if v["roc_auc"] is not None]
    out = {
        "num_examples": int(labels.size),
        "accuracy": _ratio(np.trace(matrix), labels.size),
        "per_class": per_class,
        "macro_precision": float(np.mean([v["precision"] for v in per_class.values()])),
        "macro_recall": float(np.mean([v["recall"] for v in per_class.values()])),
        "macro_f1": float(np.mean([v["f1"] for v in per_class.values()])),
        "macro_roc_auc": float(np.mean(aucs)) if aucs else None,
        "confusion_matrix": {"class_names": list(class_names),
                             "matrix": matrix.tolist()},
    }
    if num_classes == 2:
        positive = per_class[class_names[1]]
        out.update(positive_class=class_names[1], precision=positive["precision"],
                   recall=positive["recall"], f1=positive["f1"],
                   roc_auc=positive["roc_auc"])
    if top_k and num_classes > 2:
        top = np.argsort(-probs, axis=1, kind="stable")[:, :top_k]
        out.update(top_k=int(top_k), top_k_accuracy=_ratio(
            int((top == labels[:, None]).any(axis=1).sum()), labels.size))
    return out


# ---------------------------------------------------------------------------
# Per-file rows.
# ---------------------------------------------------------------------------

def prediction_rows(paths, labels, probabilities, class_names,
                    threshold: float = 0.5) -> list:
    """The rows of ``predictions.csv``, sorted most confident mistakes first.

    Args:
      paths: one identifier per example (a file path, or a TFDS reference).
      labels: true integer labels.
      probabilities: ``(N, C)`` class probabilities.
      class_names: class names in label order.
      threshold: binary decision threshold.

    Returns:
      A list of dicts with keys :data:`PREDICTION_COLUMNS` (``label`` and
      ``predicted`` are class names, ``correct`` a bool, ``probability`` as
      defined in the module docstring) plus ``confidence``, the
      probability of the predicted class, used for sorting and pictures
      (not written to the CSV).
    """
    probs = np.asarray(probabilities, np.float64)
    predicted = predicted_labels(probs, threshold)
    rows = []
    for path, label, p, pred in zip(paths, labels, probs, predicted):
        label, pred = int(label), int(pred)
        rows.append({
            "path": path,
            "label": class_names[label],
            "probability": float(p[1] if len(class_names) == 2 else p[pred]),
            "predicted": class_names[pred],
            "correct": label == pred,
            "confidence": float(p[pred]),
        })
    # Mistakes first, most confident first; then correct ones, least
    # confident first: the top of the file is what deserves a look.
    rows.sort(key=lambda r: (r["correct"],
                             r["confidence"] if r["correct"] else -r["confidence"],
                             str(r["path"])))
    return rows


def write_predictions_csv(rows, path: str) -> str:
    """Writes rows of :func:`prediction_rows` as CSV (atomically); a path
    that is not valid UTF-8 is written with its odd bytes escaped (``\\udcff``)."""
    with fileio.atomic_open(path, newline="", errors="backslashreplace") as f:
        writer = csv.writer(f)
        writer.writerow(PREDICTION_COLUMNS)
        for r in rows:
            writer.writerow([r["path"], r["label"], f"{r['probability']:.6f}",
                             r["predicted"], "true" if r["correct"] else "false"])
    return path


def read_predictions_csv(path: str) -> list:
    """Reads ``predictions.csv`` back (``probability`` float, ``correct`` bool)."""
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    for r in rows:
        r["probability"] = float(r["probability"])
        r["correct"] = r["correct"].strip().lower() == "true"
    return rows


# ---------------------------------------------------------------------------
# Readable report.
# ---------------------------------------------------------------------------

def _fmt(value) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.4f}"
    return str(value)


def _table(header, rows) -> list:
    cells = [list(map(str, header))] + [[str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    line = lambda r: "| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |"
    return [line(cells[0]), "|" + "|".join("-" * (w + 2) for w in widths) + "|",
            *map(line, cells[1:])]


def format_report(result: dict) -> str:
    """Renders an :func:`evaluate` result as Markdown tables (``evaluation.md``)."""
    m = result["metrics"]
    names = result["class_names"]
    lines = [f"# Evaluation of {result['model_dir']}", "",
             f"Test data: {result['test_data']}  ",
             f"Images evaluated: {result['num_examples']}; skipped: "
             f"{len(result['skipped_files'])}"]
    if len(names) == 2:
        lines.append(f"Threshold: P({names[1]}) > {result['threshold']} "
                     f"predicts {names[1]}")
    lines += ["", *seen_lines(result.get("seen_by_the_run"), result["num_examples"])]
    summary = [("accuracy", _fmt(m["accuracy"]))]
    if len(names) == 2:
        summary += [(f"precision ({names[1]})", _fmt(m["precision"])),
                    (f"recall ({names[1]})", _fmt(m["recall"])),
                    (f"F1 ({names[1]})", _fmt(m["f1"])),
                    ("ROC AUC", _fmt(m["roc_auc"]))]
    else:
        summary += [("macro precision", _fmt(m["macro_precision"])),
                    ("macro recall", _fmt(m["macro_recall"])),
                    ("macro F1", _fmt(m["macro_f1"])),
                    ("macro ROC AUC (one-vs-rest)", _fmt(m["macro_roc_auc"]))]
        if m.get("top_k"):
            summary.append((f"top-{m['top_k']} accuracy", _fmt(m["top_k_accuracy"])))
    lines += _table(("metric", "value"), summary) + [""]
    lines += _table(("class", "precision", "recall", "F1", "ROC AUC", "support"),
                    [(n, _fmt(v["precision"]), _fmt(v["recall"]), _fmt(v["f1"]),
                      _fmt(v["roc_auc"]), v["support"])
                     for n, v in m["per_class"].items()]) + [""]
    matrix = m["confusion_matrix"]["matrix"]
    lines += ["Confusion matrix (rows: true class, columns: predicted class)", ""]
    lines += _table(("true \\ predicted", *names),
                    [(n, *row) for n, row in zip(names, matrix)]) + [""]
    if result.get("csv_report"):
        lines += ["CSV rows:", ""] + csv_labels.problem_lines(result["csv_report"]) + [""]
    if result["skipped_files"]:
        lines += ["Skipped files (not evaluated):", ""]
        lines += [f"- {s['path']}: {s['reason']}" for s in result["skipped_files"]]
        lines.append("")
    return "\n".join(lines)


# ---------------------------------------------------------------------------
# Inputs.
# ---------------------------------------------------------------------------

def seen_lines(seen: Optional[dict], num_examples: int) -> list:
    """The report's warning about test images the run has seen, if any."""
    if not seen or not (seen["training_images"] or seen["validation_images"]):
        return []
    n, v = seen["training_images"], seen["validation_images"]
    return [f"**Warning: {n} of the {num_examples} test images are training images of "
            f"this run and {v} {'is a validation image' if v == 1 else 'are validation images'}"
            " (the same files or copies): these figures overstate how the model does "
            "on new photos.**", ""]


def _check_test_folder(test_dir: str, class_names: list) -> None:
    """The test folder's class subfolders must be exactly the model's classes."""
    if not os.path.isdir(test_dir):
        raise FileNotFoundError(
            f"`--test_dir` {test_dir!r} is not a folder. Pass a folder with one "
            f"subfolder per class: {class_names}.")
    found = sorted(d for d in os.listdir(test_dir)
                   if os.path.isdir(os.path.join(test_dir, d)) and not d.startswith("."))
    if sorted(map(scan.nfc, class_names)) != sorted(map(scan.nfc, found)):
        raise ValueError(
            f"The class subfolders of --test_dir {test_dir!r} are {found}, but the "
            f"model was trained on classes {class_names}; the test folder needs "
            "exactly one subfolder per model class, with the same names.")


def _folder_examples(test_dir, class_names, max_pixels):
    """(paths, labels, skipped) of a test folder, checked as training does."""
    _check_test_folder(test_dir, class_names)
    paths, labels, _ = scan.list_image_files(test_dir, class_names=list(class_names))
    return _usable(paths, labels, max_pixels, f"--test_dir {test_dir!r}")


def _usable(paths, labels, max_pixels, where):
    """(paths, labels, skipped) of the files that decode; ValueError if none does."""
    good_paths, good_labels, skipped = data_lib.keep_usable(paths, labels, max_pixels)
    if not good_paths:
        raise ValueError(f"No usable image in {where}: all {len(paths)} files were "
                         "skipped (see skipped_files).")
    return good_paths, good_labels, skipped


def _csv_examples(test_csv, class_names, max_pixels, **columns):
    """(paths, labels, skipped, csv report) of a test CSV, checked as training does."""
    paths, labels, _, rows = csv_labels.csv_examples(test_csv, list(class_names),
                                                  flag="test_csv", **columns)
    if not paths:
        raise ValueError(f"No row of --test_csv {test_csv!r} has a class of the model "
                         f"({class_names}): {rows.report()['problems']}.")
    return (*_usable(paths, labels, max_pixels, f"--test_csv {test_csv!r}"), rows.report())


def check_batch_size(batch_size) -> None:
    """Raises ValueError naming ``--batch_size`` unless it is a positive integer."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError("`--batch_size` must be a positive integer. "
                         f"Received: batch_size={batch_size!r}")


def _check_threshold(threshold, num_classes):
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) \
            or not 0.0 < float(threshold) < 1.0:
        raise ValueError("`--threshold` must be strictly between 0 and 1. "
                         f"Received: threshold={threshold!r}")
    if num_classes != 2 and float(threshold) != 0.5:
        raise ValueError(
            f"`--threshold` applies to binary models only; this model has "
            f"{num_classes} classes and predicts the most probable one. "
            f"Received: threshold={threshold!r}")


# ---------------------------------------------------------------------------
# The entry point.
# ---------------------------------------------------------------------------

def evaluate(model_dir, test_dir: Optional[str] = None, *,
             test_csv: Optional[str] = None, image_dir: Optional[str] = None,
             filename_column: str = "", label_column: str = "",
             tfds_name: Optional[str] = None, tfds_split: Optional[str] = None,
             tfds_data_dir: Optional[str] = None, threshold: float = 0.5,
             batch_size: int = 32, out_dir: Optional[str] = None,
             top_k: Optional[int] = None) -> dict:
    """Evaluates a training run's model on a test folder or a TFDS split.

    Args:
      model_dir: a finished run's folder (``model.keras`` + ``config.json``);
        the class names and image size come from its ``config.json``.
      test_dir: folder with one subfolder per model class (nested
        subfolders count for their top-level class).
      test_csv: instead of ``test_dir``, a CSV of file names (or ids) and
        labels; rows of other classes than the model's are counted and left out.
      image_dir: folder the CSV's file names are relative to (default: its folder).
      filename_column, label_column: the CSV's columns (default: the
        first two of its header).
      tfds_name: a TFDS image classification dataset instead of
        ``test_dir`` (read from ``tfds_data_dir``; never downloaded here).
      tfds_split: the TFDS split, e.g. ``"test"`` or ``"train[80%:]"``.
      tfds_data_dir: TFDS data folder (default: TFDS' own default).
      threshold: binary models predict ``class_names[1]`` when its
        probability is above this (0 < threshold < 1).
      batch_size: images per model call.
      out_dir: where the results go; default ``<model_dir>/evaluation``.
      top_k: k of the top-k accuracy (more than two classes; 0: off); None:
        the run's ``--top_k`` (unset there: 5 with more than 5 classes).

    Returns:
      The content of ``evaluation.json``: ``metrics`` (see
      :func:`compute_metrics`), ``class_names``, ``threshold``,
      ``num_examples``, ``counts`` (true examples per class),
      ``skipped_files``, ``csv_report`` (a CSV's rows and problems, else
      None), ``test_data``, ``model_dir``, ``out_dir`` and
      ``files`` (the paths written).

    Raises:
      ValueError, FileNotFoundError: bad arguments, a model_dir that is not
        a finished run, a test folder whose classes differ from the model's,
        or no usable test image.
    """
    if sum(x is not None for x in (test_dir, test_csv, tfds_name)) != 1:
        raise ValueError("Pass exactly one of --test_dir (a folder of class "
                         "subfolders), --test_csv (a CSV of files and labels) or "
                         "--tfds_name (with --tfds_split). Received: "
                         f"test_dir={test_dir!r}, test_csv={test_csv!r}, "
                         f"tfds_name={tfds_name!r}")
    for name, value in (("image_dir", image_dir), ("filename_column", filename_column),
                        ("label_column", label_column)):
        if value and test_csv is None:
            raise ValueError(f"`--{name}` goes with --test_csv (a CSV of files and "
                             f"labels). Received: {name}={value!r}")
    if tfds_name is not None and not tfds_split:
        raise ValueError("`--tfds_split` is required with --tfds_name, e.g. "
                         f"'test' or 'train[80%:]'. Received: tfds_split={tfds_split!r}")
    check_batch_size(batch_size)
    model_dir = os.fspath(model_dir)
    model, config, image_size, class_names = model_io.load_for_inference(model_dir)
    if config.get("multi_label"):
        raise ValueError(f"{model_dir!r} is multi-label: evaluate it with "
                         "catdog.evaluate_sets.evaluate_label_sets (scripts/evaluate.py does).")
    # The pixels the model was trained on (an older config.json: the old decode).
    decode_options = model_io.model_decode_options(model, model_io.config_decode_options(config))
    num_classes = len(class_names)
    _check_threshold(threshold, num_classes)
    threshold = float(threshold)
    top_k = models.resolve_top_k(
        (config.get("train") or {}).get("top_k") if top_k is None else top_k, num_classes)
    out_dir = os.fspath(out_dir) if out_dir else os.path.join(model_dir, EVALUATION_DIR)
    probabilities = tf.function(
        model_io.probabilities_fn(model, num_classes),
        input_signature=[tf.TensorSpec([None, *image_size, decode_options.channels], tf.uint8)])

    skipped, images_of, csv_report, seen = [], None, None, None
    if test_dir is not None or test_csv is not None:
        max_pixels = (config.get("data") or {}).get("max_pixels") or scan.DEFAULT_MAX_PIXELS
        if test_csv is not None:
            test_dir = os.fspath(test_csv)
            paths, labels, skipped, csv_report = _csv_examples(
                test_dir, class_names, max_pixels, image_dir=image_dir or "",
                filename_column=filename_column, label_column=label_column)
        else:
            test_dir = os.fspath(test_dir)
            paths, labels, skipped = _folder_examples(test_dir, class_names, max_pixels)
        # deterministic=True: the batches come out in file order, so row i
        # of the probabilities belongs to paths[i].
        ds = data_lib.build_dataset(
            paths, labels, num_classes=num_classes, image_size=image_size,
            batch_size=batch_size, training=False, cache="none",
            deterministic=True, split="test", decode_options=decode_options)
        probs = np.concatenate([probabilities(images).numpy() for images, _ in ds])
        test_data = test_dir
        # Test figures over images the run has seen are not test figures.
        seen = data_lib.seen_in_split(
            fileio.read_json(os.path.join(model_dir, rundir.SPLIT_FILE)), paths,
            test_data, model_dir)
    else:
        ds, _ = tfds_source.evaluation_dataset(tfds_name, tfds_split, tfds_data_dir, image_size,
                              batch_size, class_names, decode_options)
        chunks, labels, paths, images_of = [], [], [], {}
        ref = f"tfds:{tfds_name}/{tfds_split}"
        for images, batch_labels, index in ds:
            batch_probs = probabilities(images).numpy()
            chunks.append(batch_probs)
            labels.extend(int(v) for v in batch_labels.numpy())
            batch_refs = [f"{ref}#{int(i)}" for i in index.numpy()]
            paths.extend(batch_refs)
            # TFDS examples have no file to show: keep the pixels of the
            # examples that may be among the worst mistakes.
            _keep_worst(images_of, batch_refs, images.numpy(), batch_labels.numpy(),
                        batch_probs, threshold)
        if not paths:
            raise ValueError(f"TFDS split {tfds_split!r} of {tfds_name!r} is empty.")
        probs = np.concatenate(chunks)
        test_data = ref

    metrics = compute_metrics(labels, probs, class_names, threshold, top_k)
    rows = prediction_rows(paths, labels, probs, class_names, threshold)
    os.makedirs(out_dir, exist_ok=True)
    files = {name: os.path.join(out_dir, name) for name in (
        JSON_FILE, MARKDOWN_FILE, PREDICTIONS_FILE, CONFUSION_FILE, MISTAKES_FILE)}
    write_predictions_csv(rows, files[PREDICTIONS_FILE])
    figures.confusion_matrix_image(np.array(metrics["confusion_matrix"]["matrix"]),
                                    class_names, files[CONFUSION_FILE])
    mistakes = [dict(r, image=_image_of(images_of.get(r["path"]))) if images_of is not None else r
                for r in rows if not r["correct"]][:MISTAKES_SHOWN]
    figures.worst_mistakes_grid(mistakes, files[MISTAKES_FILE], n=MISTAKES_SHOWN,
                                 class_names=class_names)
    counts = np.bincount(np.asarray(labels, np.int64), minlength=num_classes)
    result = {
        "model_dir": model_dir,
        "test_data": test_data,
        "class_names": list(class_names),
        "threshold": threshold if num_classes == 2 else None,
        "num_examples": len(paths),
        "num_mistakes": sum(not r["correct"] for r in rows),
        "counts": {n: int(c) for n, c in zip(class_names, counts)},
        "skipped_files": skipped,
        "csv_report": csv_report,
        "seen_by_the_run": seen,
        "metrics": metrics,
        "predictions_probability": (
            f"P({class_names[1]})" if num_classes == 2 else "P(predicted class)"),
        "out_dir": out_dir,
        "files": files,
    }
    fileio.write_json(files[JSON_FILE], result)
    report = format_report(result)
    fileio.write_text(files[MARKDOWN_FILE], report + "\n")
    logging.info("Evaluated %d images of %s: accuracy %.4f; results in %s",
                 len(paths), test_data, metrics["accuracy"], out_dir)
    return result


def _keep_worst(images_of: dict, refs, images, labels, probs, threshold,
                n: int = MISTAKES_SHOWN) -> None:
    """Keeps the pixels of the ``n`` most confident mistakes seen so far."""
    predicted = predicted_labels(probs, threshold)
    for ref, image, label, p, pred in zip(refs, images, labels, probs, predicted):
        if int(pred) != int(label):
            images_of[ref] = (float(p[pred]), image)
    if len(images_of) > n:
        keep = sorted(images_of.items(), key=lambda kv: -kv[1][0])[:n]
        images_of.clear()
        images_of.update(keep)


def _image_of(entry):
    return None if entry is None else entry[1]
