r"""Evaluates a trained catdog model on a test folder, a CSV or a TFDS split.

Examples:
  python scripts/evaluate.py --model_dir=runs/baseline --test_dir=test_set
  python scripts/evaluate.py --model_dir=runs/baseline --test_csv=test_labels.csv \
      --image_dir=test_images

Writes into --out_dir (default <model_dir>/evaluation): evaluation.json,
evaluation.md (the table printed here), predictions.csv (most confident
mistakes first), confusion_matrix.png and worst_mistakes.png. Unreadable
test images are skipped and listed, never deleted.

Exit status: 0 done, 1 unexpected failure, 2 usage error (bad flags, model
dir or test folder; nothing evaluated).
"""

import sys

from absl import app
from absl import flags

from catdog import cli

_MODEL_DIR = flags.DEFINE_string(
    "model_dir", None,
    "Folder of a finished training run (model.keras + config.json); the class "
    "names and image size come from its config.json.")
_TEST_DIR = flags.DEFINE_string(
    "test_dir", None,
    "Test folder with one subfolder per class, named as the model's classes "
    "(e.g. test_set/ with cats/ and dogs/).")
_TEST_CSV = flags.DEFINE_string(
    "test_csv", None,
    "Instead of --test_dir: a CSV with a file name (or an id whose one image "
    "file has that stem) and a label per row; rows of other classes than the "
    "model's and every unusable row are counted and listed.")
_IMAGE_DIR = flags.DEFINE_string(
    "image_dir", None,
    "With --test_csv: the folder its file names are relative to (default: the "
    "CSV's folder); paths leaving it are never read.")
_FILENAME_COLUMN = flags.DEFINE_string(
    "filename_column", "", "With --test_csv: its file name column (default: the first).")
_LABEL_COLUMN = flags.DEFINE_string(
    "label_column", "", "With --test_csv: its label column (default: the second).")
_TFDS_NAME = flags.DEFINE_string(
    "tfds_name", None,
    "Instead of --test_dir: a TFDS image classification dataset already in "
    "--tfds_data_dir (e.g. cats_vs_dogs); nothing is downloaded.")
_TFDS_SPLIT = flags.DEFINE_string(
    "tfds_split", None, "TFDS split with --tfds_name, e.g. 'test' or 'train[80%:]'.")
_TFDS_DATA_DIR = flags.DEFINE_string(
    "tfds_data_dir", None, "TFDS data folder (default: TFDS' own default).")
_THRESHOLD = flags.DEFINE_float(
    "threshold", 0.5,
    "Binary models: predict the second class (class_names[1]) when its "
    "probability is above this; multi-label models (--label_separator): "
    "predict each label whose probability is above this; 0 < threshold < 1.")
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 32, "Images per model call.")
_OUT_DIR = flags.DEFINE_string(
    "out_dir", None, "Folder for the results (default: <model_dir>/evaluation).")
_TOP_K = flags.DEFINE_integer(
    "top_k", None, "More than two classes: also report top-k accuracy at this k "
    "(0: off; default: the run's --top_k, unset there: 5 with more than 5 classes).")


def _evaluate():
    from catdog import evaluate  # TensorFlow loads only after the flags are fine
    from catdog import evaluate_sets
    from catdog import rundir

    if not _MODEL_DIR.value:
        raise ValueError("`--model_dir` is required: the folder of a finished "
                         "training run.")
    try:
        config = rundir.read_config(_MODEL_DIR.value)
    except (OSError, ValueError):
        config = {}  # evaluate() says what is wrong with the model_dir
    if isinstance(config, dict) and evaluate_sets.is_multi_label(config):
        if _TEST_DIR.value or _TFDS_NAME.value or _TOP_K.value:
            raise ValueError("`--test_dir`, `--tfds_name` and `--top_k` do not apply to a "
                             "multi-label model (--label_separator): pass --test_csv.")
        result = evaluate_sets.evaluate_label_sets(
            _MODEL_DIR.value, _TEST_CSV.value, image_dir=_IMAGE_DIR.value or "",
            filename_column=_FILENAME_COLUMN.value, label_column=_LABEL_COLUMN.value,
            threshold=_THRESHOLD.value, batch_size=_BATCH_SIZE.value, out_dir=_OUT_DIR.value)
        print(evaluate_sets.format_label_set_report(result))
        print(f"Results written to {result['out_dir']}")
        return
    result = evaluate.evaluate(
        _MODEL_DIR.value, _TEST_DIR.value, test_csv=_TEST_CSV.value,
        image_dir=_IMAGE_DIR.value, filename_column=_FILENAME_COLUMN.value,
        label_column=_LABEL_COLUMN.value, tfds_name=_TFDS_NAME.value,
        tfds_split=_TFDS_SPLIT.value, tfds_data_dir=_TFDS_DATA_DIR.value,
        threshold=_THRESHOLD.value, batch_size=_BATCH_SIZE.value,
        out_dir=_OUT_DIR.value, top_k=_TOP_K.value)
    print(evaluate.format_report(result))
    print(f"Results written to {result['out_dir']}")


def main(argv):
    cli.escape_undecodable_names()  # file names need not be valid UTF-8
    refused = cli.refuse_positional(argv)
    if refused is not None:
        return refused
    # Checked before TensorFlow is imported: a typo fails in a second.
    if not 0.0 < _THRESHOLD.value < 1.0:
        print("error: `--threshold` must be strictly between 0 and 1. "
              f"Received: threshold={_THRESHOLD.value!r}", file=sys.stderr)
        return cli.EXIT_USAGE
    return cli.run_main(_evaluate)


if __name__ == "__main__":
    app.run(main, flags_parser=cli.parse_flags)
