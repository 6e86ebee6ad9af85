"""The augmentation block: random flip, rotation, zoom and more, inside the model.

Augmentation lives in the model, not in tf.data, so it runs on the
accelerator with the rest of the network, travels with the exported model,
and is inactive at inference by itself (Keras preprocessing layers only act
when ``training=True``): validation data is never augmented.

Under a multi-replica strategy every replica augments its own images
differently: the block folds the (global) replica id into the seeds its
layers draw, see :class:`_ReplicaSeedGenerator`.

:func:`build_augmentation` builds the block from catdog's settings (the
augmentation flags); :func:`from_image_data_generator` from the arguments of
Keras' old ``ImageDataGenerator``, in its units.
"""

from __future__ import annotations

import math
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
                       fill_mode: str = "reflect", fill_value: float = 0.0,
                       rand_augment: bool = False, rand_augment_magnitude: float = 0.5,
                       rand_augment_num_ops: int = 2) -> keras.Sequential:
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
      rand_augment: append Keras' ``RandAugment`` (on 0..255 pixels) after
        the other layers.
      rand_augment_magnitude: ``RandAugment``'s ``factor`` (0..1).
      rand_augment_num_ops: ``RandAugment``'s ``num_ops``, operations drawn
        per batch.

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
    if rand_augment:
        layers.append(keras.layers.RandAugment(
            value_range=(0, 255), num_ops=int(rand_augment_num_ops),
            factor=float(rand_augment_magnitude), seed=seed_of(7), dtype="float32"))
    return Augmentation(layers, name=name)


def from_model_config(model_config, seed: Optional[int] = None) -> keras.Sequential:
    """The block of a :class:`catdog.config.ModelConfig`'s augmentation settings."""
    return build_augmentation(seed=seed, **{name: getattr(model_config, name)
                                            for name in config_lib.AUGMENTATION_SETTINGS})


# --------------------------------------------------------------------------
# MixUp and CutMix: training batches in tf.data, labels mixed with the images
# --------------------------------------------------------------------------

#: Added to the run's seed for the mixing layers (the block's layers take seed + 0..7).
MIX_SEED_OFFSET = 100


def mix_batches(dataset: tf.data.Dataset, num_classes: int, *, mixup: float = 0.0,
                cutmix: float = 0.0, seed: Optional[int] = None) -> tf.data.Dataset:
    """Training batches mixed by Keras' ``MixUp`` and/or ``CutMix``, labels included.

    They change the labels, so they cannot live in the model (which sees
    images only); they act on batched ``(images, labels)`` of the training
    split. With both alphas set, each batch gets one of the two, chosen at
    random with equal chances (as timm's ``Mixup`` switches).

    Args:
      dataset: batches of ``(uint8 images, labels)`` in catdog's label
        encoding: float ``(batch, 1)`` for two classes, int ``(batch,)``
        for more.
      num_classes: classes of the labels.
      mixup: ``MixUp`` alpha (weights from Beta(alpha, alpha)); 0: off.
      cutmix: ``CutMix`` alpha in (0, 1] (the share of each image kept is
        drawn from Beta(alpha, alpha)); 0: off.
      seed: seed of the mixing; every worker of a job passes its own.

    Returns:
      Batches of ``(float32 images in 0..255, float32 labels)``: ``(batch,
      1)`` probabilities of the second class for two classes, one-hot rows
      mixed for more (what ``BinaryCrossentropy`` and
      ``CategoricalCrossentropy`` take).
    """
    seed_of = lambda k: None if seed is None else seed + k
    mixers = []
    if mixup:
        mixers.append(keras.layers.MixUp(alpha=float(mixup), seed=seed_of(0),
                                         dtype="float32"))
    if cutmix:
        # A factor (a, a) draws Beta(a, a) itself; Keras' CutMix otherwise
        # first draws its alpha uniformly from (0, factor).
        mixers.append(keras.layers.CutMix(factor=(float(cutmix), float(cutmix)),
                                          seed=seed_of(1), dtype="float32"))
    if not mixers:
        raise ValueError("mix_batches needs mixup > 0 or cutmix > 0.")
    choice = keras.random.SeedGenerator(seed_of(2))

    def mix(images, labels):
        labels = soft_label_encoding(labels, num_classes)
        data = {"images": tf.cast(images, tf.float32), "labels": labels}
        if len(mixers) == 1:
            out = mixers[0](data)
        else:
            first = keras.random.uniform((), seed=choice) < 0.5
            out = tf.cond(first, lambda: mixers[0](dict(data)), lambda: mixers[1](dict(data)))
        return out["images"], out["labels"]

    # Sequential on purpose: the layers draw from seed generators (variables),
    # and batches mixed in parallel would read the same state and get the
    # same mixing. Prefetched, it overlaps the training step (its cost is in
    # BUILD_NOTES.md).
    return dataset.map(mix).prefetch(tf.data.AUTOTUNE)


