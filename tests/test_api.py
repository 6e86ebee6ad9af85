"""The library API as code embedding catdog in its own TensorFlow pipeline uses it.

Mirrors examples/embed.py: datasets from a folder, decode_and_resize in a
user's tf.data pipeline, the augmentation block inside a user's model, a
stage's model from its preset, and training with a user's own
tf.GradientTape loop or fit().
"""

import os
import subprocess
import sys

import keras
import numpy as np
import tensorflow as tf

from helpers import REPO, make_class_folder, write_image
from catdog import augment
from catdog import config
from catdog import data
from catdog import models


def _data_config(train_dir, val_dir, size=32, batch_size=8):
    return config.DataConfig(train_dir=train_dir, val_dir=val_dir,
                             image_size=(size, size), batch_size=batch_size)


def test_build_datasets_gives_plain_uint8_batches(tiny_folders):
    train_dir, val_dir = tiny_folders
    train_ds, val_ds, index = data.build_datasets(_data_config(train_dir, val_dir),
                                                  progress=False)
    assert isinstance(train_ds, tf.data.Dataset) and isinstance(val_ds, tf.data.Dataset)
    images, labels = train_ds.element_spec
    # Training batches have a fully static shape (drop_remainder).
    assert images.shape == (8, 32, 32, 3) and images.dtype == tf.uint8
    assert labels.shape == (8, 1) and labels.dtype == tf.float32
    assert index.class_names == ["cats", "dogs"]
    # Validation keeps every image: 12 = 8 + a partial batch of 4.
    assert [int(x.shape[0]) for x, _ in val_ds] == [8, 4]
    # The datasets compose with ordinary tf.data ops.
    n = train_ds.unbatch().map(lambda x, y: y).reduce(0, lambda c, _: c + 1)
    assert int(n) == 32


def test_multiclass_labels_are_integers(tmp_path):
    root = make_class_folder(tmp_path / "three", classes=("a", "b", "c"), per_class=4)
    dc = _data_config(root, "", batch_size=4)
    dc.validation_split = 0.25
    train_ds, _, index = data.build_datasets(dc, progress=False)
    assert index.num_classes == 3
    assert train_ds.element_spec[1].dtype == tf.int32
    assert train_ds.element_spec[1].shape == (4,)


