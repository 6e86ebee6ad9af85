"""tf.data input for catdog: index a folder, decode, resize, cache, batch.

Data flows one way::

    files -> index (paths, labels, class names; bad files reported, never deleted)
          -> decode + resize -> uint8 HxWx3            (parallel, on the CPU)
          -> cache (uint8) -> shuffle -> batch -> prefetch

Pixels stay uint8 up to the model: the cache is 4x smaller than float32 and
all rescaling / augmentation happens inside the model.
"""

from __future__ import annotations

import tensorflow as tf


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
    image = tf.image.resize(image, (height, width), method="bilinear")
    image = tf.cast(tf.clip_by_value(tf.round(image), 0.0, 255.0), tf.uint8)
    image.set_shape((height, width, 3))
    return image
