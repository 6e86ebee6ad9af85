"""Multi-label input from a CSV (``--label_separator``): sets of labels per image."""

import csv
import json
import os

import numpy as np
import pytest

from catdog import config as C
from catdog import data
from catdog import models
from catdog import splits
from catdog import train
from catdog.sources import csv_labels
from helpers import write_image

# Each image's label set; the colour channels follow the labels so a model can learn them.
SETS = ["a", "b", "c", "a|b", "b|c", "a|c", "a|b|c", "b"]


def _image(path, labels, seed):
    rng = np.random.RandomState(seed)
    pixels = rng.randint(0, 60, size=(24, 24, 3)).astype(np.uint8)
    for name in labels:
        pixels[..., "abc".index(name)] += 150
    return write_image(str(path), pixels)


def _write_csv(path, rows):
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(("file", "tags"))
        writer.writerows(rows)
    return str(path)


def _dataset(root, copies=3):
    """Images with the label sets of SETS; returns the CSV rows."""
    os.makedirs(root, exist_ok=True)
    rows = []
    for i in range(copies * len(SETS)):
        labels = SETS[i % len(SETS)].split("|")
        name = f"img_{i}.jpg"
        _image(os.path.join(root, name), labels, seed=i)
        rows.append((name, "|".join(labels)))
    return rows


def _data_config(csv_path, **kw):
    d = C.DataConfig(train_csv=str(csv_path), label_column="tags", label_separator="|",
                     image_size=(32, 32), batch_size=4, validation_split=0.25)
    for k, v in kw.items():
        setattr(d, k, v)
    return d


def test_label_sets_are_split_stripped_and_collapsed(tmp_path):
    rows = _dataset(tmp_path, copies=1)
    rows[3] = ("img_3.jpg", " b | a ||a ")  # the set {a, b}, written loosely
    rows += [("img_0.jpg", "a"),  # the same set again: a duplicate row
             ("img_4.jpg", "c|b|b"),  # the same set in another order: a duplicate row
             ("img_5.jpg", "a"),  # another set: conflicting
             ("img_6.jpg", " | |")]  # no label after splitting: an empty label
    csv_path = _write_csv(tmp_path / "labels.csv", rows)
    index = data.index_source(_data_config(csv_path))
    assert index.class_names == ["a", "b", "c"]
    labels = dict(zip(index.train.paths + index.val.paths,
                      index.train.labels + index.val.labels))
    assert labels[str(tmp_path / "img_3.jpg")] == (0, 1)
    assert labels[str(tmp_path / "img_4.jpg")] == (1, 2)
    assert labels[str(tmp_path / "img_6.jpg")] == (0, 1, 2)
    assert str(tmp_path / "img_5.jpg") not in labels
    problems = index.csv_report["train"]["problems"]
    assert {k: v["count"] for k, v in problems.items()} == {
        "duplicate_row": 2, "conflicting_label": 1, "empty_label": 1}


def test_class_names_select_labels_and_rows_without_one_are_left_out(tmp_path):
    rows = _dataset(tmp_path, copies=2)
    csv_path = _write_csv(tmp_path / "labels.csv", rows)
    index = data.index_source(_data_config(csv_path, class_names=("c", "a")))
    assert index.class_names == ["c", "a"]
    every = index.train.labels + index.val.labels
    # "b" alone has no label of the run: left out; "a|b" keeps "a" (label 1).
    assert len(every) == 2 * 6
    assert all(set(l) <= {0, 1} and l for l in every)
    assert index.csv_report["train"]["problems"]["unknown_label"]["count"] == 4


def test_targets_are_multi_hot_float32(tmp_path):
    rows = _dataset(tmp_path, copies=2)
    csv_path = _write_csv(tmp_path / "labels.csv", rows)
    d = _data_config(csv_path)
    index = data.index_source(d)
    ds = data.build_split(d, index, "val", training=False)
    labels = np.concatenate([y.numpy() for _, y in ds])
    assert labels.dtype == np.float32 and labels.shape == (len(index.val), 3)
    expected = np.zeros((len(index.val), 3), np.float32)
    for row, label in zip(expected, index.val.labels):
        row[list(label)] = 1.0
    np.testing.assert_array_equal(labels, expected)


