"""The CSV source: image files labelled by the rows of a CSV file."""

import csv
import json
import os
import shutil
import unicodedata
import subprocess
import sys

import numpy as np
import pytest

from catdog import config as C
from catdog import data
from catdog import scan
from catdog import splits
from catdog import train
from helpers import REPO, tree_state, write_image

_OPENED = []  # paths opened while a test records them (see _record_opens)
_WATCHED = set()


def _audit(event, args):
    if event == "open" and _WATCHED and args and isinstance(args[0], (str, bytes)):
        path = os.fsdecode(args[0])
        if os.path.realpath(path) in _WATCHED:
            _OPENED.append(path)


sys.addaudithook(_audit)


def _image(path, label=0, seed=0, size=24):
    rng = np.random.RandomState(seed)
    pixels = rng.randint(0, 120, size=(size, size, 3)).astype(np.uint8)
    pixels[..., label % 3] += 120
    return write_image(str(path), pixels)


def _write_csv(path, rows, header=("file", "label"), bom=False):
    with open(path, "w", newline="", encoding="utf-8-sig" if bom else "utf-8") as f:
        writer = csv.writer(f)
        if header is not None:
            writer.writerow(header)
        writer.writerows(rows)
    return str(path)


def _photos(root, classes=("Bengalí", "Maine Coon"), per_class=6, ext=".jpg", prefix=""):
    """``root/<prefix><class>_<i><ext>`` images; returns the CSV rows (name, class)."""
    rows = []
    for label, name in enumerate(classes):
        for i in range(per_class):
            file_name = f"{prefix}{name.replace(' ', '_')}_{i}{ext}"
            _image(os.path.join(root, file_name), label, seed=10 * label + i)
            rows.append((file_name, name))
    return rows


def _cfg(train_csv, **kw):
    kw.setdefault("batch_size", 4)
    kw.setdefault("validation_split", 0.25)
    return C.DataConfig(train_csv=str(train_csv), image_size=(16, 16), **kw)


def _count(index, kind, side="train"):
    return index.csv_report[side]["problems"].get(kind, {}).get("count", 0)


def test_file_names_with_extensions_spaces_and_non_ascii_classes(tmp_path):
    rows = _photos(tmp_path / "images", per_class=8)
    csv_path = _write_csv(tmp_path / "labels.csv", rows, bom=True)
    index = data.index_source(_cfg(csv_path, image_dir=str(tmp_path / "images")))
    assert index.class_names == ["Bengalí", "Maine Coon"]  # sorted
    assert len(index.train) == 12 and len(index.val) == 4  # 25% of each class
    assert sorted(index.val.labels) == [0, 0, 1, 1]
    labels = dict(zip(index.train.paths + index.val.paths,
                      index.train.labels + index.val.labels))
    for name, cls in rows:
        assert labels[os.path.join(str(tmp_path / "images"), name)] == \
            index.class_names.index(cls)
    report = index.csv_report["train"]
    assert report["rows"] == 16 and report["used"] == 16
    assert report["problems"] == {}
    # The split is the folder source's stable hash split, by name relative to
    # the image folder: the same files whatever the row order.
    shuffled = _write_csv(tmp_path / "shuffled.csv", rows[::-1])
    again = data.index_source(_cfg(shuffled, image_dir=str(tmp_path / "images")))
    assert sorted(again.val.paths) == sorted(index.val.paths)


def test_default_image_dir_is_the_csv_folder_and_columns_by_name(tmp_path):
    rows = _photos(tmp_path / "set" / "train", per_class=4, prefix="")
    rows = [(f"train/{name}", "x", cls) for name, cls in rows]  # subfolder paths
    csv_path = _write_csv(tmp_path / "set" / "labels.csv", rows,
                          header=("path", "other", "breed"))
    index = data.index_source(_cfg(csv_path, label_column="breed", filename_column="path"))
    assert index.class_names == ["Bengalí", "Maine Coon"]
    assert len(index.train) + len(index.val) == 8
    assert all(p.startswith(str(tmp_path / "set" / "train") + os.sep)
               for p in index.train.paths)


def test_kaggle_ids_without_extension_resolve_to_the_one_image_of_that_stem(tmp_path):
    images = tmp_path / "train"
    rows = []
    for i in range(8):
        ident = f"{i:03d}bec18"
        _image(images / f"{ident}.jpg", i % 2, seed=i)
        rows.append((ident, "boston_bull" if i % 2 else "dingo"))
    # One id matches two image files: ambiguous, counted, not used.
    _image(images / "dup.jpg", 0, seed=40)
    _image(images / "dup.png", 0, seed=41)
    rows.append(("dup", "dingo"))
    csv_path = _write_csv(tmp_path / "labels.csv", rows, header=("id", "breed"))
    index = data.index_source(_cfg(csv_path, image_dir=str(images)))
    used = index.train.paths + index.val.paths
    assert len(used) == 8 and all(p.endswith("bec18.jpg") for p in used)
    assert index.class_names == ["boston_bull", "dingo"]
    assert _count(index, "ambiguous_id") == 1
    examples = index.csv_report["train"]["problems"]["ambiguous_id"]["examples"]
    assert "dup" in examples[0]
    # The two files of the ambiguous id have no usable row.
    assert _count(index, "unlisted_image") == 0


