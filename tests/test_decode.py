"""Tests for catdog.decode: the one decode, its DCT-scaled variant and the choice."""

import numpy as np
import pytest
import tensorflow as tf

from catdog import decode
import helpers
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


# ---------------------------------------------------------------------------
# EXIF orientation.
# ---------------------------------------------------------------------------

ORIENTATIONS = range(1, 9)


def assert_upright(image, upright, what):
    """JPEG tolerance: flat 8x8 colour blocks come back within a few levels."""
    image = np.asarray(image)
    assert image.shape == upright.shape, what
    diff = np.abs(image.astype(int) - upright.astype(int))
    assert diff.mean() < 2 and diff.max() <= 16, f"{what}: mean {diff.mean()}, max {diff.max()}"


def test_exif_orientation_is_read_from_the_bytes():
    upright = helpers.upright_pixels()
    for k in ORIENTATIONS:
        contents = tf.constant(helpers.oriented_jpeg_bytes(upright, k))
        assert int(decode.exif_orientation(contents)) == k


def test_all_eight_exif_orientations_decode_upright_eager_and_in_tf_data(tmp_path):
    upright = helpers.upright_pixels()  # 48x32: a turn swaps height and width
    paths = [helpers.write_oriented_jpeg(tmp_path / f"o{k}.jpg", k, upright)
             for k in ORIENTATIONS]
    for k, path in zip(ORIENTATIONS, paths):
        image = decode.decode_and_resize(tf.io.read_file(path), (48, 32))
        assert_upright(image, upright, f"orientation {k}")
    graph = tf.data.Dataset.from_tensor_slices(paths).map(
        lambda p: decode.decode_and_resize(tf.io.read_file(p), (48, 32)))
    for k, image in zip(ORIENTATIONS, graph):
        assert_upright(image, upright, f"orientation {k} in tf.data")


def test_exif_orientation_off_keeps_the_stored_pixels():
    upright = helpers.upright_pixels()
    stored = np.rot90(upright, k=1)  # orientation 6: stored turned 90 degrees left
    contents = tf.constant(helpers.oriented_jpeg_bytes(upright, 6))
    off = decode.DecodeOptions(exif_orientation=False)
    assert_upright(decode.decode_and_resize(contents, (32, 48), off), stored, "off")
    assert_upright(decode.decode_and_resize(contents, (48, 32)), upright, "on by default")


def test_dct_scaled_decode_turns_upright_too():
    upright = helpers.upright_pixels(192, 128)  # >= 8x the 24x16 target
    target = upright[4::8, 4::8]  # the 24x16 flat blocks
    for k in ORIENTATIONS:
        contents = tf.constant(helpers.oriented_jpeg_bytes(upright, k))
        scaled = decode.decode_and_resize_scaled(contents, (24, 16)).numpy()
        assert_upright(scaled, target, f"scaled, orientation {k}")


def _mm_exif_jpeg(tiff: bytes) -> bytes:
    """A JPEG with the given TIFF block as its Exif APP1 (after the JFIF APP0)."""
    data = helpers.jpeg_bytes("exif")
    payload = b"Exif\x00\x00" + tiff
    app1 = b"\xff\xe1" + (len(payload) + 2).to_bytes(2, "big") + payload
    return data[:2] + app1 + data[2:]


def _mm_tiff(value: int, ifd_offset: int = 8, count: int = 1) -> bytes:
    entry = (b"\x01\x12" + b"\x00\x03" + b"\x00\x00\x00\x01"
             + value.to_bytes(2, "big") + b"\x00\x00")
    return b"MM\x00*" + ifd_offset.to_bytes(4, "big") + count.to_bytes(2, "big") + entry


