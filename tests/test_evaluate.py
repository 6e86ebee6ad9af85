"""Evaluation: exact metrics, the per-file CSV, skipped files, outputs, errors.

The end-to-end tests use a hand-made model whose output is known in closed
form: global average pooling, then ``P(dogs) = sigmoid(A * (mean G - mean R))``.
On single-colour PNGs (lossless, unchanged by resizing) every probability,
and so every metric and the CSV order, is computed here by hand.
"""

import csv
import json
import os
import re
import shutil
import subprocess
import sys

import keras
import numpy as np
import pytest
from PIL import Image

from helpers import REPO, write_image
from catdog import evaluate as ev

A = 0.05  # logit per grey level of (mean G - mean R)

# (file, true class, R, G): logit A*(G-R); cats is label 0, dogs label 1.
FILES = [
    ("cats/c_sure.png", "cats", 200, 50),      # -7.5  correct
    ("cats/c_fair.png", "cats", 150, 100),     # -2.5  correct
    ("cats/c_wrong.png", "cats", 100, 140),    # +2.0  mistake, P(dogs)=0.881
    ("cats/c_worst.png", "cats", 60, 200),     # +7.0  mistake, P(dogs)=0.999
    ("dogs/d_sure.png", "dogs", 40, 200),      # +8.0  correct
    ("dogs/d_close.png", "dogs", 110, 120),    # +0.5  correct at 0.5 (P=0.622)
    ("dogs/d_wrong.png", "dogs", 130, 100),    # -1.5  mistake, P(cats)=0.818
]


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def _expected_p(r, g):
    return _sigmoid(A * (g - r))


def _linear_model(num_classes, size=32):
    """GAP -> Dense with fixed weights; binary: P(dogs)=sigmoid(A*(G-R))."""
    inputs = keras.Input((size, size, 3), name="image")
    x = keras.layers.GlobalAveragePooling2D()(inputs)
    if num_classes == 2:
        out = keras.layers.Dense(1, activation="sigmoid", name="predictions")(x)
        kernel = np.array([[-A], [A], [0.0]], np.float32)
        bias = np.zeros(1, np.float32)
    else:
        out = keras.layers.Dense(num_classes, activation="softmax", name="predictions")(x)
        kernel = np.eye(3, num_classes, dtype=np.float32) * A
        bias = np.zeros(num_classes, np.float32)
    model = keras.Model(inputs, out)
    model.get_layer("predictions").set_weights([kernel, bias])
    return model


def _model_dir(path, class_names, size=32):
    os.makedirs(path, exist_ok=True)
    _linear_model(len(class_names), size).save(os.path.join(path, "model.keras"))
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump({"class_names": list(class_names),
                   "data": {"image_size": [size, size]}}, f)
    return str(path)


def _solid(path, r, g, b=0, size=20):
    pixels = np.zeros((size, size, 3), np.uint8)
    pixels[...] = (r, g, b)
    return write_image(str(path), pixels)


@pytest.fixture
def binary_case(tmp_path):
    test_dir = tmp_path / "test"
    for name, _, r, g in FILES:
        _solid(test_dir / name, r, g)
    bad = test_dir / "dogs" / "truncated.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    return _model_dir(tmp_path / "model", ["cats", "dogs"]), str(test_dir), str(bad)


# ---------------------------------------------------------------------------
# Metrics against hand-computed numbers.
# ---------------------------------------------------------------------------

def test_binary_metrics_hand_computed():
    y = [1, 1, 0, 0, 1, 0]
    p = np.array([0.9, 0.4, 0.35, 0.8, 0.7, 0.1])
    m = ev.compute_metrics(y, np.stack([1 - p, p], 1), ["cats", "dogs"], 0.5)
    # Predicted [1,0,0,1,1,0]: TP=2 FN=1 FP=1 TN=2.
    assert m["confusion_matrix"]["matrix"] == [[2, 1], [1, 2]]
    assert m["accuracy"] == pytest.approx(4 / 6)
    assert m["precision"] == pytest.approx(2 / 3)
    assert m["recall"] == pytest.approx(2 / 3)
    assert m["f1"] == pytest.approx(2 / 3)
    assert m["positive_class"] == "dogs"
    # 7 of the 9 (positive, negative) pairs are ordered right.
    assert m["roc_auc"] == pytest.approx(7 / 9)
    assert m["per_class"]["cats"]["roc_auc"] == pytest.approx(7 / 9)
    assert m["per_class"]["dogs"]["support"] == 3