def test_messy_rows_are_counted_exactly_and_training_uses_the_rest(tmp_path):
    images = tmp_path / "images"
    rows = _photos(images, classes=("cats", "dogs"), per_class=5)
    _image(images / "unlisted_1.jpg")
    _image(images / "unlisted_2.jpg")
    _image(images / "conflict.jpg")
    with open(images / "broken.jpg", "wb") as f:
        f.write(b"\xff\xd8\xff\xe0 truncated")
    rows += [
        ("gone.jpg", "cats"),                 # missing file
        ("cats_0.jpg", "cats"),               # duplicate row, same label: used once
        ("./cats_1.jpg", "cats"),             # the same file again, spelled otherwise
        ("conflict.jpg", "cats"),             # conflicting labels: left out
        ("conflict.jpg", "dogs"),
        ("dogs_0.jpg", ""),                   # empty label
        ("", "dogs"),                         # empty file name
        ("broken.jpg", "dogs"),               # corrupt: skipped by the decode check
    ]
    csv_path = _write_csv(tmp_path / "labels.csv", rows)
    index = data.index_source(_cfg(csv_path, image_dir=str(images)))
    problems = index.csv_report["train"]["problems"]
    counts = {kind: entry["count"] for kind, entry in problems.items()}
    assert counts == {"missing_file": 1, "duplicate_row": 2, "conflicting_label": 1,
                      "empty_label": 1, "empty_filename": 1, "unlisted_image": 2}
    assert "gone.jpg" in problems["missing_file"]["examples"][0]
    assert "conflict.jpg" in problems["conflicting_label"]["examples"][0]
    assert any("unlisted_1.jpg" in e for e in problems["unlisted_image"]["examples"])
    used = index.train.paths + index.val.paths
    assert len(used) == 10 and len(set(used)) == 10
    assert not any("conflict" in p or "broken" in p for p in used)
    assert [s["path"] for s in index.skipped] == [str(images / "broken.jpg")]
    assert index.csv_report["train"]["rows"] == 18
    # The broken file's row is good, but the file is not used: it is in the
    # skipped files, and "used" counts what trains or validates.
    assert index.csv_report["train"]["used"] == 10


def test_paths_leaving_the_image_folder_are_never_opened(tmp_path, monkeypatch):
    images = tmp_path / "images"
    rows = _photos(images, classes=("cats", "dogs"), per_class=4)
    outside = _image(tmp_path / "secret" / "outside.jpg", 1, seed=99)
    os.symlink(outside, images / "link.jpg")
    os.symlink(str(tmp_path / "secret"), images / "linked_dir")
    rows += [("../secret/outside.jpg", "dogs"), (outside, "dogs"), ("link.jpg", "dogs"),
             ("linked_dir/outside.jpg", "dogs"), ("../secret/outside", "dogs")]
    csv_path = _write_csv(tmp_path / "labels.csv", rows)
    checked = []
    real_keep_usable = scan.keep_usable

    def recording(paths, *args, **kw):
        checked.extend(paths)
        return real_keep_usable(paths, *args, **kw)

    monkeypatch.setattr(scan, "keep_usable", recording)
    _WATCHED.add(os.path.realpath(outside))
    try:
        index = data.index_source(_cfg(csv_path, image_dir=str(images)))
    finally:
        _WATCHED.clear()
    assert _OPENED == []
    assert not any(os.path.realpath(p) == os.path.realpath(outside) for p in checked)
    used = index.train.paths + index.val.paths
    assert len(used) == 8
    assert not any(os.path.realpath(p) == os.path.realpath(outside) for p in used)
    assert _count(index, "outside_image_dir") == 5
    assert _count(index, "missing_file") == 0


def test_validation_csv_keeps_the_training_class_order(tmp_path):
    rows = _photos(tmp_path / "train", classes=("cats", "dogs"), per_class=4)
    vrows = _photos(tmp_path / "valid", classes=("cats", "dogs"), per_class=2)
    _image(tmp_path / "valid" / "bird.jpg")
    vrows.append(("bird.jpg", "birds"))  # a class training does not have
    train_csv = _write_csv(tmp_path / "train" / "train.csv", rows)
    val_csv = _write_csv(tmp_path / "valid" / "valid.csv", vrows)
    index = data.index_source(_cfg(train_csv, val_csv=val_csv, class_names=("dogs", "cats")))
    assert index.class_names == ["dogs", "cats"]
    assert len(index.train) == 8 and len(index.val) == 4
    assert all(p.startswith(str(tmp_path / "valid")) for p in index.val.paths)
    assert all((l == 0) == ("/dogs_" in p) for p, l in zip(index.val.paths, index.val.labels))
    assert _count(index, "unknown_label", "val") == 1


