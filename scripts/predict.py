"""Classifies image files with a trained or exported catdog model.

Usage:
    predict.py --model_dir=DIR [--csv=FILE] [--batch_size=32] FILES_OR_FOLDERS...
    predict.py --saved_model=DIR [--csv=FILE] [--batch_size=32] FILES_OR_FOLDERS...

Folders are searched recursively for .jpg .jpeg .png .gif .bmp files (any
case). Prints an aligned table `file  class  probability`, where probability
is that of the predicted class; a file that cannot be read or decoded gets an
`ERROR: <reason>` row and the others still run. A multi-label model (trained
with --label_separator) prints `file  labels  p(<label>)...`: the labels whose
probability is above --threshold, then every label's probability; its --csv
has columns path,labels,p_<label>...,error.

Exit status: 0 when it ran (even if some files failed), 1 when every file
failed, 2 on usage errors (bad flags, model or output path).
"""

import csv
import os
import sys

from absl import app
from absl import flags

from catdog import cli
from catdog import fileio
from catdog import scan

_MODEL_DIR = flags.DEFINE_string(
    "model_dir", None,
    "Training run folder holding model.keras and config.json.")
_SAVED_MODEL = flags.DEFINE_string(
    "saved_model", None,
    "SavedModel written by scripts/export.py (a version folder, or the base "
    "folder: its highest version is used). Gives exactly the exported "
    "model's probabilities.")
_CSV = flags.DEFINE_string(
    "csv", None,
    "Also write the rows to this CSV file (columns path,class,probability,"
    "error); an existing CSV file is replaced.")
_BATCH_SIZE = flags.DEFINE_integer(
    "batch_size", 32, "Images per model call.", lower_bound=1)
_THRESHOLD = flags.DEFINE_float(
    "threshold", 0.5, "Multi-label models (--label_separator): a label is predicted "
    "when its probability is above this; 0 < threshold < 1.")

def main(argv):
    cli.escape_undecodable_names()  # file names need not be valid UTF-8
    paths = argv[1:]
    if (_MODEL_DIR.value is None) == (_SAVED_MODEL.value is None):
        return cli.usage_error(
            "pass exactly one of --model_dir=DIR (a training run folder) or "
            "--saved_model=DIR (an exported model).")
    if not paths:
        return cli.usage_error(
            "no files or folders given; list them after the flags, e.g. "
            "predict.py --model_dir=runs/baseline photos/")
    if not 0.0 < _THRESHOLD.value < 1.0:
        return cli.usage_error(f"`--threshold` must be strictly between 0 and 1. "
                               f"Received: threshold={_THRESHOLD.value!r}")
    if _CSV.value is not None:
        problem = _csv_problem(_CSV.value, paths)
        if problem:
            return cli.usage_error(f"--csv={_CSV.value}: {problem}")

    # Imported here so usage errors are reported without loading TensorFlow.
    from catdog import predict

    flag = "--model_dir" if _MODEL_DIR.value is not None else "--saved_model"
    try:
        if _MODEL_DIR.value is not None:
            # A path: its config.json also says whether the model is multi-label.
            model = _MODEL_DIR.value
            if predict.model_io.find_saved_model(model) is not None:
                predict.load_for_inference(model)  # a SavedModel is no model_dir
        else:  # the SavedModel knows its own image size and class names
            model = predict.load_saved_model(_SAVED_MODEL.value)
        rows = predict.predict_files(model, paths, batch_size=_BATCH_SIZE.value,
                                     threshold=_THRESHOLD.value)
    except (ValueError, OSError) as error:
        return cli.usage_error(f"{flag}: {error}")

    _print_table(rows)
    if _CSV.value is not None:
        _write_csv(_CSV.value, rows)
    failed = sum(row["error"] is not None for row in rows)
    summary = f"{len(rows) - failed} of {len(rows)} files classified"
    if failed:
        summary += f", {failed} could not be read"
    print(summary + ".", file=sys.stderr)
    return 1 if failed == len(rows) else 0


def _labels_of(rows):
    """The labels of a multi-label model's rows, or None for a single-label model."""
    for row in rows:
        if "probabilities" in row:
            return list(row["probabilities"])
    return None


def _print_table(rows):
    labels = _labels_of(rows)
    if labels is not None:
        return _print_label_sets(rows, labels)
    cells = [("file", "class", "probability")]
    for row in rows:
        if row["error"] is not None:
            cells.append((row["path"], f"ERROR: {row['error']}", ""))
        else:
            cells.append((row["path"], row["class"], f"{row['probability']:.4f}"))
    file_width = max(len(c[0]) for c in cells)
    # Error messages are long; they do not widen the class column.
    class_width = max(len(c[1]) for c in cells if not c[1].startswith("ERROR: "))
    for path, name, probability in cells:
        print(f"{path:<{file_width}}  {name:<{class_width}}  {probability}".rstrip())


def _print_label_sets(rows, labels):
    cells = [("file", "labels", *(f"p({n})" for n in labels))]
    for row in rows:
        if row["error"] is not None:
            cells.append((row["path"], f"ERROR: {row['error']}"))
        else:
            cells.append((row["path"], ",".join(row["labels"]) or "-",
                          *(f"{row['probabilities'][n]:.4f}" for n in labels)))
    file_width = max(len(c[0]) for c in cells)
    label_width = max(len(c[1]) for c in cells if not c[1].startswith("ERROR: "))
    for cell in cells:
        print(f"{cell[0]:<{file_width}}  {cell[1]:<{label_width}}  "
              f"{'  '.join(cell[2:])}".rstrip())


def _csv_problem(csv_path, inputs):
    """Returns why --csv cannot be written, or None; checked before predicting."""
    if os.path.isdir(csv_path):
        return "is a folder; pass a file name."
    is_input = os.path.exists(csv_path) and any(
        os.path.exists(p) and os.path.samefile(csv_path, p) for p in inputs)
    if is_input or csv_path.lower().endswith(scan.IMAGE_EXTENSIONS):
        return "looks like an input image; refusing to overwrite it."
    parent = os.path.dirname(os.path.abspath(csv_path))
    if not os.path.isdir(parent):
        return f"its folder {parent} does not exist; create it first."
    return None


def _write_csv(csv_path, rows):
    # Atomic: a crash never leaves half a CSV.
    labels = _labels_of(rows)
    with fileio.atomic_open(csv_path, newline="", errors="backslashreplace") as f:
        if labels is not None:
            writer = csv.writer(f)
            writer.writerow(["path", "labels", *(f"p_{n}" for n in labels), "error"])
            for row in rows:
                p = row.get("probabilities") or {}
                writer.writerow([row["path"], "|".join(row.get("labels") or []),
                                 *(p.get(n, "") for n in labels), row["error"] or ""])
            return
        writer = csv.DictWriter(f, ["path", "class", "probability", "error"])
        writer.writeheader()
        writer.writerows(rows)


if __name__ == "__main__":
    app.run(main, flags_parser=cli.parse_flags)