def test_threshold_moves_predictions_not_auc():
    y = [1, 1, 0, 0, 1, 0]
    p = np.array([0.9, 0.4, 0.35, 0.8, 0.7, 0.1])
    probs = np.stack([1 - p, p], 1)
    low = ev.compute_metrics(y, probs, ["a", "b"], threshold=0.3)
    high = ev.compute_metrics(y, probs, ["a", "b"], threshold=0.85)
    assert low["recall"] == 1.0 and low["precision"] == pytest.approx(3 / 5)
    assert high["recall"] == pytest.approx(1 / 3) and high["precision"] == 1.0
    assert low["roc_auc"] == high["roc_auc"]
    # A tie at the threshold predicts the first class, as argmax does.
    tie = ev.predicted_labels(np.array([[0.5, 0.5]]), 0.5)
    assert tie.tolist() == [0]


def test_roc_auc_ties_and_undefined():
    # Positive 0.5 ties negative 0.5 (counts 1/2): (0.5 + 1 + 2) / 4.
    assert ev.roc_auc([0, 1, 0, 1], [0.5, 0.5, 0.2, 0.8]) == pytest.approx(0.875)
    assert ev.roc_auc([0, 1, 0, 1], [0.3] * 4) == pytest.approx(0.5)
    assert ev.roc_auc([1, 1, 0], [0.1, 0.2, 0.9]) == 0.0
    assert ev.roc_auc([1, 1, 1], [0.1, 0.2, 0.9]) is None


def test_roc_auc_equals_pair_count_with_many_ties():
    rng = np.random.RandomState(0)
    y = rng.randint(0, 2, 300)
    s = rng.randint(0, 7, 300) / 6.0  # 7 distinct scores: ties everywhere
    pos, neg = s[y == 1], s[y == 0]
    pairs = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    assert ev.roc_auc(y, s) == pytest.approx(pairs / (pos.size * neg.size), abs=1e-12)


def test_multiclass_metrics_hand_computed():
    probs = np.array([[0.8, 0.1, 0.1],   # true 0 -> 0
                      [0.2, 0.3, 0.5],   # true 1 -> 2
                      [0.1, 0.1, 0.8],   # true 2 -> 2
                      [0.3, 0.4, 0.3]])  # true 2 -> 1
    m = ev.compute_metrics([0, 1, 2, 2], probs, ["a", "b", "c"])
    assert m["confusion_matrix"]["matrix"] == [[1, 0, 0], [0, 0, 1], [0, 1, 1]]
    assert m["accuracy"] == 0.5
    pc = m["per_class"]
    assert (pc["a"]["precision"], pc["a"]["recall"], pc["a"]["f1"]) == (1.0, 1.0, 1.0)
    assert (pc["b"]["precision"], pc["b"]["recall"], pc["b"]["f1"]) == (0.0, 0.0, 0.0)
    assert (pc["c"]["precision"], pc["c"]["recall"]) == (0.5, 0.5)
    assert m["macro_precision"] == pytest.approx(0.5)
    assert m["macro_recall"] == pytest.approx(0.5)
    assert m["macro_f1"] == pytest.approx(0.5)
    # One-vs-rest AUC of "a": positive 0.8 beats negatives 0.2, 0.1, 0.3.
    assert pc["a"]["roc_auc"] == 1.0
    # "b": positive 0.3 vs negatives 0.1, 0.1, 0.4 -> 2/3.
    assert pc["b"]["roc_auc"] == pytest.approx(2 / 3)
    assert "precision" not in m and "roc_auc" not in m  # binary-only keys


