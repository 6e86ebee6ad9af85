"""Evaluation of a multi-label catdog model (``--label_separator``) on a test CSV.

:func:`evaluate_label_sets` is :func:`catdog.evaluate.evaluate` for a run
trained on label sets: each image has a set of labels, the model one sigmoid
probability per label, and a label is predicted when its probability is above
``threshold``. It writes into ``out_dir`` (default ``<model_dir>/evaluation``):

- ``evaluation.json``: per label precision, recall, F1 (at the threshold),
  ROC AUC (threshold-free, exact rank statistic) and support; their macro
  means; micro precision / recall / F1 over every (image, label) pair;
  ``subset_accuracy`` (the predicted set is exactly the true set) and
  ``binary_accuracy`` (share of correct (image, label) decisions, what
  training logs as ``accuracy``); counts, skipped files and the CSV report;
- ``evaluation.md``: the same as a Markdown table;
- ``predictions.csv``: one row per image, columns ``path,label,predicted,
  correct`` and ``p_<label>`` per label (sets written with the run's
  separator), mistakes first.

Files are checked and decoded exactly as training reads them.
"""

from __future__ import annotations

import csv
import os
from typing import Optional

from absl import logging
import numpy as np
import tensorflow as tf

from catdog import data as data_lib
from catdog import evaluate as evaluate_lib
from catdog import fileio
from catdog import model_io
from catdog import rundir
from catdog import scan
from catdog.sources import csv_labels


def is_multi_label(config: dict) -> bool:
    """Whether a run's ``config.json`` is that of a model trained on label sets."""
    return bool(config.get("multi_label") or (config.get("data") or {}).get("label_separator"))


def compute_label_set_metrics(label_sets, probabilities, class_names,
                              threshold: float = 0.5) -> dict:
    """Per-label and overall figures of ``(N, k)`` sigmoid probabilities.

    Args:
      label_sets: the true label set of each image (sequences of class numbers).
      probabilities: ``(N, k)`` probabilities, one per label.
      class_names: the k labels, in output order.
      threshold: a label is predicted when its probability is above this.
    """
    probs = np.asarray(probabilities, np.float64)
    k = len(class_names)
    truth = np.zeros((len(label_sets), k), bool)
    for row, labels in zip(truth, label_sets):
        row[[int(i) for i in labels]] = True
    predicted = probs > threshold
    per_label = {}
    for c, name in enumerate(class_names):
        tp = int((truth[:, c] & predicted[:, c]).sum())
        precision = evaluate_lib._ratio(tp, predicted[:, c].sum())
        recall = evaluate_lib._ratio(tp, truth[:, c].sum())
        per_label[name] = {
            "precision": precision, "recall": recall,
            "f1": evaluate_lib._f1(precision, recall),
            "support": int(truth[:, c].sum()),
            "predicted": int(predicted[:, c].sum()),
            "roc_auc": evaluate_lib.roc_auc(truth[:, c], probs[:, c]),
        }
    tp = int((truth & predicted).sum())
    micro_p = evaluate_lib._ratio(tp, predicted.sum())
    micro_r = evaluate_lib._ratio(tp, truth.sum())
    aucs = [v["roc_auc"] for v in per_label.values() if v["roc_auc"] is not None]
    mean = lambda key: float(np.mean([v[key] for v in per_label.values()]))
    return {
        "num_examples": int(len(truth)),
        "subset_accuracy": evaluate_lib._ratio(int((truth == predicted).all(axis=1).sum()),
                                               len(truth)),
        "binary_accuracy": evaluate_lib._ratio(int((truth == predicted).sum()), truth.size),
        "per_label": per_label,
        "macro_precision": mean("precision"), "macro_recall": mean("recall"),
        "macro_f1": mean("f1"), "macro_roc_auc": float(np.mean(aucs)) if aucs else None,
        "micro_precision": micro_p, "micro_recall": micro_r,
        "micro_f1": evaluate_lib._f1(micro_p, micro_r),
    }


def format_label_set_report(result: dict) -> str:
    """``evaluation.md`` of :func:`evaluate_label_sets`."""
    m, fmt = result["metrics"], evaluate_lib._fmt
    lines = [f"# Evaluation of {result['model_dir']} (multi-label)", "",
             f"Test data: {result['test_data']}: {result['num_examples']} images, "
             f"threshold {result['threshold']}.", "",
             *evaluate_lib.seen_lines(result.get("seen_by_the_run"), result["num_examples"]),
             f"Subset accuracy (exact set): {fmt(m['subset_accuracy'])}; binary accuracy: "
             f"{fmt(m['binary_accuracy'])}; micro precision / recall / F1: "
             f"{fmt(m['micro_precision'])} / {fmt(m['micro_recall'])} / "
             f"{fmt(m['micro_f1'])}; macro ROC AUC: {fmt(m['macro_roc_auc'])}.", ""]
    lines += evaluate_lib._table(
        ["label", "precision", "recall", "f1", "roc_auc", "support", "predicted"],
        [[name, *(fmt(v[key]) for key in ("precision", "recall", "f1", "roc_auc")),
          v["support"], v["predicted"]] for name, v in m["per_label"].items()])
    for line in csv_labels.problem_lines(result.get("csv_report")):
        lines.append(line)
    if result["skipped_files"]:
        lines += ["", f"{len(result['skipped_files'])} files skipped:"]
        lines += [f"- {s['path']}: {s['reason']}" for s in result["skipped_files"]]
    return "\n".join(lines)