def test_class_names_leave_out_other_labels(tmp_path):
    rows = _photos(tmp_path, classes=("a", "b", "c"), per_class=4)
    csv_path = _write_csv(tmp_path / "labels.csv", rows)
    index = data.index_source(_cfg(csv_path, class_names=("c", "a")))
    assert index.class_names == ["c", "a"] and len(index.train) + len(index.val) == 8
    assert _count(index, "unknown_label") == 4


@pytest.mark.parametrize("case, flag_or_text", [
    ("missing_csv", "--train_csv"),
    ("unknown_column", "--label_column"),
    ("nothing_usable", "no usable"),
    ("one_class", "at least two classes"),
    ("class_name_without_rows", "--class_names"),
    ("only_a_header", "no rows"),
])
def test_bad_csv_inputs_fail_before_training_naming_file_and_flag(tmp_path, case, flag_or_text):
    rows = _photos(tmp_path, classes=("cats", "dogs"), per_class=3)
    csv_path = _write_csv(tmp_path / "labels.csv", rows)
    kw = {}
    if case == "missing_csv":
        csv_path = str(tmp_path / "nope.csv")
    elif case == "unknown_column":
        kw["label_column"] = "breed"
    elif case == "nothing_usable":
        csv_path = _write_csv(tmp_path / "labels.csv", [("x.jpg", "cats"), ("y.jpg", "dogs")])
    elif case == "one_class":
        csv_path = _write_csv(tmp_path / "labels.csv", [(n, "cats") for n, _ in rows])
    elif case == "class_name_without_rows":
        kw["class_names"] = ("cats", "dogs", "birds")
    elif case == "only_a_header":
        csv_path = _write_csv(tmp_path / "labels.csv", [])
    with pytest.raises(ValueError) as e:
        data.index_source(_cfg(csv_path, **kw))
    msg = str(e.value)
    assert flag_or_text in msg
    assert os.path.basename(csv_path) in msg
    if case == "unknown_column":
        assert "['file', 'label']" in msg
    if case == "class_name_without_rows":
        assert "birds" in msg


def test_csv_with_another_source_is_an_error_naming_both_flags(tmp_path):
    c = C.baseline()
    c.train.model_dir = str(tmp_path / "run")
    c.data.train_csv, c.data.train_dir = "labels.csv", "photos"
    with pytest.raises(ValueError, match="--train_dir.*--train_csv|--train_csv.*--train_dir"):
        c.validate()
    c.data.train_dir, c.data.tfds_name = "", "cats_vs_dogs"
    with pytest.raises(ValueError, match="--tfds_name"):
        c.validate()
    c.data.train_csv, c.data.tfds_name, c.data.val_csv = "", "", "valid.csv"
    c.data.train_dir = "photos"
    with pytest.raises(ValueError, match="--val_csv"):
        c.validate()
    c.data.val_csv, c.data.image_dir = "", "images"
    with pytest.raises(ValueError, match="--image_dir"):
        c.validate()


def test_csv_split_record_is_rechecked_and_keeps_its_digest_when_data_moves(tmp_path):
    rows = _photos(tmp_path / "a" / "images", classes=("cats", "dogs"), per_class=4)
    csv_path = _write_csv(tmp_path / "a" / "images" / "labels.csv", rows)
    cfg = _cfg(csv_path)
    index = data.index_source(cfg)
    record = splits.split_record(cfg, index)
    assert record["source"] == "csv"
    again = data.index_from_split(cfg, record, "the earlier run")
    assert again.train.paths == index.train.paths and again.val.paths == index.val.paths
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    moved_cfg = _cfg(str(tmp_path / "b" / "images" / "labels.csv"))
    moved = splits.split_record(moved_cfg, data.index_source(moved_cfg))
    assert splits.split_digest(moved) == splits.split_digest(record)
    folder_cfg = C.DataConfig(train_dir=str(tmp_path / "a"))
    with pytest.raises(ValueError, match="csv source"):
        data.index_from_split(folder_cfg, record, "the earlier run")


def _run_config(stage, csv_path, model_dir, **model):
    c = C.for_stage(stage)
    c.data.train_csv = str(csv_path)
    c.data.validation_split = 0.2
    c.data.image_size, c.data.batch_size = (32, 32), 8
    c.train.epochs, c.train.verbose = 1, 0
    c.train.model_dir = str(model_dir)
    for k, v in model.items():
        setattr(c.model, k, v)
    return c