def test_top_k_accuracy_hand_computed():
    probs = np.array([[0.8, 0.1, 0.05, 0.05],   # true 0: top-1
                      [0.5, 0.3, 0.1, 0.1],     # true 1: second
                      [0.5, 0.3, 0.15, 0.05],   # true 2: third
                      [0.1, 0.2, 0.3, 0.4]])    # true 0: last
    m = ev.compute_metrics([0, 1, 2, 0], probs, ["a", "b", "c", "d"], top_k=2)
    assert (m["top_k"], m["top_k_accuracy"], m["accuracy"]) == (2, 0.5, 0.25)
    report = ev.format_report(
        {"metrics": m, "class_names": ["a", "b", "c", "d"], "model_dir": "m",
         "test_data": "t", "num_examples": 4, "skipped_files": [], "threshold": None})
    assert re.search(r"\| top-2 accuracy +\| 0\.5000 +\|", report)
    assert "top_k" not in ev.compute_metrics([0, 1, 2, 0], probs, ["a", "b", "c", "d"])


def test_evaluate_reports_top_k_with_more_classes(tmp_path):
    model_dir = _model_dir(tmp_path / "m3", ["red", "green", "blue"])
    test_dir = tmp_path / "t3"
    _solid(test_dir / "red" / "r1.png", 200, 20, 20)
    _solid(test_dir / "green" / "g1.png", 20, 200, 20)
    _solid(test_dir / "blue" / "b2_looks_red.png", 150, 20, 100)  # blue second
    m = ev.evaluate(model_dir, str(test_dir), out_dir=str(tmp_path / "o"), top_k=2)["metrics"]
    assert m["top_k"] == 2 and m["accuracy"] == pytest.approx(2 / 3)
    assert m["top_k_accuracy"] == 1.0
    # Unset: the run's --top_k, else 5 with more than 5 classes (here 3: off).
    assert "top_k" not in ev.evaluate(model_dir, str(test_dir),
                                      out_dir=str(tmp_path / "o2"))["metrics"]
    with pytest.raises(ValueError, match="--top_k"):
        ev.evaluate(model_dir, str(test_dir), out_dir=str(tmp_path / "o3"), top_k=3)


def test_metric_input_errors():
    with pytest.raises(ValueError, match="shape"):
        ev.compute_metrics([0, 1], np.zeros((2, 3)), ["a", "b"])
    with pytest.raises(ValueError, match="labels"):
        ev.compute_metrics([0, 2], np.full((2, 2), 0.5), ["a", "b"])


def test_prediction_rows_order_and_probability_definition():
    p = np.array([0.9, 0.4, 0.35, 0.8, 0.7, 0.1])
    rows = ev.prediction_rows(list("abcdef"), [1, 1, 0, 0, 1, 0],
                              np.stack([1 - p, p], 1), ["cats", "dogs"])
    # Mistakes d (says dogs at 0.8) and b (says cats at 0.6), most confident
    # first; then correct ones from least confident: c .65, e .7, a .9, f .9.
    assert [r["path"] for r in rows] == list("dbceaf")
    assert [r["correct"] for r in rows] == [False, False, True, True, True, True]
    assert rows[1]["probability"] == pytest.approx(0.4)  # P(dogs), not P(cats)
    assert rows[1]["predicted"] == "cats" and rows[1]["label"] == "dogs"


# ---------------------------------------------------------------------------
# evaluate() end to end.
# ---------------------------------------------------------------------------

