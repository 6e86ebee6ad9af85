"""Tests for catdog.predict and scripts/predict.py."""

import csv
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

import helpers
from catdog import export
from catdog import predict
from catdog.data import decode_and_resize

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(REPO, "scripts", "predict.py")


# --- helpers -----------------------------------------------------------------


def _write(path, contents):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(contents)
    return str(path)


def _expected(model, class_names, image_size, contents):
    """(class, probability of it) computed straight from the Keras model."""
    image = decode_and_resize(tf.constant(contents), image_size)
    out = model(tf.cast(image[tf.newaxis], tf.float32), training=False).numpy()[0]
    probs = np.array([1 - out[0], out[0]]) if out.shape[-1] == 1 else out
    best = int(np.argmax(probs))
    return class_names[best], float(probs[best])


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """Six good images (JPEG and PNG, upper-case extensions, a subfolder)."""
    root = tmp_path_factory.mktemp("images")
    paths = [
        _write(root / "a.jpg", helpers.image_bytes(0)),
        _write(root / "b.JPG", helpers.image_bytes(1, (90, 30, 3))),
        _write(root / "c.png", helpers.image_bytes(2, fmt="png")),
        _write(root / "d.jpeg", helpers.image_bytes(3, (16, 16, 3))),
        _write(root / "sub" / "e.PNG", helpers.image_bytes(4, (33, 47, 1), fmt="png")),
        _write(root / "sub" / "f.jpg", helpers.image_bytes(5, (64, 64, 3))),
    ]
    return str(root), paths


@pytest.fixture(scope="module")
def exported(binary_run, tmp_path_factory):
    model_dir, _ = binary_run
    return export.export_saved_model(model_dir, tmp_path_factory.mktemp("exp") / "serving")


# --- predict_files with a Keras model_dir ----------------------------------------

@pytest.mark.parametrize("run", ["binary_run", "softmax_run"])
def test_predict_files_matches_keras_model(run, images, request):
    model_dir, model = request.getfixturevalue(run)
    with open(os.path.join(model_dir, "config.json")) as f:
        config = json.load(f)
    folder, paths = images

    rows = predict.predict_files(model_dir, [folder], batch_size=4)

    assert [r["path"] for r in rows] == sorted(paths[:4]) + paths[4:]
    for row in rows:
        with open(row["path"], "rb") as f:
            name, prob = _expected(model, config["class_names"],
                                   config["data"]["image_size"], f.read())
        assert row["error"] is None
        assert row["class"] == name
        assert row["probability"] == pytest.approx(prob, abs=1e-5)
        assert 1 / len(config["class_names"]) <= row["probability"] <= 1
    assert len({r["class"] for r in rows}) > 1, "test images should not all agree"


