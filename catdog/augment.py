"""The augmentation block: random flip, rotation and zoom, inside the model.

Augmentation lives in the model, not in tf.data, so it runs on the
accelerator with the rest of the network, travels with the exported model,
and is inactive at inference by itself (Keras preprocessing layers only act
when ``training=True``): validation data is never augmented.

Under a multi-replica strategy every replica augments its own images
differently: the block folds the (global) replica id into the seeds its
layers draw, see :class:`_ReplicaSeedGenerator`.
"""

from __future__ import annotations

from typing import Optional

import keras
import tensorflow as tf

from catdog import config as config_lib

AUGMENTATION_NAME = "augmentation"


class _ReplicaSeedGenerator(keras.random.SeedGenerator):
    """A ``SeedGenerator`` whose seeds differ from replica to replica.

    Keras random layers draw every transform from their ``SeedGenerator``,
    whose state is one variable. Created under a strategy it is mirrored:
    every replica starts from the same state and advances it in step, so
    image i of every replica's batch would get the same flip, rotation and
    zoom. Here each seed handed out has the replica id folded in
    (``tf.random.experimental.stateless_fold_in``); the state itself stays
    identical on all replicas (and in checkpoints). With a single replica
    the seeds are exactly Keras' own.
    """

    def next(self, ordered=True):
        seed = super().next(ordered=ordered)
        # Per thread and graph: each replica of MirroredStrategy traces its
        # own call; MultiWorkerMirroredStrategy gives the id across workers.
        context = tf.distribute.get_replica_context()
        if context is None or context.num_replicas_in_sync == 1:
            return seed
        replica = tf.cast(context.replica_id_in_sync_group, seed.dtype)
        return tf.random.experimental.stateless_fold_in(seed, replica)


def _fold_replica_id_into_seeds(layer: keras.layers.Layer) -> None:
    """Makes every seed generator of ``layer`` (and its sublayers) per replica.

    The generators keep their identity, state variable and seed, so saved
    weights, configs and each layer's transforms are unchanged; only the
    seeds drawn under several replicas differ.
    """
    for sublayer in layer._flatten_layers(include_self=True, recursive=True):  # pylint: disable=protected-access
        for generator in sublayer._seed_generators:  # pylint: disable=protected-access
            if type(generator) is keras.random.SeedGenerator:  # pylint: disable=unidiomatic-typecheck
                generator.__class__ = _ReplicaSeedGenerator


@keras.saving.register_keras_serializable(package="catdog")
class Augmentation(keras.Sequential):
    """A ``Sequential`` of random layers that is inactive unless training.

    Keras' random layers default to ``training=True`` when called directly,
    so ``layer(images)`` or ``model(images)`` outside ``fit`` would augment.
    This block defaults to ``training=False``: it augments only inside
    ``fit`` / ``train_step`` (or with an explicit ``training=True``), and
    evaluation, prediction and export see the images unchanged.

    Under a strategy with several replicas (GPUs, workers) each replica draws
    its own transforms, whatever random layers the block holds.
    """

    def add(self, layer, rebuild=True):
        # Every path that fills the block (the constructor, from_config when
        # model.keras is loaded) adds its layers here.
        super().add(layer, rebuild=rebuild)
        _fold_replica_id_into_seeds(layer)

    def call(self, inputs, training=False, mask=None):
        return super().call(inputs, training=bool(training), mask=mask)


def build_augmentation(flip: str = "horizontal", rotation: float = 0.1,
                       zoom: float = 0.2, seed: Optional[int] = None,
                       name: str = AUGMENTATION_NAME, *, zoom_width: Optional[float] = None,
                       translation: float = 0.0, shear: float = 0.0,
                       brightness: float = 0.0, contrast: float = 0.0,
                       fill_mode: str = "reflect", fill_value: float = 0.0) -> keras.Sequential:
    """Returns the augmentation block as one Keras layer.

    A strength of 0 leaves its layer out; the defaults are flip, rotation and
    zoom only. The settings are those of :class:`catdog.config.ModelConfig`.

    Args:
      flip: ``RandomFlip`` mode, or ``"none"`` to leave it out.
      rotation: ``RandomRotation`` factor (fraction of a full turn).
      zoom: ``RandomZoom`` height factor.
      seed: base seed of the random layers, for reproducible runs.
      name: the block's layer name.
      zoom_width: ``RandomZoom`` width factor, drawn independently of the
        height's; ``None``: the width follows the height (aspect ratio kept).
      translation: ``RandomTranslation`` height and width factor.
      shear: ``RandomShear`` x_factor (horizontal shear).
      brightness: ``RandomBrightness`` factor (fraction of 0..255).
      contrast: ``RandomContrast`` factor.
      fill_mode: how rotation, zoom, translation and shear fill pixels from
        outside the image (``"reflect"``, ``"wrap"``, ``"constant"``,
        ``"nearest"``).
      fill_value: the pixel value of ``fill_mode="constant"``.

    Returns:
      An :class:`Augmentation` (a ``keras.Sequential``) taking images with values 0..255 and returning
      images of the same shape and range. It always computes in float32 (the
      image transforms are not worth running in float16).
    """
    layers = []
    seed_of = lambda k: None if seed is None else seed + k
    fill = {"fill_mode": fill_mode, "fill_value": float(fill_value), "dtype": "float32"}
    if flip and flip != "none":
        layers.append(keras.layers.RandomFlip(flip, seed=seed_of(0), dtype="float32"))
    if rotation:
        layers.append(keras.layers.RandomRotation(rotation, seed=seed_of(1), **fill))
    if zoom or zoom_width:
        # RandomZoom needs a height factor; 0 with a width factor zooms x only.
        layers.append(keras.layers.RandomZoom(zoom, zoom_width, seed=seed_of(2), **fill))
    if translation:
        layers.append(keras.layers.RandomTranslation(translation, translation,
                                                     seed=seed_of(3), **fill))
    if shear:
        layers.append(keras.layers.RandomShear(x_factor=shear, seed=seed_of(4), **fill))
    if brightness:
        layers.append(keras.layers.RandomBrightness(brightness, value_range=(0, 255),
                                                    seed=seed_of(5), dtype="float32"))
    if contrast:
        layers.append(keras.layers.RandomContrast(contrast, value_range=(0, 255),
                                                  seed=seed_of(6), dtype="float32"))
    return Augmentation(layers, name=name)


def from_model_config(model_config, seed: Optional[int] = None) -> keras.Sequential:
    """The block of a :class:`catdog.config.ModelConfig`'s augmentation settings."""
    return build_augmentation(seed=seed, **{name: getattr(model_config, name)
                                            for name in config_lib.AUGMENTATION_SETTINGS})