def evaluate_label_sets(model_dir, test_csv: str, *, image_dir: str = "",
                        filename_column: str = "", label_column: str = "",
                        threshold: float = 0.5, batch_size: int = 32,
                        out_dir: Optional[str] = None) -> dict:
    """Evaluates a multi-label run's model on a CSV of files and label sets.

    The CSV's label cells are split with the run's ``--label_separator``;
    labels the model does not know are dropped from a set (a row with none
    left is counted as ``unknown_label``).

    Returns:
      The content of ``evaluation.json`` (``metrics`` as
      :func:`compute_label_set_metrics`).

    Raises:
      ValueError, FileNotFoundError: bad arguments, not a multi-label run, or
        no usable test image.
    """
    if not 0.0 < float(threshold) < 1.0:
        raise ValueError("`--threshold` must be strictly between 0 and 1. "
                         f"Received: threshold={threshold!r}")
    evaluate_lib.check_batch_size(batch_size)
    model_dir = os.fspath(model_dir)
    model, config, image_size, class_names = model_io.load_for_inference(model_dir)
    if not is_multi_label(config):
        raise ValueError(f"{model_dir!r} was not trained on label sets (--label_separator); "
                         "evaluate it with catdog.evaluate.evaluate.")
    if not test_csv:
        raise ValueError(f"{model_dir!r} is a multi-label model: pass --test_csv (a CSV "
                         "of files and label sets); folders and TFDS hold one label per image.")
    separator = config["data"]["label_separator"]
    test_csv = os.fspath(test_csv)
    paths, labels, _, rows = csv_labels.csv_examples(
        test_csv, list(class_names), image_dir=image_dir or "",
        filename_column=filename_column, label_column=label_column, flag="test_csv",
        label_separator=separator)
    if not paths:
        raise ValueError(f"No row of --test_csv {test_csv!r} has a label of the model "
                         f"({class_names}): {rows.report()['problems']}.")
    max_pixels = config["data"].get("max_pixels") or scan.DEFAULT_MAX_PIXELS
    paths, labels, skipped = data_lib.keep_usable(paths, labels, max_pixels)
    if not paths:
        raise ValueError(f"No usable image in --test_csv {test_csv!r} (see skipped_files).")
    num_classes = len(class_names)
    probabilities = tf.function(
        model_io.probabilities_fn(model, num_classes),
        input_signature=[tf.TensorSpec([None, *image_size, 3], tf.uint8)])
    # deterministic: row i of the probabilities belongs to paths[i].
    ds = data_lib.build_dataset(paths, labels, num_classes=num_classes, image_size=image_size,
                                batch_size=batch_size, training=False, cache="none",
                                deterministic=True, split="test", multi_label=True)
    probs = np.concatenate([probabilities(images).numpy() for images, _ in ds])
    seen = data_lib.seen_in_split(
        fileio.read_json(os.path.join(model_dir, rundir.SPLIT_FILE)), paths, test_csv,
        model_dir)
    threshold = float(threshold)
    metrics = compute_label_set_metrics(labels, probs, class_names, threshold)
    out_dir = os.fspath(out_dir) if out_dir else os.path.join(
        model_dir, evaluate_lib.EVALUATION_DIR)
    os.makedirs(out_dir, exist_ok=True)
    files = {name: os.path.join(out_dir, name) for name in (
        evaluate_lib.JSON_FILE, evaluate_lib.MARKDOWN_FILE, evaluate_lib.PREDICTIONS_FILE)}
    _write_predictions(files[evaluate_lib.PREDICTIONS_FILE], paths, labels, probs,
                       class_names, threshold, separator)
    result = {
        "model_dir": model_dir, "test_data": test_csv, "multi_label": True,
        "class_names": list(class_names), "label_separator": separator,
        "threshold": threshold, "num_examples": len(paths),
        "counts": {n: metrics["per_label"][n]["support"] for n in class_names},
        "skipped_files": skipped, "csv_report": rows.report(), "seen_by_the_run": seen,
        "metrics": metrics,
        "out_dir": out_dir, "files": files,
    }
    fileio.write_json(files[evaluate_lib.JSON_FILE], result)
    report = format_label_set_report(result)
    fileio.write_text(files[evaluate_lib.MARKDOWN_FILE], report + "\n")
    logging.info("Evaluated %d images of %s: subset accuracy %.4f, micro F1 %.4f; "
                 "results in %s", len(paths), test_csv, metrics["subset_accuracy"],
                 metrics["micro_f1"], out_dir)
    return result


def _write_predictions(path, paths, labels, probs, class_names, threshold, separator):
    rows = []
    for file_path, label, p in zip(paths, labels, probs):
        truth = [class_names[i] for i in sorted(label)]
        predicted = [n for n, q in zip(class_names, p) if q > threshold]
        # How far the worst label is from its right side of the threshold.
        margin = min(abs(float(q) - threshold) * (1 if (q > threshold) == (n in truth) else -1)
                     for n, q in zip(class_names, p))
        rows.append((truth == predicted, margin, str(file_path), truth, predicted, p))
    rows.sort(key=lambda r: (r[0], r[1], r[2]))  # confident mistakes first
    with fileio.atomic_open(path, newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "label", "predicted", "correct",
                         *(f"p_{n}" for n in class_names)])
        for correct, _, file_path, truth, predicted, p in rows:
            writer.writerow([file_path, separator.join(truth), separator.join(predicted),
                             correct, *(f"{float(q):.6f}" for q in p)])
