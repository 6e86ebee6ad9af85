"""Image bytes -> uint8 pixels: the one decode of catdog.

Training, evaluation, prediction, the file check and the exported serving
signature all decode with :func:`decode_and_resize`, so they see the same
pixels. :func:`decode_and_resize_scaled` is the faster DCT-domain variant a
training split may use (``--dct_scaling``); :func:`decoder` is the one place
that chooses between the two.

This is a leaf module: it imports nothing else of catdog.
"""

from __future__ import annotations

from typing import Callable

import tensorflow as tf

#: Version of the pixels catdog's decode produces. It is part of every file
#: cache key, so a cache of older pixels is never read: bump it whenever
#: decode_and_resize or decode_and_resize_scaled change a single pixel.
DECODE_VERSION = 1

#: DCT scale-down factors libjpeg supports, largest first.
DCT_RATIOS = (8, 4, 2)


def decode_and_resize(contents: tf.Tensor, image_size) -> tf.Tensor:
    """Decodes encoded image bytes and resizes them to ``image_size``.

    The one decode function of catdog: training, evaluation, prediction and
    the exported serving signature all call it, so they see the same pixels.

    Args:
      contents: scalar string tensor with JPEG, PNG, GIF (first frame) or BMP
        bytes. Grayscale, RGBA and 16-bit images are converted to 8-bit RGB.
      image_size: ``(height, width)`` of the output.

    Returns:
      A ``uint8`` tensor of shape ``(height, width, 3)``. Resizing is
      bilinear, as in ``keras.utils.image_dataset_from_directory``.
    """
    height, width = int(image_size[0]), int(image_size[1])
    image = tf.io.decode_image(
        contents, channels=3, dtype=tf.uint8, expand_animations=False)
    return _resize_to_uint8(image, height, width)


def _resize_to_uint8(image: tf.Tensor, height: int, width: int) -> tf.Tensor:
    # Bilinear resize, rounded back to uint8. TF's bilinear kernel is faster
    # on float32 input than on uint8 (it converts either way, so the pixels
    # are identical), and no clip is needed: every output is a convex
    # combination of input values in [0, 255].
    image = tf.image.resize(tf.cast(image, tf.float32), (height, width),
                            method="bilinear")
    image = tf.cast(tf.round(image), tf.uint8)
    image.set_shape((height, width, 3))
    return image


def decode_and_resize_scaled(contents: tf.Tensor, image_size) -> tf.Tensor:
    """Like :func:`decode_and_resize`, but decodes large JPEGs at reduced scale.

    Policy: a JPEG at least ``r`` times the target size on BOTH sides, for the
    largest ``r`` in 8, 4, 2, is decoded at ``1/r`` scale in the DCT domain
    (``tf.io.decode_jpeg(ratio=r, dct_method="INTEGER_FAST")``, dimensions
    from the JPEG header) and then resized bilinearly like the exact path.
    The scaled decode is never smaller than the target, so the image is only
    ever downscaled, by less than 2x after the DCT step; libjpeg's scaled
    IDCT averages each block, which also removes most of the aliasing a
    plain bilinear downscale of a large image leaves. Everything else (PNG,
    GIF, BMP, JPEGs smaller than 2x the target) goes through
    :func:`decode_and_resize` unchanged, pixel for pixel.

    Off by default because what it saves depends on the photos: large camera
    photos decode several times cheaper, small web photos gain nothing
    (entropy decoding dominates small files; BUILD_NOTES.md has the figures).

    This is a training-input option (``DataConfig.dct_scaling``, applied to
    the training split only): the pixels of scaled JPEGs differ slightly from
    :func:`decode_and_resize`, which validation during training, evaluation,
    prediction and the exported model use.

    Args:
      contents: scalar string tensor of encoded image bytes.
      image_size: ``(height, width)`` of the output.

    Returns:
      A ``uint8`` tensor of shape ``(height, width, 3)``.
    """
    height, width = int(image_size[0]), int(image_size[1])

    def exact():
        return decode_and_resize(contents, (height, width))

    def scaled_jpeg():
        shape = tf.io.extract_jpeg_shape(contents)

        def at(ratio):
            def decode():
                image = tf.io.decode_jpeg(contents, channels=3, ratio=ratio,
                                          dct_method="INTEGER_FAST")
                return _resize_to_uint8(image, height, width)
            return decode

        fits = lambda r: tf.logical_and(shape[0] >= r * height, shape[1] >= r * width)
        return tf.case([(fits(r), at(r)) for r in DCT_RATIOS], default=exact,
                       exclusive=False)

    image = tf.cond(tf.io.is_jpeg(contents), scaled_jpeg, exact)
    image.set_shape((height, width, 3))
    return image


def decoder(dct_scaling: bool) -> Callable[[tf.Tensor, tuple], tf.Tensor]:
    """The decode of one split: ``(contents, image_size) -> uint8 image``.

    Every source (folder, TFRecords, TFDS) picks its decode here:
    :func:`decode_and_resize_scaled` with ``dct_scaling``, else
    :func:`decode_and_resize`.
    """
    return decode_and_resize_scaled if dct_scaling else decode_and_resize