def test_evaluate_folder_end_to_end(binary_case, tmp_path):
    model_dir, test_dir, bad = binary_case
    out = tmp_path / "out"
    result = ev.evaluate(model_dir, test_dir, out_dir=str(out), batch_size=3)

    expected = {os.path.join(test_dir, name): _expected_p(r, g)
                for name, _, r, g in FILES}
    with open(out / "predictions.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["path", "label", "probability", "predicted", "correct"]
    assert {r["path"] for r in rows} == set(expected)  # the bad file is not a row
    for r in rows:
        assert float(r["probability"]) == pytest.approx(expected[r["path"]], abs=1e-5)
    order = [os.path.relpath(r["path"], test_dir) for r in rows]
    assert order == ["cats/c_worst.png", "cats/c_wrong.png", "dogs/d_wrong.png",
                     "dogs/d_close.png", "cats/c_fair.png", "cats/c_sure.png",
                     "dogs/d_sure.png"]
    assert [r["correct"] for r in rows] == ["false"] * 3 + ["true"] * 4

    # 4 cats (2 right), 3 dogs (2 right): TP=2 FP=2 FN=1 TN=2.
    m = result["metrics"]
    assert m["confusion_matrix"]["matrix"] == [[2, 2], [1, 2]]
    assert m["accuracy"] == pytest.approx(4 / 7)
    assert m["precision"] == pytest.approx(0.5)
    assert m["recall"] == pytest.approx(2 / 3)
    assert m["f1"] == pytest.approx(4 / 7)
    # Dogs score {8, .5, -1.5}, cats {-7.5, -2.5, 2, 7}: 8 of 12 pairs right.
    assert m["roc_auc"] == pytest.approx(8 / 12)

    saved = json.loads((out / "evaluation.json").read_text())
    assert saved["metrics"]["accuracy"] == pytest.approx(m["accuracy"])
    assert saved["metrics"]["confusion_matrix"] == m["confusion_matrix"]
    assert saved["threshold"] == 0.5
    assert saved["counts"] == {"cats": 4, "dogs": 3}
    assert saved["num_examples"] == 7 and saved["num_mistakes"] == 3
    assert [s["path"] for s in saved["skipped_files"]] == [bad]
    assert saved["skipped_files"][0]["reason"]

    report = (out / "evaluation.md").read_text()
    assert "0.5714" in report and "truncated.jpg" in report
    assert "| cats" in report and "ROC AUC" in report

    for name, min_w, min_h in (("confusion_matrix.png", 300, 300),
                               ("worst_mistakes.png", 300, 200)):
        with Image.open(out / name) as im:
            assert im.size[0] >= min_w and im.size[1] >= min_h, (name, im.size)


def test_evaluate_threshold_changes_the_answer(binary_case, tmp_path):
    model_dir, test_dir, _ = binary_case
    result = ev.evaluate(model_dir, test_dir, threshold=0.7, out_dir=str(tmp_path / "o"))
    # d_close (P(dogs)=0.622) becomes a "cats" mistake; c_wrong (0.881) stays wrong.
    m = result["metrics"]
    assert m["confusion_matrix"]["matrix"] == [[2, 2], [2, 1]]
    assert result["threshold"] == 0.7
    rows = ev.read_predictions_csv(str(tmp_path / "o" / "predictions.csv"))
    close = [r for r in rows if r["path"].endswith("d_close.png")][0]
    assert close["predicted"] == "cats" and not close["correct"]


def test_evaluate_default_out_dir(binary_case):
    model_dir, test_dir, _ = binary_case
    result = ev.evaluate(model_dir, test_dir)
    assert result["out_dir"] == os.path.join(model_dir, "evaluation")
    assert os.path.isfile(os.path.join(model_dir, "evaluation", "evaluation.json"))


def test_class_mismatch_names_both(binary_case, tmp_path):
    model_dir, _, _ = binary_case
    other = tmp_path / "other"
    _solid(other / "cats" / "x.png", 1, 2)
    _solid(other / "horses" / "y.png", 1, 2)
    with pytest.raises(ValueError) as err:
        ev.evaluate(model_dir, str(other))
    assert "horses" in str(err.value) and "['cats', 'dogs']" in str(err.value)
    # An extra class folder would silently be left out: also an error.
    _solid(other / "dogs" / "z.png", 1, 2)
    with pytest.raises(ValueError, match="horses"):
        ev.evaluate(model_dir, str(other))


@pytest.mark.parametrize("kwargs,needle", [
    (dict(threshold=1.0), "--threshold"),
    (dict(threshold=0.0), "--threshold"),
    (dict(batch_size=0), "--batch_size"),
    (dict(test_dir=None), "--test_dir"),
])
def test_argument_errors(binary_case, kwargs, needle):
    model_dir, test_dir, _ = binary_case
    kwargs = {"test_dir": test_dir, **kwargs}
    with pytest.raises(ValueError, match=needle):
        ev.evaluate(model_dir, **kwargs)


def test_missing_model_dir_and_test_dir(binary_case, tmp_path):
    model_dir, test_dir, _ = binary_case
    with pytest.raises(FileNotFoundError, match="nowhere"):
        ev.evaluate(str(tmp_path / "nowhere"), test_dir)
    with pytest.raises(FileNotFoundError, match="--test_dir"):
        ev.evaluate(model_dir, str(tmp_path / "no_test"))


def test_evaluate_multiclass(tmp_path):
    names = ["blue", "green", "red"]  # model: softmax(A * [R, G, B]) -> red, green, blue
    model_dir = _model_dir(tmp_path / "m3", ["red", "green", "blue"])
    test_dir = tmp_path / "t3"
    _solid(test_dir / "red" / "r1.png", 200, 20, 20)
    _solid(test_dir / "green" / "g1.png", 20, 200, 20)
    _solid(test_dir / "blue" / "b1.png", 20, 20, 200)
    _solid(test_dir / "blue" / "b2_looks_red.png", 150, 20, 100)
    result = ev.evaluate(model_dir, str(test_dir), out_dir=str(tmp_path / "o3"))
    m = result["metrics"]
    assert sorted(result["class_names"]) == names
    assert m["accuracy"] == pytest.approx(0.75)
    assert m["per_class"]["blue"]["recall"] == pytest.approx(0.5)
    assert m["per_class"]["red"]["precision"] == pytest.approx(0.5)
    assert result["threshold"] is None
    rows = ev.read_predictions_csv(str(tmp_path / "o3" / "predictions.csv"))
    assert rows[0]["path"].endswith("b2_looks_red.png")
    logits = A * np.array([150, 20, 100])
    p_red = np.exp(logits[0]) / np.exp(logits).sum()
    assert rows[0]["probability"] == pytest.approx(p_red, abs=1e-5)  # P(predicted)
    with pytest.raises(ValueError, match="binary models only"):
        ev.evaluate(model_dir, str(test_dir), threshold=0.7)


def test_evaluate_tfds_split_with_mock_data(tmp_path):
    tfds = pytest.importorskip("tensorflow_datasets")
    model_dir = _model_dir(tmp_path / "m", ["cat", "dog"])
    with tfds.testing.mock_data(num_examples=10):
        result = ev.evaluate(model_dir, tfds_name="cats_vs_dogs", tfds_split="train",
                             out_dir=str(tmp_path / "o"))
    assert result["num_examples"] == 10
    assert sum(result["counts"].values()) == 10
    assert result["test_data"] == "tfds:cats_vs_dogs/train"
    rows = ev.read_predictions_csv(str(tmp_path / "o" / "predictions.csv"))
    assert len(rows) == 10 and rows[0]["path"].startswith("tfds:cats_vs_dogs/train#")
    assert os.path.isfile(tmp_path / "o" / "worst_mistakes.png")


# ---------------------------------------------------------------------------
# The script.
# ---------------------------------------------------------------------------

def _script(*args):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=REPO)
    return subprocess.run([sys.executable, os.path.join(REPO, "scripts", "evaluate.py"),
                           *args], capture_output=True, text=True, timeout=300, env=env)


