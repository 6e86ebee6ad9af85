"""The augmentation block: random flip, rotation and zoom, inside the model.

Augmentation lives in the model, not in tf.data, so it runs on the
accelerator with the rest of the network, travels with the exported model,
and is inactive at inference by itself (Keras preprocessing layers only act
when ``training=True``): validation data is never augmented.
"""

from __future__ import annotations

from typing import Optional

import keras

AUGMENTATION_NAME = "augmentation"


@keras.saving.register_keras_serializable(package="catdog")
class Augmentation(keras.Sequential):
    """A ``Sequential`` of random layers that is inactive unless training.

    Keras' random layers default to ``training=True`` when called directly,
    so ``layer(images)`` or ``model(images)`` outside ``fit`` would augment.
    This block defaults to ``training=False``: it augments only inside
    ``fit`` / ``train_step`` (or with an explicit ``training=True``), and
    evaluation, prediction and export see the images unchanged.
    """

    def call(self, inputs, training=False, mask=None):
        return super().call(inputs, training=bool(training), mask=mask)


def build_augmentation(flip: str = "horizontal", rotation: float = 0.1,
                       zoom: float = 0.2, seed: Optional[int] = None,
                       name: str = AUGMENTATION_NAME) -> keras.Sequential:
    """Returns the augmentation block as one Keras layer.

    Args:
      flip: ``RandomFlip`` mode, or ``"none"`` to leave it out.
      rotation: ``RandomRotation`` factor (fraction of a full turn); 0 leaves
        it out.
      zoom: ``RandomZoom`` height factor (width follows); 0 leaves it out.
      seed: base seed of the random layers, for reproducible runs.
      name: the block's layer name.

    Returns:
      An :class:`Augmentation` (a ``keras.Sequential``) taking images with values 0..255 and returning
      images of the same shape and range. It always computes in float32 (the
      image transforms are not worth running in float16).
    """
    layers = []
    seed_of = lambda k: None if seed is None else seed + k
    if flip and flip != "none":
        layers.append(keras.layers.RandomFlip(flip, seed=seed_of(0), dtype="float32"))
    if rotation:
        layers.append(keras.layers.RandomRotation(rotation, seed=seed_of(1),
                                                  dtype="float32"))
    if zoom:
        layers.append(keras.layers.RandomZoom(zoom, seed=seed_of(2), dtype="float32"))
    return Augmentation(layers, name=name)
