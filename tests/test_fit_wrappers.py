"""Tests for catdog.fit_wrappers: the XLA and empty-batch models fit trains."""

import numpy as np
import pytest

from catdog import fit_wrappers
from catdog import models
from test_models import _cfg


def test_xla_compiles_the_network_after_augmentation(tmp_path):
    m = models.build_model(_cfg("augmented"), num_classes=2)
    train_model, jit, note = fit_wrappers.xla_training_model(m, "true", gpu=False, replicas=1)
    assert train_model is not m and jit is False
    assert "augmentation" in note and "XLA on" in note
    assert any(isinstance(l, fit_wrappers.XlaNetwork) for l in train_model.layers)
    # Same variables: training the wrapper trains the model that is saved.
    assert {id(w) for w in train_model.trainable_weights} == {id(w) for w in m.trainable_weights}
    models.compile_model(train_model, 2, 1e-2, jit_compile=jit)
    x = np.random.RandomState(0).uniform(0, 255, (8, 32, 32, 3)).astype("float32")
    y = (x.mean(axis=(1, 2, 3)) > 127).astype("float32")[:, None]
    before = m.get_layer("block1_conv").kernel.numpy().copy()
    train_model.fit(x, y, batch_size=4, epochs=1, verbose=0)
    assert not np.allclose(before, m.get_layer("block1_conv").kernel.numpy())
    np.testing.assert_allclose(train_model.predict(x, verbose=0), m.predict(x, verbose=0),
                               rtol=1e-4, atol=1e-5)
    m.save(str(tmp_path / "model.keras"))
    loaded = models.load_model(str(tmp_path))
    assert not any(isinstance(l, fit_wrappers.XlaNetwork) for l in loaded.layers)


def test_xla_choices_without_augmentation_and_off():
    m = models.build_model(_cfg("baseline"), num_classes=2)
    same, jit, note = fit_wrappers.xla_training_model(m, "true", gpu=False, replicas=1)
    assert same is m and jit is True and "whole training step" in note
    same, jit, note = fit_wrappers.xla_training_model(m, "auto", gpu=False, replicas=1)
    assert same is m and jit is False and "XLA off" in note
    same, jit, _ = fit_wrappers.xla_training_model(m, "auto", gpu=True, replicas=2)
    assert jit is False
    same, jit, _ = fit_wrappers.xla_training_model(m, "false", gpu=True, replicas=1)
    assert jit is False


def test_empty_batch_safe_model_evaluates_zero_images_and_shares_weights(tmp_path):
    # A replica of a multi-replica validation can get zero images; oneDNN on
    # some CPUs cannot convolve them. The wrapper answers without the network.
    import tensorflow as tf
    m = models.build_model(_cfg("baseline"), num_classes=2)
    safe = fit_wrappers.empty_batch_safe(m)
    assert [id(w) for w in safe.weights] == [id(w) for w in m.weights]
    out = safe(np.zeros((0, 32, 32, 3), np.float32))
    assert tuple(out.shape) == (0, 1) and out.dtype == "float32"
    x = np.random.RandomState(0).uniform(0, 255, (4, 32, 32, 3)).astype("float32")
    y = np.array([[0], [1], [1], [0]], np.float32)
    models.compile_model(safe, 2, 1e-3)
    with_empty = (tf.data.Dataset.from_tensors((x, y))
                  .concatenate(tf.data.Dataset.from_tensors((x[:0], y[:0]))))
    got = safe.evaluate(with_empty, verbose=0, return_dict=True)
    want = safe.evaluate(x, y, batch_size=4, verbose=0, return_dict=True)
    for name in ("loss", "accuracy", "auc"):
        assert got[name] == pytest.approx(want[name], rel=1e-6), name
    np.testing.assert_allclose(safe.predict(x, verbose=0), m.predict(x, verbose=0))
    # Training goes through unchanged and moves the shared weights; the
    # weight files are interchangeable with the plain model's.
    before = m.get_layer("block1_conv").kernel.numpy().copy()
    safe.fit(x, y, batch_size=4, epochs=1, verbose=0)
    assert not np.allclose(before, m.get_layer("block1_conv").kernel.numpy())
    safe.save_weights(str(tmp_path / "w.weights.h5"))
    other = models.build_model(_cfg("baseline"), num_classes=2)
    other.load_weights(str(tmp_path / "w.weights.h5"))
    np.testing.assert_allclose(other.predict(x, verbose=0), m.predict(x, verbose=0), rtol=1e-6)