def test_a_stage_trains_from_a_csv_and_reports_its_rows(tmp_path):
    images = tmp_path / "images"
    rows = _photos(images, classes=("cats", "dogs"), per_class=10)
    rows += [("gone.jpg", "cats"), ("cats_0.jpg", "cats")]
    _image(images / "extra.jpg")
    csv_path = _write_csv(images / "labels.csv", rows)
    before = tree_state(images)
    result = train.run(_run_config("baseline", csv_path, tmp_path / "run"))
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["train_examples"] == 16 and metrics["val_examples"] == 4
    problems = metrics["csv_report"]["train"]["problems"]
    assert {k: v["count"] for k, v in problems.items()} == {
        "missing_file": 1, "duplicate_row": 1, "unlisted_image": 1}
    assert result.metrics["csv_report"] == metrics["csv_report"]
    split = json.loads((tmp_path / "run" / "split.json").read_text())
    assert split["source"] == "csv" and len(split["val"]) == 4
    # A rerun of the finished run resumes (same split): nothing more trains.
    again = train.run(_run_config("baseline", csv_path, tmp_path / "run"))
    assert again.metrics["epochs_completed"] == 1
    # The run wrote nothing into the image folder.
    assert tree_state(images) == before
    # A row added to the CSV changes the split: resuming is refused, naming it.
    _image(images / "late.jpg")
    _write_csv(images / "labels.csv", rows + [("late.jpg", "dogs")])
    more = _run_config("baseline", csv_path, tmp_path / "run")
    more.train.epochs = 2
    with pytest.raises(ValueError, match="1 file added.*late.jpg"):
        train.run(more)


@pytest.mark.slow
def test_fine_tuning_reads_the_csv_split_of_its_feature_extraction_run(tmp_path):
    images = tmp_path / "images"
    rows = _photos(images, classes=("cats", "dogs"), per_class=10)
    csv_path = _write_csv(images / "labels.csv", rows)
    fe = _run_config("feature_extraction", csv_path, tmp_path / "fe", backbone="mobilenet",
                     backbone_alpha=0.25, weights="none")
    train.run(fe)
    before = json.loads((tmp_path / "fe" / "split.json").read_text())
    # Rows added after stage 3 are not used: stage 4 validates on stage 3's split.
    _image(images / "new.jpg")
    _write_csv(images / "labels.csv", rows + [("new.jpg", "dogs")])
    ft = _run_config("fine_tuning", csv_path, tmp_path / "ft", init_from=str(tmp_path / "fe"))
    result = train.run(ft)
    after = json.loads((tmp_path / "ft" / "split.json").read_text())
    assert after["train"] == before["train"] and after["val"] == before["val"]
    assert result.metrics["val_examples"] == len(before["val"])
    # Another CSV is refused: it would give another split.
    other = _write_csv(images / "other.csv", rows)
    ft2 = _run_config("fine_tuning", other, tmp_path / "ft2", init_from=str(tmp_path / "fe"))
    with pytest.raises(ValueError, match="--train_csv"):
        train.run(ft2)


def _script(script, *args):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=REPO)
    return subprocess.run([sys.executable, os.path.join(REPO, "scripts", script), *args],
                          capture_output=True, text=True, timeout=600, env=env)


def test_scripts_train_from_a_csv_and_refuse_a_bad_column_with_exit_2(tmp_path):
    images = tmp_path / "images"
    rows = _photos(images, classes=("cats", "dogs"), per_class=10)
    csv_path = _write_csv(images / "labels.csv", rows)
    common = [f"--train_csv={csv_path}", "--validation_split=0.2", "--image_size=32",
              "--batch_size=8", "--epochs=1", "--verbose=0"]
    # run_pipeline trains the CSV, not its built-in demo.
    proc = _script("run_pipeline.py", *common, "--stages=baseline",
                   f"--model_dir={tmp_path}/p")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Demo" not in proc.stdout
    metrics = json.loads((tmp_path / "p" / "baseline" / "metrics.json").read_text())
    assert metrics["csv_report"]["train"]["rows"] == 20
    bad = _script("train_baseline.py", *common, "--label_column=breed",
                  f"--model_dir={tmp_path}/b")
    assert bad.returncode == 2, bad.stderr[-2000:]
    assert "--label_column" in bad.stderr and "labels.csv" in bad.stderr
    assert "Traceback" not in bad.stderr


def test_evaluate_test_csv_reads_the_rows_like_the_folder_and_reports_them(tmp_path):
    from catdog import evaluate as ev
    import helpers

    model_dir = helpers.write_run(tmp_path / "model", helpers.build_model(2),
                                  ["cats", "dogs"], (32, 32))
    test_dir = tmp_path / "test"
    rows = []
    for label, name in enumerate(("cats", "dogs")):
        for i in range(4):
            _image(test_dir / name / f"{name}_{i}.jpg", label, seed=20 + 4 * label + i)
            rows.append((f"{name}/{name}_{i}", name))  # ids without extension
    _image(test_dir / "bird.jpg", 2, seed=50)  # not in a class folder
    rows += [("cats/gone.jpg", "cats"), ("../model/x.jpg", "dogs"), ("bird.jpg", "birds")]
    csv_path = _write_csv(tmp_path / "test.csv", rows, header=("id", "breed"))
    folder = ev.evaluate(model_dir, str(test_dir), out_dir=str(tmp_path / "by_folder"))
    result = ev.evaluate(model_dir, test_csv=csv_path, image_dir=str(test_dir),
                         label_column="breed", out_dir=str(tmp_path / "by_csv"))
    assert result["num_examples"] == folder["num_examples"] == 8
    assert result["metrics"] == folder["metrics"]
    assert result["counts"] == {"cats": 4, "dogs": 4}
    problems = result["csv_report"]["problems"]
    assert {k: v["count"] for k, v in problems.items()} == {
        "missing_file": 1, "outside_image_dir": 1, "unknown_label": 1}
    saved = json.loads((tmp_path / "by_csv" / "evaluation.json").read_text())
    assert saved["csv_report"] == result["csv_report"]
    report = (tmp_path / "by_csv" / "evaluation.md").read_text()
    assert "gone.jpg" in report and "leaves the image folder" in report
    with pytest.raises(ValueError, match="exactly one"):
        ev.evaluate(model_dir, str(test_dir), test_csv=csv_path)
    with pytest.raises(ValueError, match="--label_column"):
        ev.evaluate(model_dir, str(test_dir), label_column="breed")
    proc = _script("evaluate.py", f"--model_dir={model_dir}", f"--test_csv={csv_path}",
                   f"--image_dir={test_dir}", "--label_column=breed",
                   f"--out_dir={tmp_path}/by_script")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "CSV rows" in proc.stdout and "1 rows whose file is not" in proc.stdout
    assert json.loads((tmp_path / "by_script" / "evaluation.json").read_text())[
        "metrics"] == folder["metrics"]