def test_script_writes_results_and_prints_the_table(binary_case):
    model_dir, test_dir, _ = binary_case
    proc = _script(f"--model_dir={model_dir}", f"--test_dir={test_dir}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "| accuracy" in proc.stdout and "0.5714" in proc.stdout
    assert os.path.isfile(os.path.join(model_dir, "evaluation", "predictions.csv"))


def test_script_usage_errors_exit_2(binary_case, tmp_path):
    model_dir, test_dir, _ = binary_case
    proc = _script(f"--model_dir={model_dir}", f"--test_dir={test_dir}", "--threshold=1.5")
    assert proc.returncode == 2
    assert "--threshold" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.parametrize("exif_orientation", [True, False])
def test_evaluation_decodes_as_the_model_dir_says(tmp_path, exif_orientation):
    """Photos of all eight EXIF orientations, all truly upright: a model dir
    recorded with exif_orientation sees them upright; one recorded without it
    sees them as stored (as it was trained)."""
    import helpers  # pylint: disable=import-outside-toplevel
    upright = helpers.upright_pixels()
    for k in range(1, 9):
        helpers.write_oriented_jpeg(tmp_path / "test" / "upright" / f"o{k}.jpg", k, upright)
    write_image(str(tmp_path / "test" / "turned" / "half_turn.png"),
                np.ascontiguousarray(upright[::-1, ::-1]))
    run = helpers.write_upright_run(tmp_path / "run", upright, exif_orientation)
    result = ev.evaluate(run, str(tmp_path / "test"), out_dir=str(tmp_path / "out"))
    assert result["num_examples"] == 9
    assert result["num_mistakes"] == (0 if exif_orientation else 7)


def test_evaluate_writes_every_output_for_a_file_name_that_is_not_utf8(binary_case, tmp_path):
    model_dir, test_dir, _ = binary_case
    odd = os.path.join(os.fsencode(test_dir), b"cats", b"odd\xff.png")
    shutil.copy(os.path.join(test_dir, FILES[0][0]), os.fsdecode(odd))
    out = tmp_path / "out"
    ev.evaluate(model_dir, test_dir, out_dir=str(out), batch_size=3)
    text = (out / "predictions.csv").read_text(encoding="utf-8")
    assert "odd\\udcff.png" in text  # the undecodable byte, escaped
    assert len(text.splitlines()) == len(FILES) + 2


def _with_split(model_dir, train, val, source="folder"):
    """Gives the hand-made run the split.json training writes."""
    with open(os.path.join(model_dir, "split.json"), "w") as f:
        json.dump({"format": 1, "source": source, "class_names": ["cats", "dogs"],
                   "train": train, "val": val,
                   "train_labels": [0] * len(train), "val_labels": [0] * len(val)}, f)


def test_test_images_the_run_trained_or_validated_on_are_flagged(binary_case, tmp_path):
    """Test figures over the run's own training images are not test figures:
    the same files, or copies of them, are counted, warned about and
    written into evaluation.json and evaluation.md."""
    model_dir, test_dir, _ = binary_case
    sure, fair, close = (os.path.join(test_dir, n) for n in
                         ("cats/c_sure.png", "cats/c_fair.png", "dogs/d_close.png"))
    elsewhere = tmp_path / "train_copy" / "cats"
    elsewhere.mkdir(parents=True)
    copy = shutil.copyfile(fair, elsewhere / "fair_again.png")
    other = _solid(elsewhere / "unrelated.png", 1, 2, 3)
    _with_split(model_dir, train=[sure, str(copy), other], val=[close])
    out = tmp_path / "out"
    result = ev.evaluate(model_dir, test_dir, out_dir=str(out))
    seen = result["seen_by_the_run"]
    assert seen["training_images"] == 2 and seen["validation_images"] == 1
    assert sorted(seen["images"]["train"]) == sorted([sure, fair])
    assert seen["images"]["val"] == [close]
    saved = json.loads((out / "evaluation.json").read_text())
    assert saved["seen_by_the_run"]["training_images"] == 2
    report = (out / "evaluation.md").read_text()
    assert "2 of the 7 test images are training images of this run" in report
    assert "1 is a validation image" in report


def test_a_test_set_apart_from_the_run_reports_nothing_seen(binary_case, tmp_path):
    model_dir, test_dir, _ = binary_case
    other = _solid(tmp_path / "train" / "cats" / "x.png", 1, 2, 3)
    _with_split(model_dir, train=[other], val=[])
    result = ev.evaluate(model_dir, test_dir, out_dir=str(tmp_path / "out"))
    assert result["seen_by_the_run"] == {"training_images": 0, "validation_images": 0,
                                         "images": {"train": [], "val": []}}
    assert "training images of this run" not in (tmp_path / "out" / "evaluation.md").read_text()


def test_a_run_without_a_file_split_cannot_be_compared(binary_case, tmp_path):
    model_dir, test_dir, _ = binary_case  # no split.json (e.g. an older run)
    result = ev.evaluate(model_dir, test_dir, out_dir=str(tmp_path / "out"))
    assert result["seen_by_the_run"] is None


def test_a_test_folder_whose_class_names_are_in_another_unicode_form_is_evaluated(tmp_path):
    import unicodedata
    nfd = [unicodedata.normalize("NFD", n) for n in ("café", "thé")]
    model_dir = _model_dir(tmp_path / "model", nfd)  # trained on macOS folders
    test_dir = tmp_path / "test"
    _solid(test_dir / "café" / "a.png", 200, 50)
    _solid(test_dir / "thé" / "b.png", 40, 200)
    result = ev.evaluate(model_dir, str(test_dir), out_dir=str(tmp_path / "out"))
    assert result["num_examples"] == 2 and result["metrics"]["accuracy"] == 1.0
