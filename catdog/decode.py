"""Image bytes -> uint8 pixels: the one decode of catdog.

Training, evaluation, prediction, the file check and the exported serving
signature all decode with :func:`decode_and_resize`, so they see the same
pixels, made as a run's :class:`DecodeOptions` say (EXIF orientation, resize
mode, interpolation; recorded in its ``config.json``).
:func:`decode_and_resize_scaled` is the faster DCT-domain variant a training
split may use (``--dct_scaling``); :func:`decoder` is the one place that
chooses between the two.

This is a leaf module: it imports nothing else of catdog.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Optional

import tensorflow as tf

#: Version of the pixels catdog's decode produces. It is part of every file
#: cache key, so a cache of older pixels is never read: bump it whenever
#: decode_and_resize or decode_and_resize_scaled change a single pixel.
#: 2: JPEGs are turned upright by their EXIF orientation.
DECODE_VERSION = 2


@dataclasses.dataclass(frozen=True)
class DecodeOptions:
    """How encoded bytes become the pixels a model sees.

    Every source, evaluation, prediction and the exported serving signature
    decode with the options of the run (recorded in its ``config.json``), so
    a model always sees pixels made the way it was trained on.

    Attributes:
      exif_orientation: turn JPEGs upright by their EXIF orientation tag, as
        a photo viewer shows them.
      resize_mode: ``"stretch"`` to the image size (aspect ratio not kept),
        ``"crop"`` the centred largest box of the target aspect ratio first,
        or ``"pad"``: resize keeping the aspect ratio and centre it in zeros
        (``image_dataset_from_directory``'s ``crop_to_aspect_ratio`` /
        ``pad_to_aspect_ratio``).
      interpolation: a ``tf.image.resize`` method (:data:`INTERPOLATIONS`);
        results are rounded and clipped to uint8.
      color_mode: ``"rgb"`` (3 channels) or ``"grayscale"`` (1 channel,
        ``tf.io.decode_image(channels=1)``, as
        ``image_dataset_from_directory(color_mode="grayscale")``).
    """

    exif_orientation: bool = True
    resize_mode: str = "stretch"
    interpolation: str = "bilinear"
    color_mode: str = "rgb"

    @property
    def channels(self) -> int:
        """Channels of the decoded pixels: 1 for grayscale, else 3."""
        return COLOR_CHANNELS[self.color_mode]

    def record(self) -> dict:
        """The options as JSON-ready ``{field: value}`` (part of file cache keys)."""
        return dataclasses.asdict(self)


#: The options of runs recorded before the options existed: their pixels.
LEGACY_OPTIONS = DecodeOptions(exif_orientation=False, resize_mode="stretch",
                               interpolation="bilinear", color_mode="rgb")
#: ``--color_mode`` values and the channels each decodes to.
COLOR_CHANNELS = {"rgb": 3, "grayscale": 1}
COLOR_MODES = tuple(COLOR_CHANNELS)
RESIZE_MODES = ("stretch", "crop", "pad")
#: Resize methods, as ``image_dataset_from_directory``'s ``interpolation``.
INTERPOLATIONS = ("bilinear", "nearest", "bicubic", "area", "lanczos3", "lanczos5",
                  "gaussian", "mitchellcubic")


def options_of(data) -> DecodeOptions:
    """The :class:`DecodeOptions` of a ``DataConfig`` or a ``config.json`` data dict.

    A setting missing from a dict (a ``config.json`` written before the
    setting existed) takes the value of :data:`LEGACY_OPTIONS`: the pixels
    that run was trained on.
    """
    if isinstance(data, DecodeOptions):
        return data
    if data is None or isinstance(data, dict):
        data = data or {}
        get = lambda name: data.get(name, getattr(LEGACY_OPTIONS, name))
    else:
        get = lambda name: getattr(data, name, getattr(LEGACY_OPTIONS, name))
    return DecodeOptions(**{f.name: get(f.name) for f in dataclasses.fields(DecodeOptions)})


def _resolve(options: Optional[DecodeOptions]) -> DecodeOptions:
    return DecodeOptions() if options is None else options

#: DCT scale-down factors libjpeg supports, largest first.
DCT_RATIOS = (8, 4, 2)


# ---------------------------------------------------------------------------
# EXIF orientation, read in the graph from the JPEG bytes.
# ---------------------------------------------------------------------------

_ORIENTATION_TAG = 0x0112
_EXIF_ID = "Exif\x00\x00"  # opens the APP1 payload, before the TIFF header
#: Bytes of a JPEG searched for its Exif segment (the largest APP0 and APP1).
_EXIF_SEARCH_BYTES = 2 * 65536
#: IFD0 entries looked at; cameras write about a dozen.
_MAX_ENTRIES = 64


def _window(contents: tf.Tensor, pos: tf.Tensor, n: int) -> tf.Tensor:
    """Exactly ``n`` bytes of ``contents`` from ``pos`` (a string), zero-padded
    past the end; ``pos`` outside the bytes reads zeros."""
    length = tf.cast(tf.strings.length(contents), tf.int64)
    pos = tf.clip_by_value(pos, 0, length)
    padded = tf.strings.join([tf.strings.substr(contents, pos, n), "\x00" * n])
    return tf.strings.substr(padded, 0, n)


def _exif_id_position(contents: tf.Tensor):
    """``(found, position)`` of the first ``"Exif\\0\\0"`` in the JPEG's first bytes.

    One substring search (``StringSplitV2`` on the head, at most one split):
    ``tf.strings.split`` would wrap it in ragged-tensor ops that cost more
    than the search itself.
    """
    head = tf.reshape(tf.strings.substr(contents, 0, _EXIF_SEARCH_BYTES), [1])
    parts = tf.raw_ops.StringSplitV2(input=head, sep=_EXIF_ID, maxsplit=1).values
    pos = tf.cast(tf.strings.length(parts[0]), tf.int64)  # where the id starts
    return tf.equal(tf.size(parts), 2), pos


def _exif_tiff(contents: tf.Tensor, pos: tf.Tensor):
    """``(found, 8 TIFF header bytes, offset of the TIFF header)`` of the Exif
    id at ``pos``.

    The Exif APP1 segment opens a JPEG (right after SOI, or after a JFIF
    APP0), so the first ``"Exif\\0\\0"`` in the first bytes, preceded by an
    APP1 marker and its length, is it. One substring search
    (:func:`_exif_id_position`): a segment walk in tf ops costs several
    times more per image.
    """
    # FF E1, the segment length, the id, the TIFF header: 18 bytes.
    window = tf.cast(tf.io.decode_raw(_window(contents, pos - 4, 18), tf.uint8), tf.int64)
    found = (pos >= 4) & tf.equal(window[0], 0xFF) & tf.equal(window[1], 0xE1)
    return found, window[10:18], pos + len(_EXIF_ID)


def _tiff_orientation(contents: tf.Tensor, head: tf.Tensor, tiff: tf.Tensor) -> tf.Tensor:
    """The orientation value in IFD0 of the TIFF block at ``tiff``, or 0."""
    little = tf.equal(head[0], 0x49) & tf.equal(head[1], 0x49)  # "II"
    big = tf.equal(head[0], 0x4D) & tf.equal(head[1], 0x4D)  # "MM"
    weights = tf.where(little, tf.constant([1, 256, 65536, 16777216], tf.int64),
                       tf.constant([16777216, 65536, 256, 1], tf.int64))
    magic = tf.where(little, head[2] + 256 * head[3], 256 * head[2] + head[3])
    ifd = tiff + tf.reduce_sum(head[4:8] * weights)
    # IFD0: an entry count, then 12-byte entries (tag, type, count, value),
    # read as 16-bit words in the file's byte order.
    block = _window(contents, ifd, 2 + 12 * _MAX_ENTRIES)
    words = tf.cast(tf.where(little, tf.io.decode_raw(block, tf.uint16, little_endian=True),
                             tf.io.decode_raw(block, tf.uint16, little_endian=False)),
                    tf.int64)
    entries = tf.reshape(words[1:], (_MAX_ENTRIES, 6))
    used = tf.range(_MAX_ENTRIES, dtype=tf.int64) < words[0]
    is_tag = used & tf.equal(entries[:, 0], _ORIENTATION_TAG) & tf.equal(entries[:, 1], 3)
    value = tf.reduce_max(tf.where(is_tag, entries[:, 4], 0))  # a SHORT, first in its field
    return tf.where((little | big) & tf.equal(magic, 42), value, 0)


@tf.function(input_signature=[tf.TensorSpec([], tf.string)], autograph=False)
def exif_orientation(contents: tf.Tensor) -> tf.Tensor:
    """The EXIF orientation (1-8) of encoded image bytes, as an int32 scalar.

    Read in the graph (tf ops only): the Exif APP1 segment of a JPEG, its
    TIFF header (byte order ``II`` or ``MM``) and the orientation entry
    (0x0112) of IFD0. Anything else (not a JPEG, no Exif segment, a missing,
    out-of-range or garbled tag) is 1, upright: EXIF never fails a decode.
    A ``tf.function``, so an eager decode (prediction) runs the parse as one
    graph rather than op by op.
    """
    # Every read is clamped to the bytes, so the parse is safe on any input.
    # Most photos have no Exif id: they skip the TIFF reads (one tf.cond,
    # cheaper than its dozens of small ops).
    has_id, pos = _exif_id_position(contents)

    def parse():
        found, head, tiff = _exif_tiff(contents, pos)
        value = _tiff_orientation(contents, head, tiff)
        valid = tf.io.is_jpeg(contents) & found & (value >= 1) & (value <= 8)
        return tf.cast(tf.where(valid, value, 1), tf.int32)

    return tf.cond(has_id, parse, lambda: tf.constant(1, tf.int32))


def _swaps_sides(orientation: tf.Tensor) -> tf.Tensor:
    """Orientations 5-8 are stored turned by 90 degrees: height and width swap."""
    return orientation >= 5


def _apply_orientation(image: tf.Tensor, orientation: tf.Tensor) -> tf.Tensor:
    """Turns ``image`` (HxWxC) upright as EXIF ``orientation`` says.

    5-8 transpose first; then 2, 3, 6, 7 flip left-right and 3, 4, 7, 8 flip
    up-down (6 is a quarter turn clockwise, 8 counter-clockwise).
    """
    def turn():
        perm = tf.where(_swaps_sides(orientation), tf.constant([1, 0, 2]),
                        tf.constant([0, 1, 2]))
        lr = tf.reduce_any(tf.equal(orientation, [2, 3, 6, 7]))
        ud = tf.reduce_any(tf.equal(orientation, [3, 4, 7, 8]))
        return tf.reverse(tf.transpose(image, perm),
                          tf.boolean_mask(tf.constant([0, 1]), tf.stack([ud, lr])))

    # Upright photos (nearly all) skip the copies of a transpose and a reverse.
    return tf.cond(orientation > 1, turn, lambda: image)


def apply_exif_orientation(image: tf.Tensor, contents: tf.Tensor) -> tf.Tensor:
    """Turns a decoded ``image`` upright by the EXIF orientation of its ``contents``."""
    return _apply_orientation(image, exif_orientation(contents))


def decode_and_resize(contents: tf.Tensor, image_size,
                      options: Optional[DecodeOptions] = None,
                      orientation: Optional[tf.Tensor] = None) -> tf.Tensor:
    """Decodes encoded image bytes and resizes them to ``image_size``.

    The one decode function of catdog: training, evaluation, prediction and
    the exported serving signature all call it, so they see the same pixels.

    Args:
      contents: scalar string tensor with JPEG, PNG, GIF (first frame) or BMP
        bytes. Grayscale, RGBA and 16-bit images are converted to 8-bit RGB
        (or, with ``color_mode="grayscale"``, to 8-bit luma).
      image_size: ``(height, width)`` of the output.
      options: :class:`DecodeOptions` (default: ``DecodeOptions()``). With
        ``exif_orientation``, a JPEG is turned upright by its EXIF tag
        before resizing; ``resize_mode`` and ``interpolation`` say how it is
        resized.
      orientation: with ``exif_orientation``, the value
        :func:`exif_orientation` reads from these ``contents`` if the caller
        knows it already (an int32 scalar, e.g. from the file check); the
        bytes are then not parsed again.

    Returns:
      A ``uint8`` tensor of shape ``(height, width, channels)`` (3, or 1 for
      ``color_mode="grayscale"``). The default resize
      is a bilinear stretch, as in ``keras.utils.image_dataset_from_directory``.
    """
    options = _resolve(options)
    height, width = int(image_size[0]), int(image_size[1])
    image = tf.io.decode_image(
        contents, channels=options.channels, dtype=tf.uint8, expand_animations=False)
    if options.exif_orientation:
        if orientation is None:
            orientation = exif_orientation(contents)
        image = _apply_orientation(image, orientation)
    return _resize_to_uint8(image, height, width, options)


def _centre_crop(image: tf.Tensor, height: int, width: int) -> tf.Tensor:
    """The centred largest box of aspect ratio ``height:width``, with the
    arithmetic of ``keras.utils.smart_resize`` on tensors of unknown size."""
    shape = tf.shape(image)
    h, w = shape[0], shape[1]
    crop_h = tf.maximum(tf.minimum(h, tf.cast(tf.cast(w * height, tf.float32) / width,
                                              tf.int32)), 1)
    crop_w = tf.maximum(tf.minimum(w, tf.cast(tf.cast(h * width, tf.float32) / height,
                                              tf.int32)), 1)
    top = tf.cast(tf.cast(h - crop_h, tf.float32) / 2, tf.int32)
    left = tf.cast(tf.cast(w - crop_w, tf.float32) / 2, tf.int32)
    return image[top:top + crop_h, left:left + crop_w]


def resize_to_uint8(image: tf.Tensor, image_size,
                    options: Optional[DecodeOptions] = None) -> tf.Tensor:
    """Resizes decoded uint8 pixels (HxWxC) to ``image_size`` as
    :func:`decode_and_resize` does after its decode (resize mode,
    interpolation, rounding); for pixels stored already decoded."""
    return _resize_to_uint8(image, int(image_size[0]), int(image_size[1]), options)


def _resize_to_uint8(image: tf.Tensor, height: int, width: int,
                     options: Optional[DecodeOptions] = None) -> tf.Tensor:
    options = _resolve(options)
    if options.resize_mode == "stretch" and options.interpolation == "bilinear":
        # Bilinear resize, rounded back to uint8. TF's bilinear kernel is faster
        # on float32 input than on uint8 (it converts either way, so the pixels
        # are identical), and no clip is needed: every output is a convex
        # combination of input values in [0, 255].
        image = tf.image.resize(tf.cast(image, tf.float32), (height, width),
                                method="bilinear")
        image = tf.cast(tf.round(image), tf.uint8)
    else:
        # What image_dataset_from_directory does, so the pixels are exactly
        # its own: crop as keras' smart_resize, pad with
        # tf.image.resize_with_pad (resize keeping the aspect ratio, then
        # centre in zeros), tf.image.resize. Cubic and lanczos kernels
        # overshoot: clip.
        image = tf.cast(image, tf.float32)
        if options.resize_mode == "pad":
            image = tf.image.resize_with_pad(image, height, width,
                                             method=options.interpolation)
        else:
            if options.resize_mode == "crop":
                image = _centre_crop(image, height, width)
            image = tf.image.resize(image, (height, width), method=options.interpolation)
        image = tf.cast(tf.round(tf.clip_by_value(image, 0.0, 255.0)), tf.uint8)
    image.set_shape((height, width, options.channels))
    return image


def decode_and_resize_scaled(contents: tf.Tensor, image_size,
                             options: Optional[DecodeOptions] = None,
                             orientation: Optional[tf.Tensor] = None) -> tf.Tensor:
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

    With ``options.exif_orientation`` the image is turned upright after the
    scaled decode; the size policy compares the upright sides (a JPEG
    stored turned by 90 degrees has its header's height and width swapped).

    Args:
      contents: scalar string tensor of encoded image bytes.
      image_size: ``(height, width)`` of the output.
      options: :class:`DecodeOptions`, as for :func:`decode_and_resize`.
      orientation: as for :func:`decode_and_resize`.

    Returns:
      A ``uint8`` tensor of shape ``(height, width, options.channels)``.
    """
    options = _resolve(options)
    height, width = int(image_size[0]), int(image_size[1])

    def exact():
        return decode_and_resize(contents, (height, width), options, orientation)

    def scaled_jpeg():
        shape = tf.io.extract_jpeg_shape(contents)
        if not options.exif_orientation:
            turn = tf.constant(1, tf.int32)
        else:
            turn = exif_orientation(contents) if orientation is None else orientation
        swap = _swaps_sides(turn)
        stored_height = tf.where(swap, width, height)
        stored_width = tf.where(swap, height, width)

        def at(ratio):
            def decode():
                image = tf.io.decode_jpeg(contents, channels=options.channels, ratio=ratio,
                                          dct_method="INTEGER_FAST")
                image = _apply_orientation(image, turn)
                return _resize_to_uint8(image, height, width, options)
            return decode

        fits = lambda r: tf.logical_and(shape[0] >= r * stored_height,
                                        shape[1] >= r * stored_width)
        return tf.case([(fits(r), at(r)) for r in DCT_RATIOS], default=exact,
                       exclusive=False)

    image = tf.cond(tf.io.is_jpeg(contents), scaled_jpeg, exact)
    image.set_shape((height, width, options.channels))
    return image


def decoder(dct_scaling: bool, options: Optional[DecodeOptions] = None
            ) -> Callable[..., tf.Tensor]:
    """The decode of one split: ``(contents, image_size[, orientation]) -> uint8 image``.

    Every source (folder, TFRecords, TFDS) picks its decode here:
    :func:`decode_and_resize_scaled` with ``dct_scaling``, else
    :func:`decode_and_resize`, both with ``options``; ``orientation`` is the
    known EXIF orientation of ``contents``, if any (see
    :func:`decode_and_resize`).
    """
    options = _resolve(options)
    decode = decode_and_resize_scaled if dct_scaling else decode_and_resize
    return lambda contents, image_size, orientation=None: decode(
        contents, image_size, options, orientation)