def _messy_csv(tmp_path):
    """A CSV over ``images/`` with one row of each common problem and one corrupt file."""
    images = tmp_path / "images"
    rows = _photos(images, classes=("cats", "dogs"), per_class=4)
    with open(images / "broken.jpg", "wb") as f:
        f.write(b"\xff\xd8\xff\xe0 truncated")
    _image(images / "unlisted.jpg")
    rows += [("broken.jpg", "dogs"), ("gone.jpg", "cats"), ("cats_0.jpg", "cats"),
             ("../outside.jpg", "dogs")]
    return _write_csv(tmp_path / "labels.csv", rows), str(images)


def test_build_tfrecords_from_a_csv_writes_its_usable_rows_with_their_labels(tmp_path):
    import tensorflow as tf
    from catdog.sources import tfrecord_writer
    from catdog.sources import tfrecords

    csv_path, images = _messy_csv(tmp_path)
    out = str(tmp_path / "shards")
    manifest = tfrecord_writer.write_tfrecords(images, out, csv_path=csv_path,
                                               class_names=["dogs", "cats"], num_shards=2,
                                               progress=False)
    assert manifest["class_names"] == ["dogs", "cats"]
    assert manifest["counts"] == {"dogs": 4, "cats": 4} and manifest["num_examples"] == 8
    assert [os.path.basename(s["path"]) for s in manifest["skipped"]] == ["broken.jpg"]
    problems = manifest["csv_report"]["problems"]
    assert {k: v["count"] for k, v in problems.items()} == {
        "missing_file": 1, "duplicate_row": 1, "outside_image_dir": 1, "unlisted_image": 1}
    assert manifest["source_csv"] == csv_path
    files, _, n = tfrecords.resolve_shards(os.path.join(out, "*.tfrecord"))
    assert n == 8
    seen = {}
    for f in files:
        for record in tf.data.TFRecordDataset(f):
            p = tf.io.parse_single_example(record, tfrecords._FEATURES)
            seen[p["image/filename"].numpy().decode()] = int(p["image/class/label"])
    assert seen == {f"{c}_{i}.jpg": ["dogs", "cats"].index(c)
                    for c in ("cats", "dogs") for i in range(4)}
    proc = _script("build_tfrecords.py", f"--csv={csv_path}", f"--image_dir={images}",
                   f"--output_dir={tmp_path}/by_script")
    assert proc.returncode == 0, proc.stderr[-3000:]
    written = json.loads((tmp_path / "by_script" / "manifest.json").read_text())
    assert written["class_names"] == ["cats", "dogs"] and written["num_examples"] == 8
    assert "1 rows whose file is not in the image folder" in proc.stdout
    both = _script("build_tfrecords.py", f"--csv={csv_path}", f"--data_dir={images}",
                   f"--output_dir={tmp_path}/both")
    assert both.returncode == 2 and "--csv" in both.stderr and "--data_dir" in both.stderr