def test_a_file_cache_holds_label_sets(tmp_path):
    rows = _dataset(tmp_path / "img", copies=2)
    csv_path = _write_csv(tmp_path / "img" / "labels.csv", rows)
    d = _data_config(csv_path, cache=str(tmp_path / "cache"))
    index = data.index_source(d)
    for _ in range(2):  # written, then read back
        ds = data.build_split(d, index, "val", training=False)
        labels = np.concatenate([y.numpy() for _, y in ds])
        assert labels.shape == (len(index.val), 3)
        assert sorted(map(tuple, labels.astype(int).tolist())) == sorted(
            tuple(int(i in l) for i in range(3)) for l in index.val.labels)


def test_a_multi_label_split_is_a_stable_partition(tmp_path):
    paths = [str(tmp_path / f"x{i}.jpg") for i in range(40)]
    labels = [tuple(sorted({i % 3, (i * 7) % 4 % 3})) for i in range(40)]
    train_split, val = splits.split_files(paths, labels, 0.25, seed=3,
                                          class_dirs=[str(tmp_path)] * 3)
    assert sorted(train_split.paths + val.paths) == sorted(paths)
    assert not set(train_split.paths) & set(val.paths)
    assert 8 <= len(val) <= 12
    # The order of the files changes nothing; the labels travel with their file.
    order = list(reversed(range(40)))
    again = splits.split_files([paths[i] for i in order], [labels[i] for i in order], 0.25,
                               seed=3, class_dirs=[str(tmp_path)] * 3)
    assert sorted(again[1].paths) == sorted(val.paths)
    assert dict(zip(val.paths, val.labels)) == dict(zip(again[1].paths, again[1].labels))


def test_the_head_has_one_sigmoid_per_label_even_with_two_labels():
    c = C.for_stage("baseline")
    c.data.image_size, c.data.label_separator = (32, 32), "|"
    model = models.build_model(c, 2)
    assert tuple(model.output_shape) == (None, 2)
    assert model.layers[-1].get_config()["activation"] == "sigmoid"
    models.compile_model(model, 2, 1e-3, multi_label=True)
    assert isinstance(model.loss, type(models.training_loss(2, multi_label=True)))
    assert models.validation_metric_names(3, multi_label=True) == [
        "val_loss", "val_accuracy", "val_precision", "val_recall", "val_auc"] + [
        f"val_label{i}_{kind}" for i in range(3) for kind in ("precision", "recall", "auc")]


def _run_config(csv_path, model_dir, stage="baseline", **train_kw):
    c = C.for_stage(stage)
    c.data = _data_config(csv_path)
    c.train.epochs, c.train.verbose = 2, 0
    c.train.model_dir = str(model_dir)
    for k, v in train_kw.items():
        setattr(c.train, k, v)
    return c


