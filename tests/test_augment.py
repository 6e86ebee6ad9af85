import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
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
    with strategy.scope():  # RandAugment draws from its own generator
        rand = augment.build_augmentation(flip="none", rotation=0.0, zoom=0.0, seed=7,
                                          rand_augment=True, rand_augment_num_ops=3)
    out["rand_augment"] = report(rand)
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
    for name in ("block", "loaded", "rand_augment"):
        assert out[name]["replicas_differ"] == [True, True], (name, out)
        assert all(out[name]["augmented"]), (name, out)
        assert all(out[name]["steps_differ"]), (name, out)
        assert out[name]["inference_unchanged"], (name, out)


# ---------------------------------------------------------------------------
# Every augmentation setting, from the config (and so from its flag)
# ---------------------------------------------------------------------------

def _all_on():
    from catdog import config as config_lib
    return config_lib.ModelConfig(
        flip="vertical", rotation=0.05, zoom=0.15, zoom_width=0.25, translation=0.1,
        shear=0.2, brightness=0.3, contrast=0.4, fill_mode="constant", fill_value=7.0)


def test_every_setting_reaches_its_keras_layer_with_its_factor():
    block = augment.from_model_config(_all_on(), seed=5)
    layers = {type(l).__name__: l for l in block.layers}
    assert list(layers) == ["RandomFlip", "RandomRotation", "RandomZoom", "RandomTranslation",
                            "RandomShear", "RandomBrightness", "RandomContrast"]
    assert layers["RandomFlip"].mode == "vertical"
    assert tuple(layers["RandomRotation"].factor) == (-0.05, 0.05)
    assert layers["RandomZoom"].height_factor == 0.15
    assert layers["RandomZoom"].width_factor == 0.25
    assert layers["RandomTranslation"].height_factor == 0.1
    assert layers["RandomTranslation"].width_factor == 0.1
    assert tuple(layers["RandomShear"].x_factor) == (-0.2, 0.2)
    assert tuple(layers["RandomShear"].y_factor) == (0.0, 0.0)
    assert tuple(layers["RandomBrightness"].factor) == (-0.3, 0.3)
    assert tuple(layers["RandomBrightness"].value_range) == (0, 255)
    assert tuple(layers["RandomContrast"].value_range) == (0, 255)
    for name in ("RandomRotation", "RandomZoom", "RandomTranslation", "RandomShear"):
        assert layers[name].fill_mode == "constant", name
        assert layers[name].fill_value == 7.0, name


def test_every_layer_is_inactive_at_inference():
    block = augment.from_model_config(_all_on(), seed=5)
    x = np.random.RandomState(0).uniform(0, 255, (3, 24, 24, 3)).astype("float32")
    np.testing.assert_array_equal(block(x).numpy(), x)
    np.testing.assert_array_equal(block(x, training=False).numpy(), x)
    assert not np.allclose(block(x, training=True).numpy(), x)


def test_defaults_build_the_flip_rotation_zoom_block():
    from catdog import config as config_lib
    block = augment.from_model_config(config_lib.ModelConfig())
    assert [type(l).__name__ for l in block.layers] == ["RandomFlip", "RandomRotation",
                                                        "RandomZoom"]
    zoom = block.layers[2]
    assert zoom.height_factor == 0.2 and zoom.width_factor is None
    assert all(l.fill_mode == "reflect" for l in block.layers[1:])


def _line_angle_degrees(image):
    """Angle of the bright line in ``image`` (H, W), from its pixels' main axis."""
    ys, xs = np.nonzero(image > 127)
    coords = np.stack([xs - xs.mean(), ys - ys.mean()])
    _, vectors = np.linalg.eigh(np.cov(coords))
    vx, vy = vectors[:, -1]
    angle = np.degrees(np.arctan2(vy, vx))
    return (angle + 90) % 180 - 90