def test_scan_data_with_a_csv_lists_its_row_problems_and_bad_images(tmp_path):
    csv_path, images = _messy_csv(tmp_path)
    out = tmp_path / "scan.json"
    proc = _script("scan_data.py", f"--csv={csv_path}", f"--image_dir={images}",
                   f"--json_out={out}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "broken.jpg" in proc.stdout
    for text in ("1 rows whose file is not in the image folder", "gone.jpg",
                 "1 rows whose path leaves the image folder", "1 image files in the image "
                 "folder without a row", "unlisted.jpg"):
        assert text in proc.stdout, text
    report = json.loads(out.read_text())
    assert [c["usable"] for c in report["classes"]] == [4, 4]
    assert [c["bad"] for c in report["classes"]] == [0, 1]
    assert report["csv_report"]["problems"]["duplicate_row"]["count"] == 1
    bad = _script("scan_data.py", f"--csv={csv_path}", "--label_column=breed")
    assert bad.returncode == 2 and "--label_column" in bad.stderr
    assert "Traceback" not in bad.stderr


def test_a_csv_without_header_row_is_refused_instead_of_losing_its_first_row(tmp_path):
    rows = _photos(tmp_path, classes=("cats", "dogs"), per_class=3)
    csv_path = _write_csv(tmp_path / "labels.csv", rows, header=None)
    with pytest.raises(ValueError, match="header row") as e:
        data.index_source(_cfg(csv_path))
    assert "cats_0.jpg" in str(e.value) and "labels.csv" in str(e.value)


def test_a_header_that_is_also_the_name_of_an_image_is_read_as_a_header(tmp_path):
    rows = _photos(tmp_path, classes=("cats", "dogs"), per_class=3)
    _image(tmp_path / "image.jpg")  # a header "image" is also this file's id
    csv_path = _write_csv(tmp_path / "labels.csv", rows, header=("image", "label"))
    index = data.index_source(_cfg(csv_path))
    assert len(index.train) + len(index.val) == 6
    assert index.class_names == ["cats", "dogs"]


def test_csv_flags_without_a_csv_and_a_val_dir_with_a_csv_are_errors(tmp_path):
    c = C.baseline()
    c.train.model_dir = str(tmp_path / "run")
    c.data.train_dir, c.data.label_column = "photos", "breed"
    with pytest.raises(ValueError, match="--label_column"):
        c.validate()
    c.data.train_dir, c.data.label_column = "", ""
    c.data.train_csv, c.data.val_dir = "labels.csv", "valid"
    with pytest.raises(ValueError, match="--val_dir.*--val_csv"):
        c.validate()


def test_relative_csv_and_image_dir_resolve_from_the_working_directory(tmp_path, monkeypatch):
    rows = _photos(tmp_path / "images", classes=("cats", "dogs"), per_class=4)
    _image(tmp_path / "outside.jpg", 1)
    _write_csv(tmp_path / "labels.csv", rows + [("../outside.jpg", "dogs")])
    monkeypatch.chdir(tmp_path)
    index = data.index_source(_cfg("labels.csv", image_dir="images"))
    used = index.train.paths + index.val.paths
    assert len(used) == 8 and all(os.path.isfile(p) for p in used)
    assert _count(index, "outside_image_dir") == 1
    record = splits.split_record(_cfg("labels.csv", image_dir="images"), index)
    assert data.index_from_split(_cfg("labels.csv", image_dir="images"), record,
                                 "the earlier run").val.paths == index.val.paths


def test_fine_tuning_flags_take_the_csv_settings_of_the_init_from_run(tmp_path):
    from absl import flags
    from catdog import cli

    init = tmp_path / "fe"
    init.mkdir()
    stage3 = C.feature_extraction()
    stage3.data.train_csv, stage3.data.image_dir = "labels.csv", "images"
    stage3.data.label_column = "breed"
    (init / "config.json").write_text(json.dumps(stage3.to_dict()))
    values = flags.FlagValues()
    cli.define_training_flags(values)
    values(["prog", f"--init_from={init}", f"--model_dir={tmp_path}/ft"])
    c = cli.config_from_flags("fine_tuning", values)
    assert (c.data.train_csv, c.data.image_dir, c.data.label_column) == (
        "labels.csv", "images", "breed")
    assert c.data.train_dir == ""
    c.validate()
    assert "--train_csv=labels.csv" in cli.flagfile_text(values)


def test_a_csv_split_that_leaves_a_class_out_of_training_is_refused(tmp_path):
    rows = [(f"c{i}.jpg", "cats") for i in range(6)] + [
        (f"d{i}.jpg", "dogs") for i in range(6)] + [("z.jpg", "zsolo")]
    for i, (name, label) in enumerate(rows):
        _image(tmp_path / name, ["cats", "dogs", "zsolo"].index(label), seed=i)
    train_csv = tmp_path / "labels.csv"
    with open(train_csv, "w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows([("filename", "label"), *rows])
    with pytest.raises(ValueError) as e:
        data.index_source(_cfg(train_csv, validation_split=0.5))
    message = str(e.value)
    assert "'zsolo'" in message and "--validation_split" in message
    assert "--val_csv" in message


def test_a_validation_csv_listing_training_images_is_refused(tmp_path):
    names = [f"c{i}.jpg" for i in range(4)] + [f"d{i}.jpg" for i in range(4)]
    for i, name in enumerate(names):
        _image(tmp_path / name, int(name[0] == "d"), seed=i)
    rows = [(name, "cats" if name[0] == "c" else "dogs") for name in names]
    for file_name, chosen in (("train.csv", rows[:3] + rows[4:7]),
                              ("val.csv", [rows[3], rows[7], rows[0]])):
        with open(tmp_path / file_name, "w", newline="", encoding="utf-8") as f:
            csv.writer(f).writerows([("filename", "label"), *chosen])
    with pytest.raises(ValueError) as e:
        data.index_source(_cfg(tmp_path / "train.csv", val_csv=str(tmp_path / "val.csv"),
                               validation_split=0.0))
    message = str(e.value)
    assert "--val_csv" in message and "c0.jpg" in message and "also training images" in message


def _six_image_csv(tmp_path, text, encoding="utf-8"):
    for i, (name, label) in enumerate([("c0.jpg", 0), ("c1.jpg", 0), ("c2.jpg", 0),
                                       ("d0.jpg", 1), ("d1.jpg", 1), ("d2.jpg", 1)]):
        _image(tmp_path / name, label, seed=i)
    path = tmp_path / "labels.csv"
    path.write_bytes(text.encode(encoding))
    return path


_ROWS = "c0.jpg,cats\nc1.jpg,cats\nc2.jpg,cats\nd0.jpg,dogs\nd1.jpg,dogs\nd2.jpg,dogs\n"


def test_problem_lines_are_the_file_lines_after_a_quoted_newline(tmp_path):
    path = _six_image_csv(tmp_path, 'file,label\n"odd\nname.jpg",cats\n' + _ROWS
                      + "gone.jpg,cats\n")
    index = data.index_source(_cfg(path))
    problems = index.csv_report["train"]["problems"]
    assert problems["missing_file"]["examples"] == [
        "line 2: 'odd\\nname.jpg'", "line 10: 'gone.jpg'"]


@pytest.mark.parametrize("broken", ['"c2.jpg,cats', 'c2.jpg,"cats'])
def test_a_quote_left_open_is_refused_instead_of_swallowing_the_rows_below(
        tmp_path, broken):
    path = _six_image_csv(tmp_path, "file,label\n" + _ROWS.replace("c2.jpg,cats", broken))
    with pytest.raises(ValueError) as e:
        data.index_source(_cfg(path))
    message = str(e.value)
    assert str(path) in message and "--train_csv" in message
    assert "line 4" in message and "lines 4-7" in message and "never closed" in message


def test_a_last_row_whose_quoted_name_spans_lines_still_reads(tmp_path):
    path = _six_image_csv(tmp_path, "file,label\n" + _ROWS + '"odd\nname.jpg",cats\n')
    index = data.index_source(_cfg(path))
    assert index.csv_report["train"]["problems"]["missing_file"]["examples"] == [
        "line 8: 'odd\\nname.jpg'"]


def test_a_file_name_with_a_nul_byte_is_a_bad_row_not_a_crash(tmp_path):
    path = _six_image_csv(tmp_path, "file,label\nbad\0name.jpg,cats\n" + _ROWS)
    index = data.index_source(_cfg(path))
    assert _count(index, "missing_file") == 1
    assert len(index.train) + len(index.val) == 6


@pytest.mark.parametrize("text,encoding,expected", [
    ("file,label\nchat_\u00e9t\u00e9.jpg,cats\n" + _ROWS, "latin-1", "UTF-8"),
    ("file,label\n" + "x" * 200_000 + ",cats\n" + _ROWS, "utf-8", "line 2"),
])
def test_an_unreadable_csv_names_the_file_and_what_to_do(tmp_path, text, encoding, expected):
    path = _six_image_csv(tmp_path, text, encoding)
    with pytest.raises(ValueError) as e:
        data.index_source(_cfg(path))
    assert "--train_csv" in str(e.value) and str(path) in str(e.value)
    assert expected in str(e.value)


def test_used_counts_only_the_files_that_passed_the_check(tmp_path):
    path = _six_image_csv(tmp_path, "file,label\nbroken.jpg,cats\n" + _ROWS)
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8\xff not a jpeg")
    index = data.index_source(_cfg(path))
    assert len(index.train) + len(index.val) == 6
    assert index.csv_report["train"]["used"] == 6
    assert any("broken.jpg" in s["path"] for s in index.skipped)


def test_a_row_with_more_cells_than_the_header_is_left_out_and_counted(tmp_path):
    """An unquoted comma in a label would otherwise train on its first part."""
    path = _six_image_csv(tmp_path, "file,label\n" + _ROWS.replace(
        "c2.jpg,cats", "c2.jpg,cats, persian").replace("d2.jpg,dogs", "d2.jpg,dogs,,"))
    index = data.index_source(_cfg(path))
    assert _count(index, "extra_cells") == 1
    assert index.csv_report["train"]["problems"]["extra_cells"]["examples"] == [
        "line 4: 'c2.jpg'"]
    used = index.train.paths + index.val.paths
    assert len(used) == 5 and not any(p.endswith("c2.jpg") for p in used)
    assert any(p.endswith("d2.jpg") for p in used)  # empty trailing cells are fine


@pytest.mark.parametrize("sep,word", [(";", "semicolons"), ("\t", "tabs")])
def test_a_csv_separated_by_another_character_says_so(tmp_path, sep, word):
    path = _six_image_csv(tmp_path, ("file,label\n" + _ROWS).replace(",", sep))
    with pytest.raises(ValueError) as e:
        data.index_source(_cfg(path))
    assert word in str(e.value) and "comma" in str(e.value) and str(path) in str(e.value)


def test_a_validation_row_naming_a_copy_of_a_training_image_is_reported(tmp_path, caplog):
    train_dir, val_dir = tmp_path / "train", tmp_path / "val"
    train_rows = _photos(train_dir, per_class=3)
    val_rows = []
    for i, (_, name) in enumerate(train_rows):
        _image(val_dir / f"v_{i}.jpg", i // 3, seed=100 + i)  # not _photos' seeds
        val_rows.append((f"v_{i}.jpg", name))
    shutil.copyfile(train_dir / train_rows[1][0], val_dir / "v_copy.jpg")
    train_csv = _write_csv(train_dir / "labels.csv", train_rows)
    val_csv = _write_csv(val_dir / "labels.csv", val_rows + [("v_copy.jpg", train_rows[1][1])])
    with caplog.at_level("WARNING"):
        index = data.index_source(_cfg(train_csv, val_csv=val_csv))
    [[train_path, val_path]] = index.copies
    assert os.path.basename(train_path) == train_rows[1][0]
    assert os.path.basename(val_path) == "v_copy.jpg"
    warned = [r.getMessage() for r in caplog.records if "byte-identical" in r.getMessage()]
    assert len(warned) == 1 and "--val_csv" in warned[0] and "--train_csv" in warned[0]
    assert f"--other_dirs={val_dir}" in warned[0]


def _nfd(text):
    return unicodedata.normalize("NFD", text)


def test_a_label_written_in_two_unicode_forms_is_one_class(tmp_path):
    """"Bengalí" typed (NFC) and pasted from macOS (NFD) look the same: two
    classes for them would split one class in two."""
    rows = _photos(tmp_path, per_class=4)
    rows = [(name, _nfd(label) if i % 2 else label) for i, (name, label) in enumerate(rows)]
    assert len({label for _, label in rows}) == 3  # as code points, three labels
    index = data.index_source(_cfg(_write_csv(tmp_path / "labels.csv", rows)))
    assert index.class_names == ["Bengalí", "Maine Coon"]
    assert len(index.train) + len(index.val) == 8
    given = data.index_source(_cfg(tmp_path / "labels.csv",
                                   class_names=(_nfd("Bengalí"), "Maine Coon")))
    assert given.class_names == ["Bengalí", "Maine Coon"]


@pytest.mark.parametrize("by", ["file name", "id"])
def test_a_file_name_in_another_unicode_form_than_on_disk_is_found(tmp_path, by):
    """Files unpacked from a macOS archive keep NFD names; the CSV, written
    elsewhere, has NFC. Byte for byte no file matches, yet they are the same."""
    rows = _photos(tmp_path, classes=("café", "thé"), per_class=3)
    for name, _ in rows:  # the files on disk in NFD
        os.rename(tmp_path / name, tmp_path / _nfd(name))
    listed = [(name if by == "file name" else os.path.splitext(name)[0], label)
              for name, label in rows]
    index = data.index_source(_cfg(_write_csv(tmp_path / "labels.csv", listed)))
    assert _count(index, "missing_file") == 0
    assert len(index.train) + len(index.val) == 6
    assert all(os.path.isfile(p) for p in index.train.paths + index.val.paths)
    assert _count(index, "unlisted_image") == 0


def test_names_written_on_windows_find_their_files(tmp_path):
    """A CSV made on Windows writes train\\cat.jpg and may differ from the
    files in letter case (its file system ignores case); each still names
    exactly one file."""
    rows = _photos(tmp_path / "train", per_class=3)
    listed = [(f"train\\{name}", label) if i % 2 else (f"train/{name.upper()}", label)
              for i, (name, label) in enumerate(rows)]
    index = data.index_source(_cfg(_write_csv(tmp_path / "labels.csv", listed)))
    assert _count(index, "missing_file") == 0
    assert sorted(index.train.paths + index.val.paths) == sorted(
        os.path.join(str(tmp_path), "train", name) for name, _ in rows)


def test_a_windows_path_out_of_the_image_folder_is_still_refused(tmp_path):
    image_dir = tmp_path / "images"
    rows = _photos(image_dir, per_class=3)
    _image(tmp_path / "secret.jpg")
    index = data.index_source(_cfg(_write_csv(
        image_dir / "labels.csv", rows + [("..\\secret.jpg", rows[0][1])])))
    assert _count(index, "outside_image_dir") == 1
    assert not any("secret" in p for p in index.train.paths + index.val.paths)


def test_a_name_that_matches_two_files_only_when_case_is_ignored_is_not_guessed(tmp_path):
    rows = _photos(tmp_path, per_class=3)
    _image(tmp_path / "Pet.jpg", seed=50)
    _image(tmp_path / "PET.jpg", seed=51)
    index = data.index_source(_cfg(_write_csv(tmp_path / "labels.csv",
                                              rows + [("pet.jpg", rows[0][1])])))
    assert _count(index, "missing_file") == 1
    assert not any("pet" in os.path.basename(p).lower()
                   for p in index.train.paths + index.val.paths)
