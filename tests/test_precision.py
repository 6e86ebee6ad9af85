"""Tests for catdog.precision: policy resolution and the scoped dtype policy."""

import types

import keras
import numpy as np
import pytest
import tensorflow as tf

from catdog import precision


@pytest.fixture(autouse=True)
def _no_policy_leak():
    before = keras.config.dtype_policy().name
    yield
    assert keras.config.dtype_policy().name == before, "dtype policy leaked"


def _fake_tpu_strategy():
    # Only the class name matters to resolve_policy; a TPU cannot be built here.
    return type("TPUStrategyV2", (), {})()


@pytest.mark.parametrize("flag", precision.POLICY_NAMES)
def test_explicit_flag_is_returned_as_is(flag):
    assert precision.resolve_policy(flag) == flag
    assert precision.resolve_policy(flag, _fake_tpu_strategy()) == flag


def test_auto_is_float32_on_cpu():
    assert not tf.config.list_physical_devices("GPU")
    assert precision.resolve_policy("auto") == "float32"
    assert precision.resolve_policy(
        "auto", tf.distribute.get_strategy()) == "float32"


def test_auto_is_mixed_float16_with_a_gpu(monkeypatch):
    gpu = types.SimpleNamespace(name="/physical_device:GPU:0",
                                device_type="GPU")
    monkeypatch.setattr(tf.config, "list_physical_devices",
                        lambda kind=None: [gpu] if kind == "GPU" else [])
    assert precision.resolve_policy("auto") == "mixed_float16"


def test_auto_is_mixed_bfloat16_under_tpu_strategy():
    assert precision.resolve_policy("auto",
                                    _fake_tpu_strategy()) == "mixed_bfloat16"


def test_unknown_flag_names_the_flag_and_choices():
    with pytest.raises(ValueError) as e:
        precision.resolve_policy("fp16")
    msg = str(e.value)
    assert "--mixed_precision='fp16'" in msg
    for choice in precision.PRECISION_FLAGS:
        assert choice in msg


def _small_model():
    return keras.Sequential([
        keras.Input((8, 8, 3)),
        keras.layers.Conv2D(4, 3, activation="relu"),
        keras.layers.GlobalAveragePooling2D(),
        keras.layers.Dense(1, activation="sigmoid", dtype="float32"),
    ])


def test_mixed_float16_scope_builds_a_mixed_model_and_restores_policy():
    with precision.policy_scope("mixed_float16") as policy:
        assert policy.name == "mixed_float16"
        assert keras.config.dtype_policy().name == "mixed_float16"
        model = _small_model()
        model.compile(optimizer="adam", loss="binary_crossentropy")
    assert keras.config.dtype_policy().name == "float32"

    conv = model.layers[0]
    assert conv.compute_dtype == "float16"
    assert conv.variable_dtype == "float32"
    assert conv.kernel.dtype == "float32"
    assert model.layers[-1].compute_dtype == "float32"
    out = model(np.zeros((2, 8, 8, 3), "uint8"))
    assert keras.backend.standardize_dtype(out.dtype) == "float32"
    assert keras.backend.standardize_dtype(
        conv(tf.zeros((1, 8, 8, 3))).dtype) == "float16"
    assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
    precision.check_float32_outputs(model)


def test_float32_scope_does_not_wrap_the_optimizer():
    with precision.policy_scope("float32"):
        model = _small_model()
        model.compile(optimizer="adam", loss="binary_crossentropy")
    assert model.layers[0].compute_dtype == "float32"
    assert not isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)


def test_bfloat16_scope_computes_in_bfloat16():
    with precision.policy_scope("mixed_bfloat16"):
        model = _small_model()
    assert model.layers[0].compute_dtype == "bfloat16"
    assert model.layers[-1].compute_dtype == "float32"


def test_scope_restores_policy_on_exception_and_when_nested():
    with pytest.raises(RuntimeError):
        with precision.policy_scope("mixed_float16"):
            raise RuntimeError("boom")
    assert keras.config.dtype_policy().name == "float32"

    with precision.policy_scope("mixed_bfloat16"):
        with precision.policy_scope("mixed_float16"):
            assert keras.config.dtype_policy().name == "mixed_float16"
        assert keras.config.dtype_policy().name == "mixed_bfloat16"
    assert keras.config.dtype_policy().name == "float32"


def test_scope_rejects_an_unknown_policy_without_changing_it():
    with pytest.raises(ValueError):
        with precision.policy_scope("float8"):
            pass
    assert keras.config.dtype_policy().name == "float32"


def test_check_float32_outputs_names_a_float16_head():
    with precision.policy_scope("mixed_float16"):
        model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1)],
                                 name="half_head")
    with pytest.raises(ValueError, match=r"'half_head'.*float16.*dtype=\"float32\""):
        precision.check_float32_outputs(model)


def test_mixed_model_trains_in_tf_data_and_stays_finite():
    images = np.random.default_rng(0).integers(0, 255, (8, 8, 8, 3), "uint8")
    labels = np.array([0, 1] * 4, "float32")
    ds = tf.data.Dataset.from_tensor_slices((images, labels)).batch(4)
    with precision.policy_scope("mixed_float16"):
        model = _small_model()
        model.compile(optimizer="adam", loss="binary_crossentropy")
    history = model.fit(ds, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0])