def _line_images(n, size=65):
    x = np.zeros((n, size, size, 3), np.float32)
    x[:, size // 2 - 1:size // 2 + 2, 8:size - 8] = 255.0  # a horizontal bar
    return x


def test_rotation_stays_within_its_range():
    # 0.05 of a full turn: up to +-18 degrees.
    from catdog import config as config_lib
    config = config_lib.ModelConfig(flip="none", zoom=0.0, rotation=0.05,
                                    fill_mode="constant")
    block = augment.from_model_config(config, seed=11)
    out = block(_line_images(64), training=True).numpy()[..., 0]
    angles = np.array([_line_angle_degrees(img) for img in out])
    assert np.abs(angles).max() <= 18.0 + 1.0, angles
    assert np.abs(angles).max() >= 12.0, angles  # the range is used, not just 0
    assert (angles > 2).any() and (angles < -2).any()


def _square_sides(images):
    """Height and width of the bright square of each image (N, H, W)."""
    bright = images > 127
    return bright.any(axis=2).sum(axis=1), bright.any(axis=1).sum(axis=1)


def test_zoom_width_zooms_independently_within_its_range():
    from catdog import config as config_lib
    size, side = 96, 32
    x = np.zeros((64, size, size, 3), np.float32)
    lo = (size - side) // 2
    x[:, lo:lo + side, lo:lo + side] = 255.0
    config = config_lib.ModelConfig(flip="none", rotation=0.0, zoom=0.1, zoom_width=0.3,
                                    fill_mode="constant")
    out = augment.from_model_config(config, seed=2)(x, training=True).numpy()[..., 0]
    heights, widths = _square_sides(out)
    # Keras' factor f: the image is scaled by 1/(1+f), f in [-factor, factor].
    assert heights.min() >= side / 1.1 - 2 and heights.max() <= side / 0.9 + 2
    assert widths.min() >= side / 1.3 - 2 and widths.max() <= side / 0.7 + 2
    assert widths.max() - widths.min() > heights.max() - heights.min()
    assert not np.array_equal(heights, widths)  # not one draw for both


# ---------------------------------------------------------------------------
# from_image_data_generator: the generator's arguments and units
# ---------------------------------------------------------------------------

def test_generator_rotation_range_is_degrees():
    block = augment.from_image_data_generator(rotation_range=35, fill_mode="constant",
                                              seed=3)
    out = block(_line_images(96), training=True).numpy()[..., 0]
    angles = np.array([_line_angle_degrees(img) for img in out])
    assert np.abs(angles).max() <= 35.0 + 1.0, angles
    assert np.abs(angles).max() >= 28.0, angles


def test_generator_zoom_range_stays_within_its_scale_range():
    # ImageDataGenerator(zoom_range=0.2) samples z in [0.8, 1.2] per axis and
    # shows the image scaled by 1/z: sides within [side/1.2, side/0.8].
    size, side = 96, 32
    x = np.zeros((96, size, size, 3), np.float32)
    lo = (size - side) // 2
    x[:, lo:lo + side, lo:lo + side] = 255.0
    block = augment.from_image_data_generator(zoom_range=0.2, fill_mode="constant", seed=4)
    heights, widths = _square_sides(block(x, training=True).numpy()[..., 0])
    for sides in (heights, widths):
        assert sides.min() >= side / 1.2 - 2 and sides.max() <= side / 0.8 + 2, sides
        assert sides.min() <= side / 1.1 and sides.max() >= side / 0.9  # range used
    assert not np.array_equal(heights, widths)  # x and y zoom independently
    zoomed_in = augment.from_image_data_generator(zoom_range=[0.5, 0.6],
                                                  fill_mode="constant", seed=4)
    heights, _ = _square_sides(zoomed_in(x, training=True).numpy()[..., 0])
    assert heights.min() >= side / 0.6 - 2 and heights.max() <= side / 0.5 + 2, heights


def test_generator_horizontal_flip_flips_about_half_the_time():
    x = np.zeros((400, 8, 8, 3), np.float32)
    x[:, :, :4] = 255.0  # left half bright
    block = augment.from_image_data_generator(horizontal_flip=True, seed=5)
    out = block(x, training=True).numpy()
    flipped = out[:, :, 4:].mean(axis=(1, 2, 3)) > 127
    assert 0.4 <= flipped.mean() <= 0.6, flipped.mean()
    np.testing.assert_array_equal(out[~flipped], x[~flipped])


def test_generator_arguments_map_to_layers_in_keras_units():
    block = augment.from_image_data_generator(
        image_size=(64, 80), width_shift_range=8, height_shift_range=0.1, shear_range=30,
        channel_shift_range=51, vertical_flip=True, horizontal_flip=True, cval=9,
        rescale=1 / 255.0, validation_split=0.25)
    layers = {type(l).__name__: l for l in block.layers}
    assert list(layers) == ["RandomTranslation", "RandomShear", "RandomBrightness",
                            "RandomFlip", "Rescaling"]
    assert layers["RandomTranslation"].width_factor == 8 / 80
    assert layers["RandomTranslation"].height_factor == 0.1
    assert np.isclose(layers["RandomShear"].x_factor[1], 0.5)  # sin(30 degrees)
    assert np.isclose(layers["RandomBrightness"].factor[1], 0.2)
    assert layers["RandomFlip"].mode == "horizontal_and_vertical"
    assert layers["RandomShear"].fill_mode == "nearest"  # the generator's default
    assert layers["RandomShear"].fill_value == 9.0
    assert block.data_settings == {"validation_split": 0.25}
    x = np.full((2, 64, 80, 3), 255.0, np.float32)
    # Inference: no random transform, but rescaled as the generator's batches are.
    np.testing.assert_allclose(block(x).numpy(), 1.0, rtol=1e-6)


def test_generator_brightness_range_scales_pixels():
    x = np.full((64, 8, 8, 3), 100.0, np.float32)
    block = augment.from_image_data_generator(brightness_range=[0.5, 1.5], seed=6)
    ratios = block(x, training=True).numpy().mean(axis=(1, 2, 3)) / 100.0
    assert ratios.min() >= 0.5 - 1e-5 and ratios.max() <= 1.5 + 1e-5
    assert ratios.min() < 0.7 and ratios.max() > 1.3
    np.testing.assert_array_equal(block(x).numpy(), x)
    # Its seeds, like the Keras layers', differ from replica to replica.
    generators = [g for layer in block.layers for g in layer._seed_generators]  # pylint: disable=protected-access
    assert generators and all(isinstance(g, augment._ReplicaSeedGenerator) for g in generators)  # pylint: disable=protected-access


def test_generator_standardization_samplewise_and_featurewise():
    x = np.random.RandomState(1).uniform(0, 255, (8, 12, 12, 3)).astype("float32")
    x[..., 1] *= 0.5
    samplewise = augment.from_image_data_generator(samplewise_center=True,
                                                   samplewise_std_normalization=True)
    out = samplewise(x).numpy()
    np.testing.assert_allclose(out.mean(axis=(1, 2, 3)), 0.0, atol=1e-4)
    np.testing.assert_allclose(out.std(axis=(1, 2, 3)), 1.0, atol=1e-3)
    featurewise = augment.from_image_data_generator(
        featurewise_center=True, featurewise_std_normalization=True, rescale=1 / 255.0)
    featurewise.get_layer(augment.FEATUREWISE_NAME).adapt(x / 255.0)
    out = featurewise(x).numpy()
    np.testing.assert_allclose(out.mean(axis=(0, 1, 2)), 0.0, atol=1e-4)
    np.testing.assert_allclose(out.std(axis=(0, 1, 2)), 1.0, atol=1e-3)


def test_generator_arguments_without_equivalent_are_all_named():
    import pytest
    with pytest.raises(ValueError) as e:
        augment.from_image_data_generator(zca_whitening=True, preprocessing_function=abs,
                                          rotation_range=10, colour_jitter=2)
    message = str(e.value)
    for name in ("zca_whitening", "preprocessing_function", "colour_jitter"):
        assert f"`{name}`" in message, message
    assert "rotation_range" not in message and "keras.layers.Layer" in message
    with pytest.raises(ValueError, match="featurewise_std_normalization"):
        augment.from_image_data_generator(featurewise_center=True)
    with pytest.raises(ValueError, match="image_size"):
        augment.from_image_data_generator(width_shift_range=10)
    with pytest.raises(ValueError, match="zoom_range"):
        augment.from_image_data_generator(zoom_range=[1.5, 3.0])


def test_generator_block_saves_and_loads_with_its_layers(tmp_path):
    import keras
    inputs = keras.Input((16, 16, 3))
    block = augment.from_image_data_generator(brightness_range=[0.8, 1.2],
                                              samplewise_center=True, rotation_range=20)
    model = keras.Model(inputs, block(inputs))
    path = str(tmp_path / "g.keras")
    model.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    x = np.random.RandomState(0).uniform(0, 255, (2, 16, 16, 3)).astype("float32")
    np.testing.assert_allclose(loaded(x).numpy(), model(x).numpy(), atol=1e-4)
    names = [type(l).__name__ for l in loaded.layers[-1].layers]
    assert names == ["RandomRotation", "RandomBrightnessScale", "SampleStandardization"]


def test_generator_shear_range_tilts_vertical_lines_as_the_generator():
    # The generator's shear by angle a tilts a vertical line by atan(sin(a)).
    bar = np.zeros((64, 65, 65, 3), np.float32)
    bar[:, 8:57, 31:34] = 255.0
    block = augment.from_image_data_generator(shear_range=30, fill_mode="constant", seed=1)
    out = block(bar, training=True).numpy()[..., 0]
    tilts = np.array([90 - abs(_line_angle_degrees(img)) for img in out])
    limit = np.degrees(np.arctan(np.sin(np.radians(30))))
    assert tilts.max() <= limit + 1.0 and tilts.max() >= limit - 4.0, tilts


# ---------------------------------------------------------------------------
# RandAugment in the block; MixUp and CutMix on training batches
# ---------------------------------------------------------------------------

def test_rand_augment_joins_the_block_on_0_255_pixels_and_only_trains():
    from catdog import config as config_lib
    m = config_lib.ModelConfig(rand_augment=True, rand_augment_magnitude=0.3,
                               rand_augment_num_ops=3)
    block = augment.from_model_config(m, seed=5)
    layer = block.layers[-1]
    assert type(layer).__name__ == "RandAugment"
    assert tuple(layer.value_range) == (0, 255)
    assert tuple(layer.factor) == (0.0, 0.3) and layer.num_ops == 3
    x = np.random.RandomState(0).uniform(0, 255, (4, 24, 24, 3)).astype("float32")
    np.testing.assert_array_equal(block(x).numpy(), x)
    np.testing.assert_array_equal(block(x, training=False).numpy(), x)
    only = augment.build_augmentation(flip="none", rotation=0.0, zoom=0.0, seed=5,
                                      rand_augment=True, rand_augment_num_ops=11)
    y = only(x, training=True).numpy()
    assert not np.allclose(y, x)
    assert y.min() >= -0.5 and y.max() <= 255.5  # stays in the pixel range
    assert augment.build_augmentation().layers[-1].__class__.__name__ == "RandomZoom"


def test_rand_augment_block_saves_and_loads(tmp_path):
    import keras
    inputs = keras.Input((24, 24, 3))
    block = augment.build_augmentation(seed=2, rand_augment=True, rand_augment_num_ops=1)
    model = keras.Model(inputs, block(inputs))
    model.save(tmp_path / "m.keras")
    loaded = keras.saving.load_model(tmp_path / "m.keras", safe_mode=True)
    layer = loaded.layers[-1].layers[-1]
    assert type(layer).__name__ == "RandAugment" and layer.num_ops == 1
    x = np.random.RandomState(1).uniform(0, 255, (2, 24, 24, 3)).astype("float32")
    np.testing.assert_array_equal(loaded(x).numpy(), x)


def _batches(num_classes, n=16, batch=8, size=12):
    rng = np.random.RandomState(0)
    images = rng.randint(0, 256, (n, size, size, 3)).astype(np.uint8)
    classes = np.arange(n) % num_classes
    labels = (classes.astype(np.float32)[:, None] if num_classes == 2
              else classes.astype(np.int32))
    return tf.data.Dataset.from_tensor_slices((images, labels)).batch(batch), images


@pytest.mark.parametrize("mixup,cutmix", [(0.4, 0.0), (0.0, 1.0), (0.4, 1.0)])
def test_mixed_batches_have_soft_labels_that_sum_to_one(mixup, cutmix):
    for num_classes in (2, 3):
        ds, images = _batches(num_classes)
        mixed = augment.mix_batches(ds, num_classes, mixup=mixup, cutmix=cutmix, seed=1)
        for x, y in mixed:
            x, y = x.numpy(), y.numpy()
            assert x.dtype == np.float32 and x.shape == (8, 12, 12, 3)
            assert 0.0 <= x.min() and x.max() <= 255.0
            assert y.dtype == np.float32
            assert y.shape == ((8, 1) if num_classes == 2 else (8, num_classes))
            assert ((y > 0.01) & (y < 0.99)).any(), y  # soft, not 0/1
            if num_classes > 2:  # one-hot, mixed: every row a distribution
                np.testing.assert_allclose(y.sum(axis=1), 1.0, atol=1e-5)
                assert y.min() >= 0.0


def _labelled_pixels(num_classes=2, n=8, size=32):
    """Batches whose green channel is 255 on class-1 images, 0 on the others."""
    ds, images = _batches(num_classes, n=n, batch=n, size=size)
    images[..., 1] = np.where(np.arange(n) % num_classes == 1, 255, 0)[:, None, None]
    labels = next(iter(ds))[1]
    return tf.data.Dataset.from_tensors((images, labels))


@pytest.mark.parametrize("mixup,cutmix,tolerance", [
    (0.4, 0.0, 1e-4),  # a blend: green is exactly the mixed label
    # a box: green is the share of class-1 pixels; the box's label weight is
    # its exact area, the pixels it covers differ by under a row and a column
    (0.0, 1.0, 65 / 1024),
])
def test_the_mixed_label_is_the_share_of_each_class_in_the_pixels(mixup, cutmix, tolerance):
    for seed in range(3):
        x, y = next(iter(augment.mix_batches(_labelled_pixels(), 2, mixup=mixup,
                                             cutmix=cutmix, seed=seed)))
        green = x.numpy()[..., 1].mean(axis=(1, 2)) / 255.0
        np.testing.assert_allclose(y.numpy()[:, 0], green, atol=tolerance)
        assert ((green > 0.01) & (green < 0.99)).any()


def test_every_batch_and_every_epoch_mixes_anew():
    ds, _ = _batches(2, n=32)
    mixed = augment.mix_batches(ds.repeat(2), 2, mixup=0.4, cutmix=1.0, seed=2)
    labels = [tuple(np.round(y.numpy().ravel(), 5)) for _, y in mixed]
    assert len(labels) == 8 and len(set(labels)) == 8
    again = [tuple(np.round(y.numpy().ravel(), 5))
             for _, y in augment.mix_batches(ds.repeat(2), 2, mixup=0.4, cutmix=1.0, seed=2)]
    assert again == labels  # same seed, same mixing
    other = [tuple(np.round(y.numpy().ravel(), 5))
             for _, y in augment.mix_batches(ds.repeat(2), 2, mixup=0.4, cutmix=1.0, seed=3)]
    assert other != labels


def test_with_both_each_batch_gets_mixup_or_cutmix():
    ds, images = _batches(2, n=8, size=16)
    kinds = set()
    mixed = augment.mix_batches(ds.repeat(12), 2, mixup=0.4, cutmix=1.0, seed=5)
    originals = images.astype(np.float32)
    for x, _ in mixed:
        x = x.numpy()
        # CutMix copies pixels: every pixel is one of the batch's originals'.
        copied = all(any(np.array_equal(x[i][r, c], originals[j][r, c]) for j in range(8))
                     for i in range(8) for r, c in ((0, 0), (8, 8), (15, 15)))
        kinds.add("cutmix" if copied else "mixup")
    assert kinds == {"cutmix", "mixup"}