def soft_label_encoding(labels, num_classes: int):
    """catdog's hard labels as float32 soft-label targets (one-hot for >2 classes)."""
    if num_classes > 2:
        return tf.one_hot(tf.cast(labels, tf.int32), num_classes, dtype=tf.float32)
    return tf.cast(labels, tf.float32)


# --------------------------------------------------------------------------
# ImageDataGenerator's arguments, as a Keras block
# --------------------------------------------------------------------------

GENERATOR_BLOCK_NAME = "image_data_generator"
FEATUREWISE_NAME = "featurewise_normalization"

#: ImageDataGenerator arguments with no Keras layer, and what to use instead.
_NO_EQUIVALENT = {
    "zca_whitening": "Keras has no ZCA layer: whiten the images offline (a PCA of the "
                     "training images) or leave it out",
    "zca_epsilon": "it belongs to zca_whitening, which has no Keras layer",
    "preprocessing_function": "put the function in the model as a Keras layer (a "
                              "keras.layers.Layer subclass, so it is saved and exported "
                              "with it) or map it over the tf.data dataset",
    "data_format": "catdog images are channels_last; leave data_format out",
    "dtype": "catdog's block computes in float32; leave dtype out",
}


@keras.saving.register_keras_serializable(package="catdog")
class RandomBrightnessScale(keras.layers.Layer):
    """Multiplies each image by a random factor, as ImageDataGenerator's ``brightness_range``.

    Keras' ``RandomBrightness`` adds an offset; the generator scales pixel
    values (PIL's ``ImageEnhance.Brightness``). Results stay in 0..255.
    Active only with ``training=True``.
    """

    def __init__(self, lower: float, upper: float, seed: Optional[int] = None, **kwargs):
        super().__init__(**kwargs)
        self.lower, self.upper, self.seed = float(lower), float(upper), seed
        self.generator = keras.random.SeedGenerator(seed)

    def call(self, inputs, training=True):
        if not training:
            return inputs
        shape = keras.ops.shape(inputs)
        factor = keras.random.uniform((shape[0], 1, 1, 1), self.lower, self.upper,
                                      seed=self.generator, dtype=inputs.dtype)
        return keras.ops.clip(inputs * factor, 0.0, 255.0)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "lower": self.lower, "upper": self.upper,
                "seed": self.seed}


@keras.saving.register_keras_serializable(package="catdog")
class SampleStandardization(keras.layers.Layer):
    """Centres (and scales) each image by its own mean (and std), as the generator's samplewise_*.

    Applied in training and at inference alike, as the generator standardizes
    every batch it yields.
    """

    def __init__(self, center: bool = True, scale: bool = True, **kwargs):
        super().__init__(**kwargs)
        self.center, self.scale = bool(center), bool(scale)

    def call(self, inputs):
        if self.center:
            inputs = inputs - keras.ops.mean(inputs, axis=(1, 2, 3), keepdims=True)
        if self.scale:
            inputs = inputs / (keras.ops.std(inputs, axis=(1, 2, 3), keepdims=True) + 1e-6)
        return inputs

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "center": self.center, "scale": self.scale}