def test_big_endian_exif_and_garbled_tags_never_fail_the_decode(tmp_path):
    plain = helpers.jpeg_bytes("exif")
    cases = {
        "big-endian 6": (_mm_exif_jpeg(_mm_tiff(6)), 6),
        "value 9": (_mm_exif_jpeg(_mm_tiff(9)), 1),
        "value 0": (_mm_exif_jpeg(_mm_tiff(0)), 1),
        "IFD beyond the file": (_mm_exif_jpeg(_mm_tiff(6, ifd_offset=2**31)), 1),
        "entry count beyond the segment": (_mm_exif_jpeg(_mm_tiff(6, count=60000)), 6),
        "bad byte order": (_mm_exif_jpeg(b"XX" + _mm_tiff(6)[2:]), 1),
        "empty TIFF": (_mm_exif_jpeg(b""), 1),
        "no entries": (open(helpers.write_jpeg_exif_only(tmp_path / "e.jpg"), "rb").read(), 1),
        "no EXIF": (plain, 1),
        "PNG": (helpers.png_bytes("exif"), 1),
        # Only the first Exif id counts, and only right after an APP1 marker.
        "first Exif id in a comment": (
            plain[:2] + b"\xff\xfe\x00\x0aExif\x00\x00\x00\x00"
            + _mm_exif_jpeg(_mm_tiff(6))[2:], 1),
    }
    for what, (contents, expected) in cases.items():
        contents = tf.constant(contents)
        assert int(decode.exif_orientation(contents)) == expected, what
        image = decode.decode_and_resize(contents, (16, 16))
        assert image.shape == (16, 16, 3), what
    # A truncated APP1 (its length runs past the end of the file) is no tag either.
    cut = _mm_exif_jpeg(_mm_tiff(6))[:30]
    assert int(decode.exif_orientation(tf.constant(cut))) == 1
    # Bytes that are no image at all have no tag (their decode fails, not the parse).
    for what, contents in {"no bytes": b"",
                           "Exif id at the start": b"Exif\x00\x00" + _mm_tiff(6)}.items():
        assert int(decode.exif_orientation(tf.constant(contents))) == 1, what


def test_a_photo_without_an_exif_id_skips_the_tiff_parse():
    # Most photos carry no Exif: for them the parse stops after the one
    # search for the Exif id; the TIFF reads run only in the branch taken
    # when the id is found.
    graph = decode.exif_orientation.get_concrete_function().graph
    top = {op.type for op in graph.get_operations()}
    assert top & {"If", "StatelessIf"}, sorted(top)
    assert "DecodeRaw" not in top, sorted(top)
    assert not any(t.startswith("Ragged") for t in top), sorted(top)


# ---------------------------------------------------------------------------
# Resize modes and interpolation, as keras.utils.image_dataset_from_directory.
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("resize_mode,interpolation", [
    ("crop", "bilinear"), ("pad", "bilinear"), ("stretch", "nearest"),
    ("stretch", "bicubic"), ("crop", "area"), ("pad", "lanczos3"), ("stretch", "gaussian"),
    ("stretch", "mitchellcubic"), ("crop", "lanczos5")])
def test_resize_modes_and_interpolations_are_keras_pixels(tmp_path, resize_mode, interpolation):
    import keras  # pylint: disable=import-outside-toplevel
    root = tmp_path / "imgs"
    rng = np.random.RandomState(3)
    for i, shape in enumerate([(30, 50, 3), (50, 30, 3), (24, 24, 3), (61, 17, 3)]):
        write_image(str(root / "a" / f"{i}.png"), rng.randint(0, 256, shape).astype(np.uint8))
    write_image(str(root / "b" / "x.png"), rng.randint(0, 256, (20, 40, 3)).astype(np.uint8))
    size = (20, 28)
    stock = keras.utils.image_dataset_from_directory(
        str(root), image_size=size, batch_size=64, shuffle=False, verbose=False,
        interpolation=interpolation, crop_to_aspect_ratio=resize_mode == "crop",
        pad_to_aspect_ratio=resize_mode == "pad")
    (images, _), = list(stock)
    options = decode.DecodeOptions(resize_mode=resize_mode, interpolation=interpolation)
    for path, expected in zip(stock.file_paths, images.numpy()):
        ours = decode.decode_and_resize(tf.io.read_file(path), size, options).numpy()
        assert ours.dtype == np.uint8 and ours.shape == (*size, 3)
        np.testing.assert_array_equal(
            ours, np.clip(np.round(expected), 0, 255).astype(np.uint8), err_msg=path)


def test_old_records_mean_stretch_and_bilinear():
    old = decode.options_of({"image_size": [8, 8]})
    assert (old.resize_mode, old.interpolation, old.exif_orientation) == (
        "stretch", "bilinear", False)
    assert decode.DecodeOptions().resize_mode == "stretch"
    assert decode.DecodeOptions().interpolation == "bilinear"
