"""Tests for catdog.keras_patches: the Keras multi-worker fit() fix.

The first two tests detect upstream changes: when they fail, Keras moved
or fixed the patched code, and the fix must be re-verified or deleted.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf

from catdog import keras_patches
from helpers import FakeMultiWorker
from test_distribute import WORKERS


@pytest.fixture(autouse=True)
def _unpatched_keras():
    yield
    keras_patches.remove_keras_multiworker_fix()



def _trainer():
    from keras.src.backend.tensorflow import trainer  # pylint: disable=g-import-not-at-top
    return trainer


def test_keras_still_has_the_multiworker_bugs():
    # Fails when Keras fixes or rewrites the patched code: then re-check
    # whether apply_keras_multiworker_fix is still needed (or still right).
    assert keras_patches.keras_multiworker_bug_present()


def test_keras_version_is_within_the_tested_range():
    low, high = keras_patches.TESTED_KERAS_VERSIONS
    version = tuple(int(p) for p in keras.__version__.split(".")[:2])
    assert low <= version <= high, (
        f"Keras {keras.__version__} is outside the range the multi-worker "
        f"fix was verified on; rerun the slow tests and update "
        f"TESTED_KERAS_VERSIONS.")


def test_fix_is_idempotent_restorable_and_only_for_multi_worker():
    trainer = _trainer()
    build = trainer.TensorFlowTrainer._maybe_symbolic_build
    reduce = trainer.reduce_per_replica

    assert not keras_patches.apply_keras_multiworker_fix(
        tf.distribute.get_strategy())
    assert not keras_patches.keras_multiworker_fix_active()
    assert trainer.reduce_per_replica is reduce

    assert keras_patches.apply_keras_multiworker_fix(
        FakeMultiWorker(WORKERS, "worker", 0))
    assert keras_patches.apply_keras_multiworker_fix()
    assert keras_patches.keras_multiworker_fix_active()
    assert getattr(trainer.reduce_per_replica, "_catdog_patch", False)
    assert getattr(trainer.TensorFlowTrainer._maybe_symbolic_build,
                   "_catdog_patch", False)
    # The detector looks at the original code, not at the patch.
    assert keras_patches.keras_multiworker_bug_present()

    keras_patches.remove_keras_multiworker_fix()
    keras_patches.remove_keras_multiworker_fix()
    assert trainer.TensorFlowTrainer._maybe_symbolic_build is build
    assert trainer.reduce_per_replica is reduce
    assert not keras_patches.keras_multiworker_fix_active()


def test_fix_does_not_change_single_process_training():
    assert keras_patches.apply_keras_multiworker_fix()
    x = np.random.default_rng(0).normal(size=(16, 3)).astype("float32")
    y = (x[:, :1] > 0).astype("float32")
    ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(4,
                                                          drop_remainder=True)
    for strategy in (tf.distribute.get_strategy(),
                     tf.distribute.MirroredStrategy(["/cpu:0"])):
        with strategy.scope():
            model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
            model.compile(optimizer="sgd", loss="mse", metrics=["mae"])
        history = model.fit(ds, validation_data=ds, epochs=2, verbose=0)
        assert set(history.history) == {"loss", "mae", "val_loss", "val_mae"}
        assert all(np.isfinite(v).all() for v in history.history.values())
        assert len(model.evaluate(ds, verbose=0)) == 2
