"""Scan an image folder (or a CSV's rows): every file training would skip, and why.

Checks every candidate image of a one-subfolder-per-class folder with the
same checks training uses, and reports per-class counts, image sizes, every
bad file with its reason, byte-identical files across classes (label noise),
across --data_dir and --other_dirs (train/validation leakage) and within a
class, and class imbalance. With --csv instead of --data_dir, the files are the rows of a
labels CSV (as --train_csv reads them) and the report also counts and lists
every unusable row (missing file, duplicate, conflicting label, path leaving
--image_dir, ...). Nothing in the scanned folders is modified.

Example:
  python scripts/scan_data.py --data_dir=training_set --other_dirs=test_set \
      --json_out=scan.json
  python scripts/scan_data.py --csv=labels.csv --image_dir=train

Exit status: 0 when the scan ran (even if it found bad files), 2 on usage
errors (missing folder, bad flag value) with a one-line message.
"""

import json
import os

from absl import app
from absl import flags

from catdog import cli
from catdog import fileio
from catdog import scan

EXIT_OK = 0
EXIT_USAGE = 2

flags.DEFINE_string(
    "data_dir", None,
    "Folder with one subfolder of images per class (e.g. training_set/ with "
    "cats/ and dogs/). Nested subfolders count for their top-level class.")
flags.DEFINE_string(
    "csv", None,
    "Instead of --data_dir: a CSV with a file name (or an id whose one image "
    "file has that stem) and a label per row, read as --train_csv is.")
flags.DEFINE_string(
    "image_dir", None,
    "With --csv: the folder its file names are relative to (default: the "
    "CSV's folder); paths leaving it are never read.")
flags.DEFINE_string("filename_column", "",
                    "With --csv: its file name column (default: the first).")
flags.DEFINE_string("label_column", "",
                    "With --csv: its label column (default: the second).")
flags.DEFINE_list(
    "other_dirs", [],
    "Comma-separated folders (e.g. the validation or test set) searched for "
    "files byte-identical to files of --data_dir (leakage).")
flags.DEFINE_list(
    "class_names", None,
    "Class subfolder names in label order (default: all subfolders, "
    "alphanumeric order).")
flags.DEFINE_integer(
    "max_pixels", scan.DEFAULT_MAX_PIXELS,
    "Images whose header declares more pixels (width*height) are reported as "
    "bad without being decoded (decompression-bomb guard).")
flags.DEFINE_string(
    "json_out", None,
    "Also write the full report as JSON to this file (outside --data_dir).")
flags.DEFINE_string(
    "cache_dir", None,
    "Folder of the scan cache (default: $CATDOG_CACHE_DIR or "
    "~/.cache/catdog/scan). Never inside --data_dir.")
flags.DEFINE_boolean(
    "use_cache", True,
    "Reuse and store check results keyed by path, size and mtime, so a rescan "
    "or the next training stage only checks new or changed files.")
flags.DEFINE_boolean(
    "follow_links", False,
    "Descend into symlinked folders below the class folders.")

FLAGS = flags.FLAGS


def main(argv):
    cli.escape_undecodable_names()  # file names need not be valid UTF-8
    refused = cli.refuse_positional(argv)
    if refused is not None:
        return refused
    if FLAGS.csv and FLAGS.data_dir:
        return cli.usage_error("Give --csv (labels from a CSV) or --data_dir (class "
                               "folders), not both.")
    for name in ("image_dir", "filename_column", "label_column"):
        if FLAGS[name].value and not FLAGS.csv:
            return cli.usage_error(f"--{name} goes with --csv.")
    if not (FLAGS.data_dir or FLAGS.csv):
        return cli.usage_error("--data_dir is required: the folder of class subfolders "
                               "(or --csv, a CSV of files and labels).")
    files = csv_report = None
    data_dir = FLAGS.data_dir
    try:
        if FLAGS.csv:
            from catdog.sources import csv_labels
            paths, labels, names, rows = csv_labels.csv_examples(
                FLAGS.csv, FLAGS.class_names, image_dir=FLAGS.image_dir or "",
                filename_column=FLAGS.filename_column, label_column=FLAGS.label_column,
                flag="csv", check_classes=True)
            files, csv_report, data_dir = (paths, labels, names), rows.report(), rows.image_dir
    except ValueError as e:
        return cli.usage_error(str(e))
    if FLAGS.json_out and fileio.is_within(FLAGS.json_out, data_dir):
        return cli.usage_error(
            f"--json_out={FLAGS.json_out} is inside the scanned folder {data_dir}; "
            "write the report elsewhere (catdog never writes into the data folder).")
    try:
        report = scan.scan_directory(
            data_dir, class_names=FLAGS.class_names,
            max_pixels=FLAGS.max_pixels, other_dirs=FLAGS.other_dirs,
            progress=True, cache_dir=FLAGS.cache_dir, use_cache=FLAGS.use_cache,
            follow_links=FLAGS.follow_links, files=files, csv_report=csv_report)
    except scan.ScanInputError as e:
        return cli.usage_error(str(e))
    print(report.format_text())
    if FLAGS.json_out:
        try:
            os.makedirs(os.path.dirname(os.path.abspath(FLAGS.json_out)), exist_ok=True)
            with open(FLAGS.json_out, "w", encoding="utf-8",
                      errors="backslashreplace") as f:
                json.dump(report.to_dict(), f, indent=2, ensure_ascii=False)
                f.write("\n")
        except OSError as e:
            return cli.usage_error(f"cannot write --json_out={FLAGS.json_out}: {e}")
        print(f"JSON report: {FLAGS.json_out}")
    return EXIT_OK


if __name__ == "__main__":
    app.run(main, flags_parser=cli.parse_flags)