def test_unreadable_files_get_error_rows_and_the_rest_still_run(binary_run, tmp_path):
    model_dir, model = binary_run
    good = helpers.image_bytes(7)
    jpeg = helpers.image_bytes(8, (64, 64, 3))
    paths = [
        _write(tmp_path / "1-good.jpg", good),
        _write(tmp_path / "2-empty.jpg", b""),
        _write(tmp_path / "3-truncated.jpg", jpeg[: len(jpeg) // 2]),
        _write(tmp_path / "4-text.png", b"this is not an image\n"),
        _write(tmp_path / "5-good.png", helpers.image_bytes(9, fmt="png")),
    ]

    rows = predict.predict_files(model_dir, paths + [str(tmp_path / "6-gone.jpg")])

    errors = [r["error"] for r in rows]
    assert errors[0] is None and errors[4] is None
    assert errors[1] == "empty file (0 bytes)"
    assert errors[2].startswith("not a readable JPEG/PNG/GIF/BMP image")
    assert "function_node" not in errors[2]
    assert errors[3].startswith("not a readable JPEG/PNG/GIF/BMP image (21 bytes)")
    assert errors[5] == "no such file or folder"
    for i in (1, 2, 3, 5):
        assert rows[i]["class"] is None and rows[i]["probability"] is None
    name, prob = _expected(model, ["cats", "dogs"], (32, 32), good)
    assert rows[0]["class"] == name
    assert rows[0]["probability"] == pytest.approx(prob, abs=1e-5)


def test_predict_files_with_no_usable_file_never_calls_the_model(
        binary_run, exported, tmp_path, monkeypatch):
    model_dir, _ = binary_run
    bad = [_write(tmp_path / "empty.jpg", b""), _write(tmp_path / "text.png", b"no")]
    calls = []
    make_predictor = predict._make_predictor

    def spying_make_predictor(*args):
        predict_batch, *rest = make_predictor(*args)  # rest: image size, decode options

        def spy(batch):
            calls.append(len(batch))
            return predict_batch(batch)
        return (spy, *rest)

    monkeypatch.setattr(predict, "_make_predictor", spying_make_predictor)
    for source in (model_dir, exported):
        assert predict.predict_files(source, []) == []
        rows = predict.predict_files(source, bad + [str(tmp_path / "gone.jpg")])
        assert [r["class"] for r in rows] == [None] * 3
        assert all(r["error"] for r in rows)
    assert calls == []


def test_model_calls_are_batched_around_bad_files(binary_run, images, tmp_path, monkeypatch):
    model_dir, _ = binary_run
    _, paths = images
    bad = _write(tmp_path / "bad.jpg", b"nope")
    batch_sizes = []
    make_predictor = predict._make_predictor

    def spying_make_predictor(*args):
        predict_batch, *rest = make_predictor(*args)  # rest: image size, decode options

        def spy(batch):
            batch_sizes.append(len(batch))
            assert batch.dtype == np.uint8 and batch.shape[1:] == (32, 32, 3)
            return predict_batch(batch)
        return (spy, *rest)

    monkeypatch.setattr(predict, "_make_predictor", spying_make_predictor)
    mixed = paths[:2] + [bad] + paths[2:]
    rows_2 = predict.predict_files(model_dir, mixed, batch_size=2)
    assert batch_sizes == [2, 2, 2]
    rows_32 = predict.predict_files(model_dir, mixed, batch_size=32)
    assert batch_sizes[3:] == [6]
    assert [r["class"] for r in rows_2] == [r["class"] for r in rows_32]
    np.testing.assert_allclose(
        [r["probability"] or 0 for r in rows_2],
        [r["probability"] or 0 for r in rows_32], atol=1e-6)


def test_keras_model_object_needs_class_names_and_checks_image_size(binary_run, images):
    _, model = binary_run
    _, paths = images
    with pytest.raises(ValueError, match="class_names is required"):
        predict.predict_files(model, paths)
    with pytest.raises(ValueError, match=r"image_size \(40, 40\) differs .* \(32, 32\)"):
        predict.predict_files(model, paths, class_names=["cats", "dogs"], image_size=(40, 40))
    with pytest.raises(ValueError, match="1 value.* 3 class_names"):
        predict.predict_files(model, paths, class_names=["a", "b", "c"])
    rows = predict.predict_files(model, paths[:1], class_names=["cats", "dogs"])
    assert rows[0]["error"] is None and rows[0]["class"] in ("cats", "dogs")


def test_any_size_model_needs_an_image_size(softmax_run, images):
    _, model = softmax_run
    with pytest.raises(ValueError, match="image_size is required"):
        predict.predict_files(model, images[1], class_names=["bird", "cat", "dog"])


@pytest.mark.parametrize("batch_size", [0, -1, 2.5, True, "32"])
def test_bad_batch_size_is_rejected(binary_run, images, batch_size):
    with pytest.raises(ValueError, match="batch_size must be a positive integer"):
        predict.predict_files(binary_run[0], images[1], batch_size=batch_size)


def test_arguments_disagreeing_with_config_are_rejected(binary_run, images):
    with pytest.raises(ValueError, match=r"class_names=\['dogs', 'cats'\] differs"):
        predict.predict_files(binary_run[0], images[1], class_names=["dogs", "cats"])
    with pytest.raises(ValueError, match=r"image_size=\[64, 64\] differs"):
        predict.predict_files(binary_run[0], images[1], image_size=(64, 64))


# --- predict_files with an exported SavedModel -----------------------------------

def test_saved_model_paths_equal_serving_default_and_keras(binary_run, exported, images):
    model_dir, _ = binary_run
    _, paths = images
    contents = []
    for path in paths:
        with open(path, "rb") as f:
            contents.append(f.read())
    loaded = tf.saved_model.load(exported)
    served = loaded.signatures["serving_default"](image_bytes=tf.constant(contents))
    served_probs = served["probabilities"].numpy().max(axis=1)
    served_classes = [c.decode() for c in served["classes"].numpy()]

    base_dir = os.path.dirname(exported)
    for source in (loaded, exported, base_dir, model_dir):
        rows = predict.predict_files(source, paths, batch_size=4)
        assert [r["class"] for r in rows] == served_classes, source
        np.testing.assert_allclose(
            [r["probability"] for r in rows], served_probs, atol=1e-5, err_msg=str(source))


def test_saved_model_checks_class_names_and_image_size(exported, images):
    loaded = predict.load_saved_model(exported)
    with pytest.raises(ValueError, match="differ from the SavedModel's"):
        predict.predict_files(loaded, images[1], class_names=["a", "b"])
    with pytest.raises(ValueError, match=r"image_size \(8, 8\) differs"):
        predict.predict_files(loaded, images[1], image_size=(8, 8))
    rows = predict.predict_files(loaded, images[1][:1], class_names=["cats", "dogs"],
                                 image_size=(32, 32))
    assert rows[0]["error"] is None


def test_predicting_with_something_that_is_not_a_model_names_it():
    with pytest.raises(ValueError, match="Cannot predict with a dict"):
        predict.predict_files({}, [])


# --- scripts/predict.py -------------------------------------------------------------

def _run_script(*args, cwd=None):
    env = dict(os.environ, PYTHONPATH=REPO, TF_CPP_MIN_LOG_LEVEL="2")
    return subprocess.run([sys.executable, SCRIPT, *map(str, args)], env=env, cwd=cwd,
                          capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("args, message", [
    ([], "pass exactly one of --model_dir"),
    (["--model_dir=a", "--saved_model=b", "x.jpg"], "pass exactly one of --model_dir"),
    (["--model_dir=a"], "no files or folders given"),
    (["--model_dir=a", "--batch_size=0", "x.jpg"], "--batch_size=0"),
    (["--model_dir=a", "--nope", "x.jpg"], "nope"),
    (["--model_dir=a", "--csv=no/such/folder/out.csv", "x.jpg"], "does not exist; create it"),
    (["--model_dir=a", "--csv=x.jpg", "x.jpg"], "refusing to overwrite"),
])
def test_script_usage_errors_exit_2_without_traceback(args, message, tmp_path):
    result = _run_script(*args, cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_script_prints_table_writes_csv_and_exits_0(binary_run, images, tmp_path):
    model_dir, _ = binary_run
    folder, paths = images
    bad = _write(tmp_path / "bad.jpg", b"")
    flagfile = tmp_path / "flags.txt"
    flagfile.write_text(f"--model_dir={model_dir}\n--batch_size=4\n")
    out_csv = tmp_path / "out.csv"

    result = _run_script(f"--flagfile={flagfile}", f"--csv={out_csv}", folder, bad)

    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["file", "class", "probability"]
    assert len(lines) == 1 + len(paths) + 1
    # Aligned: every row's class column starts where the header's does.
    column = lines[0].index("class")
    assert all(line[column - 2:column] == "  " and line[column] != " " for line in lines)
    assert lines[-1].endswith("ERROR: empty file (0 bytes)")
    assert "6 of 7 files classified, 1 could not be read" in result.stderr

    expected = predict.predict_files(model_dir, [folder, bad])
    with open(out_csv, newline="") as f:
        written = list(csv.DictReader(f))
    assert [r["path"] for r in written] == [r["path"] for r in expected]
    for row, want in zip(written, expected):
        assert row["class"] == (want["class"] or "")
        assert row["error"] == (want["error"] or "")
        if want["probability"] is not None:
            assert float(row["probability"]) == pytest.approx(want["probability"], abs=1e-5)
            assert f"{want['probability']:.4f}" in result.stdout


def test_script_exits_1_when_every_file_fails(exported, tmp_path):
    bad = _write(tmp_path / "bad.png", b"GIF89a broken")
    result = _run_script(f"--saved_model={exported}", bad)
    assert result.returncode == 1, result.stderr
    assert "ERROR: not a readable JPEG/PNG/GIF/BMP image" in result.stdout


@pytest.mark.slow  # a second TensorFlow start-up; the message itself is tested above
def test_script_exits_2_on_a_bad_model_dir(exported, tmp_path):
    result = _run_script(f"--model_dir={exported}", tmp_path)
    assert result.returncode == 2
    assert "--model_dir: No model.keras in model_dir" in result.stderr
    assert "exported SavedModel" in result.stderr and "Traceback" not in result.stderr


def _oriented_files(folder, upright):
    return [helpers.write_oriented_jpeg(folder / f"o{k}.jpg", k, upright) for k in range(1, 9)]


def test_every_exif_orientation_is_predicted_upright(tmp_path):
    upright = helpers.upright_pixels()
    paths = _oriented_files(tmp_path / "photos", upright)
    run = helpers.write_upright_run(tmp_path / "run", upright, exif_orientation=True)
    rows = predict.predict_files(run, paths)
    assert [r["class"] for r in rows] == ["upright"] * 8, rows
    assert min(r["probability"] for r in rows) > 0.99
    # The exported model (serving_default and serve_images via predict) agrees.
    saved = export.export_saved_model(run, tmp_path / "export")
    rows = predict.predict_files(saved, paths)
    assert [r["class"] for r in rows] == ["upright"] * 8, rows
    loaded = tf.saved_model.load(saved)
    out = loaded.signatures["serving_default"](
        image_bytes=tf.constant([open(p, "rb").read() for p in paths]))
    assert [c.decode() for c in out["classes"].numpy()] == ["upright"] * 8


@pytest.mark.parametrize("exif_orientation", [False, None])
def test_a_model_trained_without_exif_orientation_is_fed_stored_pixels(
        tmp_path, exif_orientation):
    """Off, or a config.json from before the setting: the pixels as stored,
    as that model was trained on, in prediction and in its export."""
    upright = helpers.upright_pixels()
    paths = _oriented_files(tmp_path / "photos", upright)
    run = helpers.write_upright_run(tmp_path / "run", upright, exif_orientation)
    stored = ["upright"] + ["turned"] * 7
    assert [r["class"] for r in predict.predict_files(run, paths)] == stored
    saved = export.export_saved_model(run, tmp_path / "export")
    assert [r["class"] for r in predict.predict_files(saved, paths)] == stored
    loaded = tf.saved_model.load(saved)
    out = loaded.signatures["serving_default"](
        image_bytes=tf.constant([open(p, "rb").read() for p in paths]))
    assert [c.decode() for c in out["classes"].numpy()] == stored


def test_resize_mode_of_the_model_dir_is_used_by_predict_and_export(tmp_path):
    """A photo whose centre is the upright picture, between noise bands: the
    model dir's 'crop' finds the picture, a 'stretch' model dir squashes it."""
    upright = helpers.upright_pixels()  # 48x32
    bands = np.random.RandomState(1).randint(0, 256, (48, 16, 3)).astype(np.uint8)
    wide = np.concatenate([bands, upright, bands[:, ::-1]], axis=1)  # 48x64
    photo = helpers.write_image(str(tmp_path / "wide.png"), wide)
    for mode, expected in (("crop", "upright"), ("stretch", "turned")):
        run = helpers.write_upright_run(tmp_path / mode, upright)
        path = os.path.join(run, "config.json")
        config = json.load(open(path))
        config["data"]["resize_mode"] = mode
        json.dump(config, open(path, "w"))
        assert predict.predict_files(run, [photo])[0]["class"] == expected, mode
        saved = export.export_saved_model(run, tmp_path / f"export-{mode}")
        assert predict.predict_files(saved, [photo])[0]["class"] == expected, mode
        out = tf.saved_model.load(saved).signatures["serving_default"](
            image_bytes=tf.constant([open(photo, "rb").read()]))
        assert out["classes"].numpy()[0].decode() == expected, mode


def test_a_file_name_that_is_not_utf8_is_read_and_predicted(binary_run, tmp_path):
    model_dir, model = binary_run
    good = helpers.image_bytes(7)
    name = os.fsdecode(os.path.join(os.fsencode(str(tmp_path)), b"bad\xff\xfename.jpg"))
    _write(name, good)
    rows = predict.predict_files(model_dir, [name])
    assert rows[0]["error"] is None
    assert rows[0]["class"] == _expected(model, ["cats", "dogs"], (32, 32), good)[0]


def test_script_prints_and_writes_a_file_name_that_is_not_utf8(binary_run, tmp_path):
    model_dir, _ = binary_run
    odd = os.fsdecode(os.path.join(os.fsencode(str(tmp_path)), b"odd\xff.jpg"))
    _write(odd, helpers.image_bytes(7))
    out_csv = tmp_path / "out.csv"
    result = _run_script(f"--model_dir={model_dir}", f"--csv={out_csv}", str(tmp_path))
    assert result.returncode == 0, result.stderr
    assert "odd\\udcff.jpg" in result.stdout
    assert "odd\\udcff.jpg" in out_csv.read_text(encoding="utf-8")
