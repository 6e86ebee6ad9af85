"""Tests for catdog.decode: the one decode, its DCT-scaled variant and the choice."""

import numpy as np
import pytest
import tensorflow as tf

from catdog import decode
from helpers import write_image


def test_decode_and_resize_eager_and_in_tf_data(tmp_path):
    pixels = np.random.RandomState(0).randint(0, 255, (30, 40, 3)).astype(np.uint8)
    path = write_image(str(tmp_path / "a.png"), pixels)
    eager = decode.decode_and_resize(tf.io.read_file(path), (10, 20))
    assert eager.dtype == tf.uint8 and eager.shape == (10, 20, 3)
    ds = tf.data.Dataset.from_tensor_slices([path]).map(
        lambda p: decode.decode_and_resize(tf.io.read_file(p), (10, 20)))
    graph = next(iter(ds))
    np.testing.assert_array_equal(eager.numpy(), graph.numpy())
    # Same size: resizing is the identity.
    same = decode.decode_and_resize(tf.io.read_file(path), (30, 40))
    np.testing.assert_array_equal(same.numpy(), pixels)


@pytest.mark.parametrize("size", [(24, 24), (17, 45), (96, 80)])
def test_pixels_are_keras_bilinear_rounded_to_uint8(tmp_path, size):
    """catdog's pixels are exactly what keras.utils.image_dataset_from_directory
    computes (bilinear on the decoded image), rounded half-to-even to uint8:
    downscaling, upscaling and every quirky valid format."""
    import keras  # pylint: disable=import-outside-toplevel
    import helpers  # pylint: disable=import-outside-toplevel
    root = tmp_path / "imgs"
    helpers.write_tree(root, {"a": sorted(helpers.VALID), "b": ["jpeg", "png"]})
    stock = keras.utils.image_dataset_from_directory(
        str(root), image_size=size, batch_size=64, shuffle=False, verbose=False)
    (images, _), = list(stock)
    for path, expected in zip(stock.file_paths, images.numpy()):
        ours = decode.decode_and_resize(tf.io.read_file(path), size).numpy()
        np.testing.assert_array_equal(
            ours, np.clip(np.round(expected), 0, 255).astype(np.uint8), err_msg=path)


def dct_test_images(folder):
    """A JPEG >= 4x of 24x24, a JPEG < 2x, and a large PNG, all smooth."""
    rng = np.random.RandomState(0)
    smooth = tf.image.resize(rng.randint(0, 255, (8, 10, 3)).astype(np.float32),
                             (96, 120)).numpy().astype(np.uint8)
    big = write_image(str(folder / "big.jpg"), smooth)
    small = write_image(str(folder / "small.jpg"), smooth[:40, :40])
    png = write_image(str(folder / "big.png"), smooth)
    return big, small, png


def test_dct_scaling_policy_eager_and_in_tf_data(tmp_path):
    big, small, png = dct_test_images(tmp_path)
    size = (24, 24)
    read = lambda p: tf.io.read_file(p)
    # Not scaled: pixel-identical to the exact decode.
    for path in (small, png):
        np.testing.assert_array_equal(decode.decode_and_resize_scaled(read(path), size),
                                      decode.decode_and_resize(read(path), size))
    # Scaled: close to the exact decode (a box-filtered downscale of a smooth image).
    scaled = decode.decode_and_resize_scaled(read(big), size).numpy()
    exact = decode.decode_and_resize(read(big), size).numpy()
    assert scaled.shape == (24, 24, 3) and scaled.dtype == np.uint8
    diff = np.abs(scaled.astype(int) - exact.astype(int)).mean()
    assert 0 < diff < 6  # the DCT path was taken, and it stays close
    graph = list(tf.data.Dataset.from_tensor_slices([big, small, png]).map(
        lambda p: decode.decode_and_resize_scaled(tf.io.read_file(p), size)))
    np.testing.assert_array_equal(graph[0].numpy(), scaled)


def test_decoder_picks_the_scaled_decode_only_when_asked(tmp_path):
    big, _, _ = dct_test_images(tmp_path)
    contents = tf.io.read_file(big)
    for dct_scaling, expected in ((False, decode.decode_and_resize),
                                  (True, decode.decode_and_resize_scaled)):
        np.testing.assert_array_equal(decode.decoder(dct_scaling)(contents, (24, 24)),
                                      expected(contents, (24, 24)))
