r"""Using catdog's pieces inside your own TensorFlow code.

Runs as is, on generated images (no download):

  python examples/embed.py

or on a folder of class subfolders (e.g. training_set/ with cats/ and dogs/):

  python examples/embed.py --data_dir=training_set [--val_dir=test_set]

Each step is one thing a larger pipeline takes from catdog; every piece is a
plain tf.data.Dataset or a plain Keras object:

1. a batched tf.data.Dataset of (uint8 images, labels) from a folder;
2. catdog's decode + resize mapped inside your own tf.data pipeline;
3. the augmentation block as a Keras layer inside your own model;
4. a stage's model built from its preset;
5. training with your own tf.GradientTape loop, then with fit().
"""

import tempfile

from absl import app
from absl import flags
import keras
import numpy as np
import tensorflow as tf

from catdog import augment
from catdog import config
from catdog import data
from catdog import demo
from catdog import models

_DATA_DIR = flags.DEFINE_string(
    "data_dir", None,
    "Folder with one subfolder of images per class; default: generated images.")
_VAL_DIR = flags.DEFINE_string(
    "val_dir", None, "Validation folder; default: 20% of --data_dir held out.")
_IMAGE_SIZE = flags.DEFINE_integer("image_size", 64, "Image side after resizing.")
_STEPS = flags.DEFINE_integer("steps", 30, "Steps of the custom training loop.")


def main(argv):
    del argv
    if _DATA_DIR.value:
        run(_DATA_DIR.value, _VAL_DIR.value or "")
        return
    with tempfile.TemporaryDirectory(prefix="catdog-embed-") as tmp:
        folders = demo.make_demo_folder(tmp, train_per_class=48, val_per_class=16,
                                        size=64)
        run(folders["train_dir"], folders["val_dir"])


def run(train_dir, val_dir):
    """Runs the five steps on a training (and optional validation) folder."""
    keras.utils.set_random_seed(0)
    size = (_IMAGE_SIZE.value, _IMAGE_SIZE.value)

    # 1. A tf.data.Dataset from a folder. Bad files are skipped and reported;
    #    batches are uint8 (B, H, W, 3) images and labels (float (B, 1) for
    #    two classes, int (B,) for more). Rescaling happens in the model.
    data_config = config.DataConfig(train_dir=train_dir, val_dir=val_dir,
                                    image_size=size, batch_size=16)
    train_ds, val_ds, index = data.build_datasets(data_config, progress=False)
    print(f"1. classes {index.class_names}: {len(index.train)} training, "
          f"{len(index.val)} validation images; batches {train_ds.element_spec}")

    # 2. catdog's decode + resize inside your own pipeline: the same pixels
    #    as training, evaluation and the exported model.
    files = tf.data.Dataset.from_tensor_slices(index.val.paths)
    own = (files.map(lambda path: data.decode_and_resize(tf.io.read_file(path), size),
                     num_parallel_calls=tf.data.AUTOTUNE)
           .batch(8))
    first = next(iter(own))
    print(f"2. own pipeline: {first.dtype.name} batch {tuple(first.shape)}")

    # 3. The augmentation block as a layer of your own model. It augments
    #    only when the model trains (fit, or training=True), never at inference.
    inputs = keras.Input((*size, 3))
    x = augment.build_augmentation(flip="horizontal", rotation=0.1, zoom=0.2, seed=0)(inputs)
    x = keras.layers.Rescaling(1 / 255)(x)
    x = keras.layers.Conv2D(8, 3, activation="relu")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(1, activation="sigmoid")(x)
    own_model = keras.Model(inputs, outputs)
    images = tf.cast(first, tf.float32)
    same = np.allclose(own_model(images), own_model(images))
    print(f"3. own model with augmentation: inference is deterministic: {same}")

    # 4. A stage's model from its preset (here the baseline CNN), for the
    #    dataset's image size and classes.
    stage = config.baseline()
    stage.data.image_size = size
    stage.model.dropout = 0.0  # so the loss below is a clean signal
    model = models.build_model(stage, index.num_classes)
    print(f"4. {model.name}: {model.count_params()} parameters, output "
          f"{tuple(model.output.shape)}")

    # 5a. Your own training step.
    loss_fn = (keras.losses.BinaryCrossentropy() if index.num_classes == 2
               else keras.losses.SparseCategoricalCrossentropy())
    optimizer = keras.optimizers.Adam(1e-3)

    @tf.function
    def train_step(images, labels):
        with tf.GradientTape() as tape:
            loss = loss_fn(labels, model(images, training=True))
        grads = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables))
        return loss

    losses = [float(train_step(x, y)) for x, y in train_ds.repeat().take(_STEPS.value)]
    k = max(1, len(losses) // 5)
    print(f"5a. custom loop: mean loss of the first {k} steps {np.mean(losses[:k]):.3f}, "
          f"of the last {k} steps {np.mean(losses[-k:]):.3f}")

    # 5b. Or Keras' fit, with catdog's compile settings.
    models.compile_model(model, index.num_classes, learning_rate=1e-3)
    history = model.fit(train_ds, validation_data=val_ds, epochs=1, verbose=0,
                        shuffle=False)  # the dataset shuffles itself
    print(f"5b. fit: val_accuracy {history.history['val_accuracy'][-1]:.3f}")


if __name__ == "__main__":
    app.run(main)
