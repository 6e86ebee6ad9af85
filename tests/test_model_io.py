"""Tests for catdog.model_io: loading and checking models, their probabilities."""

import os

import keras
import numpy as np
import pytest
import tensorflow as tf

import helpers
from catdog import export
from catdog import model_io


def _write(path, contents):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(contents)
    return str(path)


@pytest.fixture(scope="module")
def exported(binary_run, tmp_path_factory):
    model_dir, _ = binary_run
    return export.export_saved_model(model_dir, tmp_path_factory.mktemp("exp") / "serving")


@pytest.mark.parametrize("run", ["binary_run", "softmax_run"])
def test_probabilities_of_an_empty_batch(run, request):
    # oneDNN on some CPUs cannot run a convolution on zero images: the empty
    # batch must never reach the network, eagerly or traced.
    _, model = request.getfixturevalue(run)
    num_classes = 2 if model.output.shape[-1] == 1 else model.output.shape[-1]
    probabilities = model_io.probabilities_fn(model, num_classes)
    empty = tf.zeros((0, 32, 32, 3), tf.uint8)
    traced = tf.function(probabilities, input_signature=[
        tf.TensorSpec([None, 32, 32, 3], tf.uint8)])
    for out in (probabilities(empty), traced(empty)):
        assert out.dtype == tf.float32 and out.shape == (0, num_classes)
    full = traced(tf.fill([2, 32, 32, 3], tf.constant(90, tf.uint8)))
    assert full.shape == (2, num_classes)
    np.testing.assert_allclose(full.numpy().sum(axis=1), 1, atol=1e-6)


def test_probabilities_fn_same_eagerly_and_in_tf_data(softmax_run):
    _, model = softmax_run
    fn = model_io.probabilities_fn(model, 3)
    batch = np.random.default_rng(0).integers(0, 256, (4, 24, 40, 3)).astype(np.uint8)
    eager = fn(tf.constant(batch)).numpy()
    in_data = next(iter(tf.data.Dataset.from_tensors(batch).map(fn))).numpy()
    assert eager.dtype == np.float32 and eager.shape == (4, 3)
    np.testing.assert_allclose(eager.sum(axis=1), 1, atol=1e-6)
    np.testing.assert_allclose(in_data, eager, atol=1e-6)


def test_load_saved_model_errors_name_the_path(binary_run, tmp_path):
    model_dir, _ = binary_run
    with pytest.raises(FileNotFoundError, match="training model_dir: pass it as --model_dir"):
        model_io.load_saved_model(model_dir)
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "nothing")):
        model_io.load_saved_model(tmp_path / "nothing")
    broken = tmp_path / "broken"
    _write(broken / "saved_model.pb", b"garbage")
    with pytest.raises(ValueError, match=f"{broken}.* is not a loadable SavedModel"):
        model_io.load_saved_model(broken)


# --- load_catdog_model -------------------------------------------------------------

def test_load_catdog_model_returns_model_and_config(binary_run):
    model_dir, model = binary_run
    loaded, config = model_io.load_catdog_model(model_dir)
    assert isinstance(loaded, keras.Model)
    assert config["class_names"] == ["cats", "dogs"]
    assert loaded.count_params() == model.count_params()
    x = np.full((1, 32, 32, 3), 200, np.float32)
    np.testing.assert_allclose(loaded(x).numpy(), model(x).numpy(), atol=1e-6)


def _bad_model_dirs(root, good_dir):
    """(model_dir, expected message regex) pairs, one per way to be wrong."""
    model_file = os.path.join(good_dir, "model.keras")
    with open(model_file, "rb") as f:
        model_bytes = f.read()

    def run(name, model=model_bytes, config='{"class_names": ["cats", "dogs"]}'):
        folder = root / name
        folder.mkdir()
        if model is not None:
            _write(folder / "model.keras", model)
        if config is not None:
            _write(folder / "config.json", config.encode())
        return str(folder)

    return [
        (str(root / "missing"), "does not exist"),
        (model_file, "is a file, not a folder"),
        (run("no-model", model=None), "No model.keras in model_dir"),
        (run("no-config", config=None), "No config.json .* not a catdog model folder"),
        (run("bad-json", config="{nope"), "config.json' is not a readable JSON config"),
        (run("no-classes", config='{"stage": "baseline"}'), "has no 'class_names'"),
        (run("one-class", config='{"class_names": ["cats"]}'),
         "at least two distinct non-empty strings"),
        (run("garbage", model=b"not a zip"), "model.keras' is not a loadable Keras model"),
        (run("three-classes", config='{"class_names": ["a", "b", "c"]}'),
         "outputs 1 value.* 3 class_names"),
    ]


def test_load_catdog_model_errors_name_the_path_and_what_to_do(binary_run, tmp_path):
    for model_dir, message in _bad_model_dirs(tmp_path, binary_run[0]):
        with pytest.raises((FileNotFoundError, ValueError), match=message) as info:
            model_io.load_catdog_model(model_dir)
        assert model_dir in str(info.value)


def test_load_catdog_model_points_savedmodel_dirs_to_saved_model(exported):
    with pytest.raises(FileNotFoundError, match="exported SavedModel"):
        model_io.load_catdog_model(exported)


def test_load_catdog_model_refuses_lambda_layers(tmp_path):
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Lambda(lambda t: t / 255.0)(inputs)
    x = keras.layers.GlobalAveragePooling2D()(x)
    model = keras.Model(inputs, keras.layers.Dense(1, "sigmoid")(x))
    model_dir = helpers.write_run(tmp_path / "lambda", model, ["cats", "dogs"], (8, 8))
    with pytest.raises(ValueError, match="safe_mode=True"):
        model_io.load_catdog_model(model_dir)