def test_decode_and_resize_eager_and_in_own_pipeline(tmp_path):
    rng = np.random.RandomState(0)
    paths = [write_image(str(tmp_path / "a.png"), rng.randint(0, 255, (30, 50, 3), np.uint8)),
             write_image(str(tmp_path / "b.jpg"), rng.randint(0, 255, (17, 9, 3), np.uint8))]
    eager = [data.decode_and_resize(tf.io.read_file(p), (24, 20)).numpy() for p in paths]
    ds = (tf.data.Dataset.from_tensor_slices(paths)
          .map(lambda p: data.decode_and_resize(tf.io.read_file(p), (24, 20)),
               num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
          .batch(2))
    batch = next(iter(ds))
    assert batch.dtype == tf.uint8 and batch.shape == (2, 24, 20, 3)
    assert ds.element_spec.shape.as_list() == [None, 24, 20, 3]  # static image shape
    np.testing.assert_array_equal(batch.numpy(), np.stack(eager))
    # The same pixels as catdog's own input pipeline.
    built = data.build_dataset(paths, [0, 1], num_classes=2, image_size=(24, 20),
                               batch_size=2, training=False, cache="none",
                               deterministic=True)
    np.testing.assert_array_equal(next(iter(built))[0].numpy(), batch.numpy())


def _own_model_with_augmentation(size=32):
    inputs = keras.Input((size, size, 3))
    x = augment.build_augmentation("horizontal", 0.1, 0.2, seed=0)(inputs)
    x = keras.layers.Rescaling(1 / 255)(x)
    outputs = keras.layers.Conv2D(2, 3, name="conv")(x)
    return keras.Model(inputs, outputs)


def test_augmentation_block_inside_own_model(tmp_path):
    model = _own_model_with_augmentation()
    images = tf.constant(np.random.RandomState(1).uniform(0, 255, (4, 32, 32, 3)),
                         tf.float32)
    # Inactive at inference, whether called directly or by predict().
    np.testing.assert_allclose(model(images), model(images), atol=1e-6)
    np.testing.assert_allclose(model.predict(images, verbose=0), model(images), atol=1e-5)
    # Active when the user's model trains.
    trained = model(images, training=True)
    assert np.abs(trained.numpy() - model(images).numpy()).mean() > 1e-3
    # The block has no weights and the model saves / loads in safe mode.
    assert model.layers[1].count_params() == 0
    path = str(tmp_path / "own.keras")
    model.save(path)
    loaded = keras.models.load_model(path, safe_mode=True)
    np.testing.assert_allclose(loaded(images), model(images), atol=1e-5)


def test_stage_model_from_preset_takes_dataset_batches(tiny_folders):
    train_dir, val_dir = tiny_folders
    train_ds, _, index = data.build_datasets(_data_config(train_dir, val_dir),
                                             progress=False)
    stage = config.baseline()
    stage.data.image_size = (32, 32)
    model = models.build_model(stage, index.num_classes)
    assert model.output.shape == (None, 1) and model.output.dtype == "float32"
    images, _ = next(iter(train_ds))
    probs = model(images).numpy()  # uint8 batches go straight in
    assert probs.shape == (8, 1) and ((probs >= 0) & (probs <= 1)).all()
    three = models.build_model(stage, 3)
    out = three(images).numpy()
    assert out.shape == (8, 3)
    np.testing.assert_allclose(out.sum(axis=1), 1.0, atol=1e-5)


def test_own_gradient_tape_loop_learns(tiny_folders):
    keras.utils.set_random_seed(0)
    train_dir, val_dir = tiny_folders
    train_ds, _, _ = data.build_datasets(_data_config(train_dir, val_dir), progress=False)
    stage = config.baseline()
    stage.data.image_size = (32, 32)
    stage.model.dropout = 0.0  # a noise-free loss to compare
    model = models.build_model(stage, 2)
    loss_fn = keras.losses.BinaryCrossentropy()
    optimizer = keras.optimizers.Adam(1e-3)

    @tf.function
    def train_step(x, y):
        with tf.GradientTape() as tape:
            loss = loss_fn(y, model(x, training=True))
        grads = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables))
        return loss

    fixed_x, fixed_y = next(iter(train_ds))

    def loss_on_fixed_batch():
        return float(loss_fn(fixed_y, model(fixed_x, training=True)))

    before = loss_on_fixed_batch()
    losses = [float(train_step(x, y)) for x, y in train_ds.repeat().take(20)]
    after = loss_on_fixed_batch()
    assert all(np.isfinite(losses))
    assert after < 0.5 * before, (before, after, losses)


def test_fit_with_catdog_compile(tiny_folders):
    keras.utils.set_random_seed(0)
    train_dir, val_dir = tiny_folders
    train_ds, val_ds, index = data.build_datasets(_data_config(train_dir, val_dir),
                                                  progress=False)
    stage = config.augmented()
    stage.data.image_size = (32, 32)
    model = models.compile_model(models.build_model(stage, index.num_classes), 2, 1e-3)
    history = model.fit(train_ds, validation_data=val_ds, epochs=1, verbose=0,
                        shuffle=False)
    assert {"loss", "accuracy", "val_accuracy", "val_auc"} <= set(history.history)


def test_example_runs_on_generated_images():
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=REPO)
    proc = subprocess.run([sys.executable, os.path.join(REPO, "examples", "embed.py"),
                           "--image_size=32", "--steps=12"],
                          capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for step in ("1.", "2.", "3.", "4.", "5a.", "5b."):
        assert any(line.startswith(step) for line in proc.stdout.splitlines()), proc.stdout
    assert "deterministic: True" in proc.stdout