def _shift_fraction(name: str, value, size: Optional[int]) -> float:
    """A width/height_shift_range as a fraction of the image side."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
        raise ValueError(f"`{name}` must be a number >= 0 (a fraction below 1, else "
                         f"pixels). Received: {name}={value!r}")
    if value < 1:
        return float(value)
    if not size:
        raise ValueError(f"`{name}`={value!r} is in pixels (>= 1): pass image_size="
                         "(height, width) too, so it can become a fraction of the image.")
    if value > size:
        raise ValueError(f"`{name}`={value!r} pixels is more than the image side "
                         f"({size}). Received: {name}={value!r}")
    return float(value) / size


def from_image_data_generator(image_size=None, seed: Optional[int] = None,
                              name: str = GENERATOR_BLOCK_NAME,
                              **kwargs) -> keras.Sequential:
    """The Keras block doing what ``ImageDataGenerator(**kwargs)`` does to images.

    Takes the generator's own argument names, units and defaults (so
    ``fill_mode`` defaults to ``"nearest"`` here, not Keras' ``"reflect"``).
    The random layers come first, in the generator's order (rotation, shift,
    shear, zoom, channel shift, flips, brightness), then ``rescale``, then
    the samplewise and featurewise standardization, as
    ``ImageDataGenerator.standardize`` runs after the transforms. Random
    layers act only in training; rescaling and standardization always act,
    as the generator standardizes validation batches too.

    ``featurewise_center`` with ``featurewise_std_normalization`` gives a
    ``keras.layers.Normalization`` layer named ``featurewise_normalization``
    that must be adapted before training, on the training images as they
    reach it (rescaled, unaugmented), as ``ImageDataGenerator.fit`` was::

        block.get_layer("featurewise_normalization").adapt(
            train_images.map(lambda x, y: x * rescale))

    Args:
      image_size: ``(height, width)``, needed only for shifts in pixels.
      seed: base seed of the random layers.
      name: the block's layer name.
      **kwargs: ``ImageDataGenerator`` arguments.

    Returns:
      An :class:`Augmentation` taking images in 0..255. Its attribute
      ``data_settings`` holds the arguments that are data settings, not
      layers (``{"validation_split": ...}``: catdog's ``--validation_split``).

    Raises:
      ValueError: naming every argument without an equivalent (and what to
        use instead), or a value out of range.
    """
    args = dict(kwargs)
    known = {"featurewise_center", "samplewise_center", "featurewise_std_normalization",
             "samplewise_std_normalization", "rotation_range", "width_shift_range",
             "height_shift_range", "brightness_range", "shear_range", "zoom_range",
             "channel_shift_range", "fill_mode", "cval", "horizontal_flip", "vertical_flip",
             "rescale", "validation_split", "interpolation_order"}
    problems = [f"`{key}`: {_NO_EQUIVALENT[key]}" for key in args
                if key in _NO_EQUIVALENT and args[key] not in (None, False, 0, 1e-6)
                and not (key == "data_format" and args[key] == "channels_last")]
    problems += [f"`{key}`: not an ImageDataGenerator argument" for key in args
                 if key not in known and key not in _NO_EQUIVALENT]
    if bool(args.get("featurewise_center")) != bool(args.get("featurewise_std_normalization")):
        problems.append("`featurewise_center` / `featurewise_std_normalization`: Keras' "
                        "Normalization centres and scales together; give both True, or "
                        "standardize the images yourself")
    if args.get("interpolation_order", 1) not in (0, 1):
        problems.append("`interpolation_order`: Keras layers interpolate with 0 (nearest) "
                        "or 1 (bilinear) only")
    if problems:
        raise ValueError("ImageDataGenerator arguments without a catdog/Keras "
                         "equivalent: " + "; ".join(problems) + ".")
    size = tuple(image_size) if image_size is not None else (None, None)
    seed_of = lambda k: None if seed is None else seed + k
    fill_mode = args.get("fill_mode", "nearest")
    if fill_mode not in config_lib.FILL_MODES:
        raise ValueError(f"`fill_mode` must be one of {config_lib.FILL_MODES}. "
                         f"Received: fill_mode={fill_mode!r}")
    geometric = {"fill_mode": fill_mode, "fill_value": float(args.get("cval", 0.0)),
                 "interpolation": "nearest" if args.get("interpolation_order", 1) == 0
                 else "bilinear", "dtype": "float32"}
    layers = []
    rotation = args.get("rotation_range", 0)
    if rotation:
        if not 0 < rotation <= 360:
            raise ValueError(f"`rotation_range` must be degrees in [0, 360]. "
                             f"Received: rotation_range={rotation!r}")
        layers.append(keras.layers.RandomRotation(rotation / 360.0, seed=seed_of(1),
                                                  **geometric))
    width = _shift_fraction("width_shift_range", args.get("width_shift_range", 0.0), size[1])
    height = _shift_fraction("height_shift_range", args.get("height_shift_range", 0.0),
                             size[0])
    if width or height:
        layers.append(keras.layers.RandomTranslation(height, width, seed=seed_of(3),
                                                     **geometric))
    shear = args.get("shear_range", 0.0)
    if shear:
        if not 0 < shear < 90:
            raise ValueError(f"`shear_range` must be degrees in [0, 90). "
                             f"Received: shear_range={shear!r}")
        # The generator moves row y by sin(angle) * y; RandomShear by x_factor * y.
        layers.append(keras.layers.RandomShear(x_factor=math.sin(math.radians(shear)),
                                               seed=seed_of(4), **geometric))
    zoom = args.get("zoom_range", 0.0)
    lower, upper = ((1 - zoom, 1 + zoom) if isinstance(zoom, (int, float))
                    else tuple(zoom) if len(zoom) == 2 else (None, None))
    if lower is None or not 0 < lower <= upper <= 2:
        raise ValueError("`zoom_range` must be a float in [0, 1) or [lower, upper] with "
                         f"0 < lower <= upper <= 2. Received: zoom_range={zoom!r}")
    if (lower, upper) != (1, 1):
        # The generator scales coordinates by z (z > 1: the image shrinks), as
        # RandomZoom does by 1 + factor: factor = z - 1, x and y drawn apart.
        factor = (lower - 1.0, upper - 1.0)
        layers.append(keras.layers.RandomZoom(factor, factor, seed=seed_of(2), **geometric))
    channel_shift = args.get("channel_shift_range", 0.0)
    if channel_shift:
        if not 0 < channel_shift <= 255:
            raise ValueError("`channel_shift_range` must be in [0, 255] (pixel values). "
                             f"Received: channel_shift_range={channel_shift!r}")
        # One offset for all channels of an image, as the generator draws it.
        layers.append(keras.layers.RandomBrightness(channel_shift / 255.0, value_range=(0, 255),
                                                    seed=seed_of(5), dtype="float32"))
    flip = {(True, False): "horizontal", (False, True): "vertical",
            (True, True): "horizontal_and_vertical"}.get(
                (bool(args.get("horizontal_flip")), bool(args.get("vertical_flip"))))
    if flip:
        layers.append(keras.layers.RandomFlip(flip, seed=seed_of(0), dtype="float32"))
    brightness = args.get("brightness_range")
    if brightness is not None:
        if len(brightness) != 2 or not 0 <= brightness[0] <= brightness[1]:
            raise ValueError("`brightness_range` must be [lower, upper] with 0 <= lower <= "
                             f"upper. Received: brightness_range={brightness!r}")
        layers.append(RandomBrightnessScale(*brightness, seed=seed_of(6), dtype="float32"))
    if args.get("rescale"):
        layers.append(keras.layers.Rescaling(float(args["rescale"]), dtype="float32"))
    if args.get("samplewise_center") or args.get("samplewise_std_normalization"):
        layers.append(SampleStandardization(bool(args.get("samplewise_center")),
                                            bool(args.get("samplewise_std_normalization")),
                                            dtype="float32"))
    if args.get("featurewise_center"):
        layers.append(keras.layers.Normalization(axis=-1, name=FEATUREWISE_NAME,
                                                 dtype="float32"))
    block = Augmentation(layers, name=name)
    block.data_settings = {"validation_split": float(args.get("validation_split", 0.0))}
    return block
