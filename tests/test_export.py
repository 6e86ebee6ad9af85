"""Tests for catdog.export and scripts/export.py."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

import catdog
import helpers
from catdog import export
from catdog.data import decode_and_resize

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(REPO, "scripts", "export.py")


# --- helpers -----------------------------------------------------------------


def _mixed_bytes():
    """JPEGs and PNGs of several sizes, grey and RGBA included."""
    return [
        helpers.image_bytes(0),
        helpers.image_bytes(1, (90, 30, 3)),
        helpers.image_bytes(2, (16, 16, 3), fmt="png"),
        helpers.image_bytes(3, (33, 47, 1), fmt="png"),
        helpers.image_bytes(4, (50, 50, 4), fmt="png"),
        helpers.image_bytes(5, (64, 64, 3)),
    ]


def _keras_probabilities(model, contents, image_size):
    """What the in-process Keras model says, through the training decode."""
    images = tf.stack([decode_and_resize(tf.constant(c), image_size) for c in contents])
    out = model(tf.cast(images, tf.float32), training=False).numpy().astype(np.float32)
    return np.concatenate([1 - out, out], axis=1) if out.shape[1] == 1 else out


def _listing(folder):
    return sorted(os.listdir(folder)) if os.path.isdir(folder) else None


@pytest.fixture(scope="module")
def exported(binary_run, tmp_path_factory):
    """The binary model exported with TFLite, and the base folder."""
    base = tmp_path_factory.mktemp("exports") / "serving"
    try:
        path = export.export_saved_model(binary_run[0], base, tflite=True)
    except RuntimeError as error:  # TFLite missing from this TensorFlow build
        pytest.skip(f"TFLite conversion unavailable: {error}")
    return path


# --- layout, metadata, versions --------------------------------------------------

def test_export_writes_versions_and_metadata(binary_run, exported):
    base = os.path.dirname(exported)
    assert exported == os.path.join(base, "1")
    assert _listing(base) == ["1"]  # no temporary folders left behind
    for name in ["saved_model.pb", "variables", "model.tflite", "assets.extra"]:
        assert os.path.exists(os.path.join(exported, name)), name

    meta = export.read_export_metadata(exported)
    assert meta["class_names"] == ["cats", "dogs"]
    assert meta["image_size"] == [32, 32]
    assert meta["source_model_dir"] == os.path.abspath(binary_run[0])
    assert meta["stage"] == "baseline"
    assert meta["version"] == 1
    assert meta["tflite"] == "model.tflite"
    assert meta["catdog_version"] == catdog.__version__
    assert meta["tensorflow_version"] == tf.__version__


def test_auto_version_takes_the_next_free_number(binary_run, tmp_path):
    base = tmp_path / "serving"
    (base / "7").mkdir(parents=True)  # e.g. an older export
    (base / "notes").mkdir()
    assert export.export_saved_model(binary_run[0], base) == str(base / "8")
    assert export.export_saved_model(binary_run[0], base, version=3) == str(base / "3")
    assert export.export_saved_model(binary_run[0], base) == str(base / "9")
    assert _listing(base) == ["3", "7", "8", "9", "notes"]
    with pytest.raises(ValueError, match="is itself a SavedModel"):
        export.export_saved_model(binary_run[0], base / "9")


# --- signatures -------------------------------------------------------------------

def test_signature_specs(exported):
    loaded = tf.saved_model.load(exported)
    assert set(loaded.signatures) == {"serving_default", "serve_images"}
    default = loaded.signatures["serving_default"]
    assert default.structured_input_signature[1] == {
        "image_bytes": tf.TensorSpec([None], tf.string, name="image_bytes")}
    images = loaded.signatures["serve_images"]
    assert images.structured_input_signature[1] == {
        "images": tf.TensorSpec([None, 32, 32, 3], tf.uint8, name="images")}
    for signature in (default, images):
        outputs = signature.structured_outputs
        assert outputs["probabilities"].dtype == tf.float32
        assert outputs["probabilities"].shape.as_list() == [None, 2]
        assert outputs["classes"].dtype == tf.string
        assert outputs["class_names"].dtype == tf.string


def test_serving_default_matches_keras_on_encoded_bytes(binary_run, exported):
    _, model = binary_run
    contents = _mixed_bytes()
    loaded = tf.saved_model.load(exported)

    out = loaded.signatures["serving_default"](image_bytes=tf.constant(contents))

    expected = _keras_probabilities(model, contents, (32, 32))
    probabilities = out["probabilities"].numpy()
    np.testing.assert_allclose(probabilities, expected, atol=1e-5)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1, atol=1e-6)
    names = np.array(["cats", "dogs"])
    assert [c.decode() for c in out["classes"].numpy()] == list(names[expected.argmax(1)])
    assert len(set(out["classes"].numpy())) == 2, "test images should not all agree"
    assert out["class_names"].numpy().tolist() == [[b"cats", b"dogs"]] * len(contents)


def test_serve_images_equals_serving_default_on_the_same_pixels(exported):
    loaded = tf.saved_model.load(exported)
    contents = _mixed_bytes()
    images = tf.stack([decode_and_resize(tf.constant(c), (32, 32)) for c in contents])
    from_images = loaded.signatures["serve_images"](images=images)
    from_bytes = loaded.signatures["serving_default"](image_bytes=tf.constant(contents))
    np.testing.assert_allclose(from_images["probabilities"], from_bytes["probabilities"],
                               atol=1e-6)
    assert from_images["classes"].numpy().tolist() == from_bytes["classes"].numpy().tolist()


def test_empty_and_undecodable_requests(exported):
    serve = tf.saved_model.load(exported).signatures["serving_default"]
    out = serve(image_bytes=tf.zeros([0], tf.string))
    assert out["probabilities"].shape == (0, 2) and out["classes"].shape == (0,)
    # One bad image fails the whole request: a batched op cannot skip rows.
    with pytest.raises(tf.errors.InvalidArgumentError):
        serve(image_bytes=tf.constant([helpers.image_bytes(0), b"not an image"]))


def test_empty_batch_through_serve_images_and_the_serving_functions(binary_run, exported):
    # oneDNN on some CPUs cannot run a convolution or a matmul on zero images;
    # an empty request must still answer, with outputs of the usual shapes.
    loaded = tf.saved_model.load(exported)
    out = loaded.signatures["serve_images"](images=tf.zeros([0, 32, 32, 3], tf.uint8))
    assert out["probabilities"].dtype == tf.float32
    assert out["probabilities"].shape == (0, 2)
    assert out["classes"].shape == (0,) and out["class_names"].shape == (0, 2)
    serving_default, serve_images = export.build_serving_functions(
        binary_run[1], (32, 32), ["cats", "dogs"])
    eager = serving_default(tf.zeros([0], tf.string))
    assert eager["probabilities"].shape == (0, 2) and eager["classes"].shape == (0,)
    traced = tf.function(serve_images)(tf.zeros([0, 32, 32, 3], tf.uint8))
    assert traced["probabilities"].shape == (0, 2)
    # A request with images still runs the network.
    one = loaded.signatures["serve_images"](images=tf.fill([1, 32, 32, 3], tf.constant(200, tf.uint8)))
    assert one["probabilities"].shape == (1, 2)


def test_three_class_non_square_export(softmax_run, tmp_path):
    model_dir, model = softmax_run
    path = export.export_saved_model(model_dir, tmp_path / "serving", version=None)
    assert path == str(tmp_path / "serving")
    loaded = tf.saved_model.load(path)
    spec = loaded.signatures["serve_images"].structured_input_signature[1]["images"]
    assert spec.shape.as_list() == [None, 24, 40, 3]

    contents = _mixed_bytes()
    out = loaded.signatures["serving_default"](image_bytes=tf.constant(contents))

    expected = _keras_probabilities(model, contents, (24, 40))
    np.testing.assert_allclose(out["probabilities"], expected, atol=1e-5)
    names = np.array(["bird", "cat", "dog"])
    assert [c.decode() for c in out["classes"].numpy()] == list(names[expected.argmax(1)])
    assert out["class_names"].shape == (len(contents), 3)
    assert export.read_export_metadata(path)["version"] is None


def test_float16_head_is_served_as_float32(tmp_path):
    # A head left in float16 (mixed precision without dtype="float32").
    model = helpers.build_model(2, head_dtype="mixed_float16")
    assert model.outputs[0].dtype == "float16"
    path = export.export_saved_model(model, tmp_path / "serving", version=None,
                                     class_names=["cats", "dogs"])
    out = tf.saved_model.load(path).signatures["serving_default"](
        image_bytes=tf.constant(_mixed_bytes()[:2]))
    assert out["probabilities"].dtype == tf.float32
    np.testing.assert_allclose(out["probabilities"].numpy().sum(axis=1), 1, atol=1e-3)


def test_serving_functions_same_eagerly_and_in_tf_data(binary_run):
    _, model = binary_run
    serving_default, _ = export.build_serving_functions(model, (32, 32), ["cats", "dogs"])
    contents = tf.constant(_mixed_bytes())
    eager = serving_default(contents)
    in_data = next(iter(tf.data.Dataset.from_tensors(contents).map(serving_default)))
    np.testing.assert_allclose(in_data["probabilities"], eager["probabilities"], atol=1e-6)
    assert in_data["classes"].numpy().tolist() == eager["classes"].numpy().tolist()


# --- loading without catdog ---------------------------------------------------------

_ISOLATED_LOAD = """
import json, sys
# Neither catdog nor Keras may be needed to serve the export.
sys.modules["catdog"] = None
sys.modules["keras"] = None
import tensorflow as tf
loaded = tf.saved_model.load(sys.argv[1])
contents = [open(p, "rb").read() for p in sys.argv[2:]]
out = loaded.signatures["serving_default"](image_bytes=tf.constant(contents))
print(json.dumps({"probabilities": out["probabilities"].numpy().tolist(),
                  "classes": [c.decode() for c in out["classes"].numpy()]}))
