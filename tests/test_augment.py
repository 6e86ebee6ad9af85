import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import tensorflow as tf

from catdog import augment
from helpers import REPO


def test_block_has_the_recipe_layers_and_keeps_shape_and_range():
    block = augment.build_augmentation(seed=1)
    kinds = [type(l).__name__ for l in block.layers]
    assert kinds == ["RandomFlip", "RandomRotation", "RandomZoom"]
    x = np.random.RandomState(0).uniform(0, 255, (4, 32, 32, 3)).astype("float32")
    y = block(x, training=True).numpy()
    assert y.shape == x.shape and y.dtype == np.float32
    assert y.min() >= 0 and y.max() <= 255.5
    assert not np.allclose(y, x)


def test_inactive_at_inference():
    block = augment.build_augmentation(seed=1)
    x = np.random.RandomState(0).uniform(0, 255, (2, 16, 16, 3)).astype("float32")
    np.testing.assert_array_equal(block(x, training=False).numpy(), x)
    np.testing.assert_array_equal(block(x).numpy(), x)


def test_zero_strength_leaves_layers_out():
    block = augment.build_augmentation(flip="none", rotation=0.0, zoom=0.2)
    assert [type(l).__name__ for l in block.layers] == ["RandomZoom"]


def test_works_inside_tf_data():
    block = augment.build_augmentation(seed=3)
    ds = tf.data.Dataset.from_tensors(tf.ones((2, 8, 8, 3)) * 100).map(
        lambda x: block(x, training=True))
    out = next(iter(ds))
    assert out.shape == (2, 8, 8, 3)


def test_same_seed_augments_reproducibly_on_one_replica():
    x = np.random.RandomState(0).uniform(0, 255, (4, 24, 24, 3)).astype("float32")
    first, second = augment.build_augmentation(seed=3), augment.build_augmentation(seed=3)
    a1, b1 = first(x, training=True).numpy(), second(x, training=True).numpy()
    np.testing.assert_array_equal(a1, b1)
    a2 = first(x, training=True).numpy()
    np.testing.assert_array_equal(a2, second(x, training=True).numpy())
    assert not np.allclose(a1, a2)  # each step draws new transforms
    other = augment.build_augmentation(seed=4)(x, training=True).numpy()
    assert not np.allclose(a1, other)


# Two replicas (logical CPU devices) fed the SAME batch: with one shared seed
# they would flip, rotate and zoom image i identically.
_REPLICAS_SCRIPT = textwrap.dedent("""
    import json, os, sys
    import tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    import keras, numpy as np
    from catdog import augment

    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    x = np.random.RandomState(0).uniform(0, 255, (4, 24, 24, 3)).astype("float32")
    same_batch = strategy.experimental_distribute_values_from_function(
        lambda ctx: tf.constant(x))

    def replica_outputs(layer, training):
        @tf.function
        def step(batch):
            return strategy.run(lambda t: layer(t, training=training), args=(batch,))
        return [r.numpy() for r in strategy.experimental_local_results(step(same_batch))]

    def report(layer):
        step1, step2 = replica_outputs(layer, True), replica_outputs(layer, True)
        inference = replica_outputs(layer, False)
        return {
            "replicas_differ": [not np.allclose(*step1), not np.allclose(*step2)],
            "augmented": [not np.allclose(r, x) for r in step1 + step2],
            "steps_differ": [not np.allclose(a, b) for a, b in zip(step1, step2)],
            "inference_unchanged": all(np.array_equal(r, x) for r in inference),
        }

    with strategy.scope():
        block = augment.build_augmentation(seed=7)
    out = {"block": report(block)}
    # The same block after a round trip through model.keras (safe mode).
    inputs = keras.Input((24, 24, 3))
    model = keras.Model(inputs, augment.build_augmentation(seed=7)(inputs))
    path = os.path.join(sys.argv[1], "aug.keras")
    model.save(path)
    with strategy.scope():
        loaded = keras.saving.load_model(path, safe_mode=True)
    out["loaded"] = report(loaded)
    print("RESULT " + json.dumps(out))
""")


def test_replicas_draw_different_transforms(tmp_path):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=REPO)
    proc = subprocess.run([sys.executable, "-c", _REPLICAS_SCRIPT, str(tmp_path)],
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = [l for l in proc.stdout.splitlines() if l.startswith("RESULT ")][-1]
    out = json.loads(line[len("RESULT "):])
    for name in ("block", "loaded"):
        assert out[name]["replicas_differ"] == [True, True], (name, out)
        assert all(out[name]["augmented"]), (name, out)
        assert all(out[name]["steps_differ"]), (name, out)
        assert out[name]["inference_unchanged"], (name, out)