def test_per_label_training_metrics_score_each_label_alone():
    metrics = models.training_metrics(3, multi_label=True)
    assert [m.name for m in metrics][4:] == [
        f"label{i}_{kind}" for i in range(3) for kind in ("precision", "recall", "auc")]
    y_true = np.array([[1, 0, 1], [0, 1, 1], [1, 1, 0], [0, 0, 1]], np.float32)
    y_pred = np.array([[.9, .2, .4], [.3, .8, .7], [.6, .4, .2], [.1, .6, .9]], np.float32)
    for m in metrics:
        m.update_state(y_true, y_pred)
    got = {m.name: float(m.result()) for m in metrics}
    assert got["label0_precision"] == 1.0 and got["label0_recall"] == 1.0
    # Label 1: predicted for images 1 and 3, true for images 1 and 2.
    assert got["label1_precision"] == 0.5 and got["label1_recall"] == 0.5
    # Label 2: every positive scores above the one negative; label 1: 3 of
    # the 4 (positive, negative) pairs are in order.
    assert got["label2_auc"] == pytest.approx(1.0, abs=1e-3)
    assert got["label1_auc"] == pytest.approx(0.75, abs=1e-2)
    # Many labels: the aggregates only (per-label figures come from evaluate.py).
    many = models.training_metrics(models.PER_LABEL_METRICS_MAX + 1, multi_label=True)
    assert [m.name for m in many] == ["accuracy", "precision", "recall", "auc"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("ml")
    rows = _dataset(root / "images", copies=3)
    csv_path = _write_csv(root / "images" / "labels.csv", rows)
    test_rows = _dataset(root / "test", copies=1)
    test_csv = _write_csv(root / "test" / "labels.csv", test_rows)
    result = train.run(_run_config(csv_path, root / "run"))
    return root, result, csv_path, test_csv


def test_a_stage_trains_on_label_sets_and_records_them(trained):
    root, result, _, _ = trained
    run = root / "run"
    assert result.model.output_shape == (None, 3)
    history = (run / "history.csv").read_text().splitlines()[0].split(",")
    for name in ("val_accuracy", "val_precision", "val_recall", "val_auc"):
        assert name in history
    for i in range(3):  # every label on its own, in class_names order
        for kind in ("precision", "recall", "auc"):
            assert f"val_label{i}_{kind}" in history and f"label{i}_{kind}" in history
    config = json.loads((run / "config.json").read_text())
    assert config["data"]["label_separator"] == "|"
    assert config["multi_label"] is True
    split = json.loads((run / "split.json").read_text())
    assert all(isinstance(l, list) for l in split["train_labels"] + split["val_labels"])
    # The split of split.json reads back as the run's index (resume, fine-tuning).
    index = data.index_from_split(_data_config(str(root / "images" / "labels.csv")),
                                  split, "the run")
    assert sorted(index.val.labels) == sorted(tuple(l) for l in split["val_labels"])
    assert result.metrics["multi_label"] is True


def test_evaluate_gives_per_label_figures(trained, tmp_path):
    from catdog import evaluate, evaluate_sets
    root, _, _, test_csv = trained
    with pytest.raises(ValueError, match="multi-label.*evaluate_label_sets"):
        evaluate.evaluate(str(root / "run"), test_csv=test_csv, label_column="tags")
    result = evaluate_sets.evaluate_label_sets(
        str(root / "run"), test_csv=test_csv, label_column="tags", threshold=0.4,
        out_dir=str(tmp_path / "ev"))
    per_label = result["metrics"]["per_label"]
    assert set(per_label) == {"a", "b", "c"}
    for figures in per_label.values():
        assert set(figures) >= {"precision", "recall", "f1", "roc_auc", "support"}
    assert per_label["b"]["support"] == 5  # b is in 5 of the 8 sets
    assert result["threshold"] == 0.4 and result["multi_label"] is True
    saved = json.loads((tmp_path / "ev" / "evaluation.json").read_text())
    assert saved["metrics"]["per_label"] == json.loads(json.dumps(per_label))
    assert "| a " in (tmp_path / "ev" / "evaluation.md").read_text()
    # The figures are those of the probabilities at the threshold.
    rows = list(csv.DictReader(open(tmp_path / "ev" / "predictions.csv")))
    assert len(rows) == 8
    truth = np.array([[n in r["label"].split("|") for n in "abc"] for r in rows])
    predicted = np.array([[float(r[f"p_{n}"]) > 0.4 for n in "abc"] for r in rows])
    tp = int((truth[:, 1] & predicted[:, 1]).sum())
    assert per_label["b"]["recall"] == pytest.approx(tp / 5)


def test_evaluating_on_the_training_csv_says_the_run_has_seen_every_image(trained, tmp_path):
    from catdog import evaluate_sets
    root, _, csv_path, _ = trained
    result = evaluate_sets.evaluate_label_sets(
        str(root / "run"), test_csv=csv_path, label_column="tags",
        out_dir=str(tmp_path / "ev"))
    seen = result["seen_by_the_run"]
    split = json.loads((root / "run" / "split.json").read_text())
    assert seen["training_images"] == len(split["train"]) > 0
    assert seen["validation_images"] == len(split["val"]) > 0
    assert seen["training_images"] + seen["validation_images"] == result["num_examples"]
    assert "training images of this run" in (tmp_path / "ev" / "evaluation.md").read_text()


def test_export_and_predict_give_a_probability_per_label(trained, tmp_path):
    from catdog import export
    from catdog import model_io
    from catdog import predict
    root, _, _, _ = trained
    images = sorted(str(p) for p in (root / "test").glob("*.jpg"))
    rows = predict.predict_files(str(root / "run"), images)
    assert all(set(r["probabilities"]) == {"a", "b", "c"} for r in rows)
    for r in rows:
        assert r["labels"] == [n for n in "abc" if r["probabilities"][n] > 0.5]
    saved = export.export_saved_model(str(root / "run"), str(tmp_path / "export"))
    loaded = model_io.load_saved_model(saved)
    pixels = np.zeros((2, 32, 32, 3), np.uint8)
    out = loaded.signatures[model_io.IMAGES_SIGNATURE](images=pixels)
    probs = out["probabilities"].numpy()
    assert probs.shape == (2, 3)
    # The export is the run's model.keras: the best epoch by --monitor, which
    # need not be the last epoch that result.model ended on.
    best, _ = model_io.load_catdog_model(str(root / "run"))
    expected = best(pixels.astype("float32"), training=False).numpy()
    np.testing.assert_allclose(probs, expected, atol=1e-5)
    assert export.read_export_metadata(saved)["multi_label"] is True
    from_saved = predict.predict_files(saved, images)
    for a, b in zip(rows, from_saved):
        assert a["labels"] == b["labels"]
        for n in "abc":
            assert a["probabilities"][n] == pytest.approx(b["probabilities"][n], abs=1e-5)


@pytest.mark.parametrize("setting,value,match", [
    ("class_weight", "balanced", "class_weight"),
    ("mixup", 0.2, "mixup"),
    ("cutmix", 0.5, "cutmix"),
    ("label_smoothing", 0.1, "label_smoothing"),
    ("top_k", 2, "top_k"),
    ("fast_features", True, "fast_features"),
])
def test_settings_that_make_no_sense_with_label_sets_are_refused(setting, value, match):
    c = C.for_stage("feature_extraction" if setting == "fast_features" else "baseline")
    c.data.train_csv, c.data.label_separator = "labels.csv", "|"
    c.train.model_dir = "run"
    setattr(c.train, setting, value)
    with pytest.raises(ValueError, match=f"--{match}.*--label_separator"):
        c.validate()


@pytest.mark.parametrize("source", [
    dict(train_dir="images"), dict(tfds_name="cats_vs_dogs"),
    dict(train_tfrecords="t-*", val_tfrecords="v-*")])
def test_label_sets_need_a_csv(source):
    c = C.for_stage("baseline")
    c.data.label_separator = "|"
    c.train.model_dir = "run"
    for k, v in source.items():
        setattr(c.data, k, v)
    with pytest.raises(ValueError, match="--label_separator.*--train_csv"):
        c.validate()


def test_a_monitor_the_run_does_not_log_is_refused(tmp_path):
    rows = _dataset(tmp_path, copies=2)
    csv_path = _write_csv(tmp_path / "labels.csv", rows)
    c = _run_config(csv_path, tmp_path / "run", monitor="val_top_k_accuracy")
    with pytest.raises(ValueError, match="val_top_k_accuracy"):
        train.run(c)
    assert not (tmp_path / "run" / "config.json").exists()


def test_the_predict_script_prints_and_writes_a_probability_per_label(trained, tmp_path):
    import subprocess
    import sys
    from helpers import REPO
    root, _, _, _ = trained
    image = str(root / "test" / "img_6.jpg")
    out_csv = tmp_path / "out.csv"
    env = dict(os.environ, PYTHONPATH=REPO, TF_CPP_MIN_LOG_LEVEL="2")
    done = subprocess.run(
        [sys.executable, os.path.join(REPO, "scripts", "predict.py"),
         f"--model_dir={root / 'run'}", f"--csv={out_csv}", "--threshold=0.3", image],
        env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    header, line = done.stdout.splitlines()[:2]
    assert header.split()[1:] == ["labels", "p(a)", "p(b)", "p(c)"]
    written = list(csv.DictReader(open(out_csv)))
    assert list(written[0]) == ["path", "labels", "p_a", "p_b", "p_c", "error"]
    above = [n for n in "abc" if float(written[0][f"p_{n}"]) > 0.3]
    assert written[0]["labels"] == "|".join(above)
    assert line.split()[1] == (",".join(above) or "-")


@pytest.mark.slow
def test_fine_tuning_from_a_multi_label_stage_keeps_label_sets(tmp_path):
    rows = _dataset(tmp_path / "images", copies=2)
    csv_path = _write_csv(tmp_path / "images" / "labels.csv", rows)
    fe = _run_config(csv_path, tmp_path / "fe", stage="feature_extraction")
    fe.model.backbone, fe.model.backbone_alpha, fe.model.weights = "mobilenet", 0.25, "none"
    fe.train.epochs = 1
    train.run(fe)
    ft = C.for_stage("fine_tuning")
    ft.model.init_from = str(tmp_path / "fe")
    ft.train.model_dir, ft.train.epochs, ft.train.verbose = str(tmp_path / "ft"), 1, 0
    # The data settings come from the stage-3 run, as the flags inherit them.
    ft.data = C.Config.from_dict(json.loads((tmp_path / "fe" / "config.json").read_text())).data
    result = train.run(ft)
    assert result.model.output_shape == (None, 3)
    assert json.loads((tmp_path / "ft" / "config.json").read_text())["multi_label"] is True
    assert "val_auc" in (tmp_path / "ft" / "history.csv").read_text().splitlines()[0]
    # A fine-tuning run that leaves --label_separator out would read another split.
    ft.data.label_separator = ""
    ft.train.model_dir = str(tmp_path / "ft2")
    with pytest.raises(ValueError, match="label_separator"):
        train.run(ft)


def _script(name, *args):
    import subprocess
    import sys
    from helpers import REPO
    env = dict(os.environ, PYTHONPATH=REPO, TF_CPP_MIN_LOG_LEVEL="2")
    return subprocess.run([sys.executable, os.path.join(REPO, "scripts", name), *map(str, args)],
                          env=env, capture_output=True, text=True, timeout=300)


def test_the_evaluate_script_reports_per_label_figures_and_refuses_a_folder(trained, tmp_path):
    root, _, _, test_csv = trained
    done = _script("evaluate.py", f"--model_dir={root / 'run'}", f"--test_csv={test_csv}",
                   "--label_column=tags", f"--out_dir={tmp_path / 'ev'}")
    assert done.returncode == 0, done.stderr
    assert "multi-label" in done.stdout and "| c " in done.stdout
    saved = json.loads((tmp_path / "ev" / "evaluation.json").read_text())
    assert set(saved["metrics"]["per_label"]) == {"a", "b", "c"}
    refused = _script("evaluate.py", f"--model_dir={root / 'run'}", f"--test_dir={root}")
    assert refused.returncode == 2 and "--test_csv" in refused.stderr


def test_a_stage_script_refuses_label_sets_from_a_folder(tmp_path):
    done = _script("train_baseline.py", f"--train_dir={tmp_path / 'data'}", "--label_separator=|",
                   f"--model_dir={tmp_path / 'run'}")
    assert done.returncode == 2
    assert "--label_separator" in done.stderr and "--train_csv" in done.stderr


def test_a_space_separates_labels_too():
    from catdog import label_sets
    assert label_sets.parse(" cat  outdoor cat ", " ") == ("cat", "outdoor")
    c = C.for_stage("baseline")
    c.data.train_csv, c.data.label_separator, c.train.model_dir = "labels.csv", " ", "run"
    c.validate()
    c.data.label_separator = "\n"
    with pytest.raises(ValueError, match="--label_separator"):
        c.validate()
