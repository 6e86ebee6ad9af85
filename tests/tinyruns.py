"""Tiny trained-looking model dirs and encoded images for export/predict tests."""

import json
import os

import keras
import numpy as np
import tensorflow as tf


def build_model(num_classes, input_size=(32, 32), head_dtype="float32"):
    """A tiny classifier taking 0..255 pixels, seeded so outputs vary by image."""
    inputs = keras.Input((*input_size, 3))
    x = keras.layers.Rescaling(1 / 255)(inputs)
    x = keras.layers.Conv2D(
        4, 3, kernel_initializer=keras.initializers.GlorotUniform(seed=1))(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    units, activation = (1, "sigmoid") if num_classes == 2 else (num_classes, "softmax")
    head = keras.layers.Dense(
        units, activation, dtype=head_dtype,
        kernel_initializer=keras.initializers.RandomNormal(stddev=8.0, seed=2))
    model = keras.Model(inputs, head(x))
    # Centre the head on mid-grey so images of different colours get
    # different classes.
    grey = np.full((1, *(s or 8 for s in input_size), 3), 127.5, np.float32)
    features = keras.Model(inputs, x)(grey).numpy()
    head.bias.assign((-(features @ head.kernel.numpy())[0]).astype(head.bias.dtype))
    return model


def write_run(model_dir, model, class_names, image_size):
    """Writes model.keras and a minimal config.json, as a finished run does."""
    os.makedirs(model_dir)
    model.save(os.path.join(model_dir, "model.keras"))
    with open(os.path.join(model_dir, "config.json"), "w") as f:
        json.dump({"stage": "baseline", "class_names": class_names,
                   "data": {"image_size": list(image_size)}}, f)
    return str(model_dir)


def image_bytes(seed, shape=(40, 52, 3), fmt="jpeg"):
    """Random image whose mean colour differs per seed (so classes differ)."""
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, shape[-1:]) * 0.7 + rng.integers(0, 77, shape)
    encode = tf.io.encode_jpeg if fmt == "jpeg" else tf.io.encode_png
    return encode(pixels.astype(np.uint8)).numpy()