"""


def test_export_loads_in_a_process_without_catdog(binary_run, exported, tmp_path):
    _, model = binary_run
    contents = _mixed_bytes()
    paths = []
    for i, c in enumerate(contents):
        paths.append(tmp_path / f"{i}.img")
        paths[-1].write_bytes(c)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["TF_CPP_MIN_LOG_LEVEL"] = "2"

    # -I: isolated mode, so neither cwd nor PYTHONPATH nor user site is on sys.path.
    result = subprocess.run(
        [sys.executable, "-I", "-c", _ISOLATED_LOAD, exported, *map(str, paths)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)

    assert result.returncode == 0, result.stderr
    served = json.loads(result.stdout.strip().splitlines()[-1])
    np.testing.assert_allclose(served["probabilities"],
                               _keras_probabilities(model, contents, (32, 32)), atol=1e-5)
    assert len(served["classes"]) == len(contents)


# --- TFLite ---------------------------------------------------------------------

# tf.lite.Interpreter warns that it moves to the ai_edge_litert package; the
# warning is about the future, the behaviour under test is today's.
@pytest.mark.filterwarnings("ignore:.*tf.lite.Interpreter is deprecated:UserWarning")
def test_tflite_matches_keras(binary_run, exported):
    _, model = binary_run
    interpreter = tf.lite.Interpreter(model_path=os.path.join(exported, "model.tflite"))
    runner = interpreter.get_signature_runner("serve_images")
    contents = _mixed_bytes()
    images = np.stack([decode_and_resize(tf.constant(c), (32, 32)).numpy() for c in contents])

    out = runner(images=images)

    np.testing.assert_allclose(out["probabilities"],
                               _keras_probabilities(model, contents, (32, 32)), atol=1e-4)
    assert out["class_names"].shape == (len(contents), 2)


@pytest.mark.filterwarnings("ignore:.*tf.lite.Interpreter is deprecated:UserWarning")
def test_tflite_answers_an_empty_batch(exported):
    interpreter = tf.lite.Interpreter(model_path=os.path.join(exported, "model.tflite"))
    runner = interpreter.get_signature_runner("serve_images")
    out = runner(images=np.zeros((0, 32, 32, 3), np.uint8))
    assert out["probabilities"].shape == (0, 2)
    assert out["class_names"].shape == (0, 2)
    # The same interpreter still classifies real images afterwards.
    assert runner(images=np.zeros((2, 32, 32, 3), np.uint8))["probabilities"].shape == (2, 2)


def test_missing_tflite_converter_is_a_clear_error_and_leaves_nothing(
        binary_run, tmp_path, monkeypatch):
    monkeypatch.delattr(tf.lite, "TFLiteConverter")
    with pytest.raises(RuntimeError, match="TFLite conversion is unavailable"):
        export.export_saved_model(binary_run[0], tmp_path / "serving", tflite=True)
    assert _listing(tmp_path) == []


# --- atomicity and overwrite ---------------------------------------------------------

def _fail(*args, **kwargs):
    raise OSError("injected failure")


@pytest.mark.parametrize("version", ["auto", None])
def test_failed_export_leaves_no_trace(binary_run, tmp_path, monkeypatch, version):
    monkeypatch.setattr(export, "_write_metadata", _fail)  # after the SavedModel is written
    target = tmp_path / "new" / "serving"
    with pytest.raises(OSError, match="injected failure"):
        export.export_saved_model(binary_run[0], target, version=version)
    assert _listing(tmp_path) == []  # not even the folders it had to create


def test_existing_export_is_an_error_unless_overwrite(binary_run, tmp_path):
    model_dir, model = binary_run
    target = tmp_path / "serving"
    export.export_saved_model(model_dir, target, version=None)
    with pytest.raises(FileExistsError, match=f"{target}' already exists; pass overwrite=True"):
        export.export_saved_model(model_dir, target, version=None)

    # Replaced, not merged: different class names show up, and nothing is left over.
    path = export.export_saved_model(model, target, version=None, overwrite=True,
                                     class_names=["no", "yes"])
    assert export.read_export_metadata(path)["class_names"] == ["no", "yes"]
    assert "model.tflite" not in os.listdir(path)
    assert _listing(tmp_path) == ["serving"]


def test_failed_overwrite_keeps_the_old_export(binary_run, tmp_path, monkeypatch):
    target = tmp_path / "serving"
    export.export_saved_model(binary_run[0], target, version=None)
    before = _listing(target)
    monkeypatch.setattr(export, "_write_metadata", _fail)
    with pytest.raises(OSError, match="injected failure"):
        export.export_saved_model(binary_run[0], target, version=None, overwrite=True)
    assert _listing(tmp_path) == ["serving"] and _listing(target) == before
    assert export.read_export_metadata(target)["class_names"] == ["cats", "dogs"]


def test_overwrite_never_replaces_something_that_is_not_an_export(binary_run, tmp_path):
    target = tmp_path / "serving"
    target.mkdir()
    (target / "keep.txt").write_text("user data")
    with pytest.raises(FileExistsError, match="is not a SavedModel; refusing to replace"):
        export.export_saved_model(binary_run[0], target, version=None, overwrite=True)
    assert (target / "keep.txt").read_text() == "user data"
    assert _listing(tmp_path) == ["serving"]


# --- validation ----------------------------------------------------------------------

def test_bad_arguments_are_clear_errors(binary_run, tmp_path):
    model_dir, model = binary_run
    a_file = tmp_path / "file"
    a_file.write_text("x")
    cases = [
        (dict(model_dir_or_model=model), "class_names is required"),
        (dict(model_dir_or_model=model, class_names=["a", "b", "c"]),
         "outputs 1 value.* 3 class_names"),
        (dict(model_dir_or_model=model, class_names=["a", "b"], image_size=(64, 64)),
         r"image_size \(64, 64\) differs from the model's input size \(32, 32\)"),
        (dict(class_names=["dogs", "cats"]), r"class_names=\['dogs', 'cats'\] differs"),
        (dict(image_size=(40, 40)), r"image_size=\[40, 40\] differs"),
        (dict(image_size=(0, 32)), "image_size must be two positive integers"),
        (dict(version=0), "version must be 'auto', a positive integer or None"),
        (dict(version="latest"), "Received: version='latest'"),
        (dict(export_dir=a_file), "is a file; pass a folder"),
        (dict(export_dir="gs://bucket/serving"), "export_dir must be a local folder"),
        (dict(model_dir_or_model=tmp_path / "nope"), "does not exist"),
    ]
    for overrides, message in cases:
        kwargs = dict(model_dir_or_model=model_dir, export_dir=tmp_path / "serving")
        kwargs.update(overrides)
        with pytest.raises((ValueError, FileNotFoundError), match=message):
            export.export_saved_model(kwargs.pop("model_dir_or_model"),
                                      kwargs.pop("export_dir"), **kwargs)
    assert _listing(tmp_path) == ["file"]


# --- scripts/export.py -------------------------------------------------------------------

def _run_script(*args):
    env = dict(os.environ, PYTHONPATH=REPO, TF_CPP_MIN_LOG_LEVEL="2")
    return subprocess.run([sys.executable, SCRIPT, *map(str, args)], env=env,
                          capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("args, message", [
    (["--export_dir=x"], "--model_dir"),
    (["--model_dir=x"], "--export_dir"),
    (["--model_dir=x", "--export_dir=y", "--version=0"], "--version must be"),
    (["--model_dir=x", "--export_dir=y", "extra"], "unexpected arguments"),
])
def test_script_usage_errors_exit_2(args, message):
    result = _run_script(*args)
    assert result.returncode == 2
    assert message in result.stderr and "Traceback" not in result.stderr


def test_script_exports(binary_run, tmp_path):
    base = tmp_path / "serving"
    result = _run_script(f"--model_dir={binary_run[0]}", f"--export_dir={base}")
    assert result.returncode == 0, result.stderr
    assert f"Exported SavedModel to {base / '1'}" in result.stdout
    assert f"--model_base_path={base}" in result.stdout
    assert export.read_export_metadata(base / "1")["class_names"] == ["cats", "dogs"]


@pytest.mark.slow  # a second TensorFlow start-up; the message itself is tested above
def test_script_refuses_to_clobber_with_exit_2(binary_run, tmp_path):
    export.export_saved_model(binary_run[0], tmp_path / "serving", version=1)
    result = _run_script(f"--model_dir={binary_run[0]}",
                         f"--export_dir={tmp_path / 'serving'}", "--version=1")
    assert result.returncode == 2
    assert "already exists; pass overwrite=True (--overwrite)" in result.stderr
    assert "Traceback" not in result.stderr
