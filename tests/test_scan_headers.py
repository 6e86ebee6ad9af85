"""Tests for catdog.scan.headers: format, size and truncation from the bytes."""

import io
import os

import numpy as np
import pytest
from PIL import Image
import tensorflow as tf

import helpers
from catdog import scan
from catdog.scan import headers

from test_scan_check import (  # noqa: F401  (shared fixtures)
    SIZE, DEV_DATA, write_kind)


_TRUE_FORMAT = {"png": "png", "gif": "gif", "bmp": "bmp", "gray_png": "png",
                "rgba_png": "png", "palette_png": "png", "png16": "png",
                "png_named_jpg": "png", "webp_named_jpg": "webp"}


@pytest.mark.parametrize("kind", sorted(helpers.VALID))
def test_sniff_reads_format_from_magic_bytes_and_size(tmp_path, kind):
    path = write_kind(tmp_path, kind)
    header = scan.sniff_header(path)
    expected = _TRUE_FORMAT.get(kind, "jpeg")
    assert (header.format, header.width, header.height) == (expected,) + SIZE
    assert header.problem is None
    assert header.size_bytes == os.path.getsize(path)


@pytest.mark.skipif(not os.path.isdir(DEV_DATA), reason="no real photos on this machine")
def test_sniff_agrees_with_pillow_on_real_photos():
    paths = sorted(os.path.join(folder, name) for folder, _, files in os.walk(DEV_DATA)
                   for name in files)
    assert paths
    for path in paths:
        header = scan.sniff_header(path)
        with Image.open(path) as image:
            assert (header.width, header.height) == image.size, path
        assert header.problem is None, path


class _CountingFile(io.BytesIO):
    def __init__(self, content):
        super().__init__(content)
        self.bytes_read = 0

    def read(self, size=-1):
        chunk = super().read(size)
        self.bytes_read += len(chunk)
        return chunk


def test_sniff_reads_only_head_and_tail_of_a_large_file():
    noise = np.random.RandomState(0).randint(0, 256, (1200, 1600, 3), dtype=np.uint8)
    content = tf.io.encode_jpeg(noise, quality=95).numpy()
    assert len(content) > 1_000_000
    handle = _CountingFile(content)
    header = headers.read_header(handle, len(content))
    assert (header.format, header.width, header.height, header.problem) == (
        "jpeg", 1600, 1200, None)
    assert handle.bytes_read <= 64 * 1024 + 4 * 1024


# The last byte of a baseline JPEG (the D9 of its end-of-image marker) is the
# one cut TensorFlow may survive: when the final block's bits are complete,
# the decoder returns every pixel without reading the marker. That depends on
# the content (about 1 file in 20 of these), so the TensorFlow half of the
# next test leaves that cut out, and the one after it pins a file where it
# happens.
_LAST_BYTE_MAY_DECODE = {"jpeg"}


@pytest.mark.parametrize("kind", ["jpeg", "progressive_jpeg", "png"])
def test_every_truncation_is_rejected_by_the_sniffer_and_by_tensorflow(tmp_path, kind):
    # The module's truncation policy rests on both halves of this test: every
    # cut is flagged, and every cut that loses image data would fail the decode.
    with open(write_kind(tmp_path, kind), "rb") as f:
        content = f.read()
    for cut in sorted(set(range(1, len(content), 3)) | {len(content) - 2, len(content) - 1}):
        prefix = content[:cut]
        assert headers.read_header(io.BytesIO(prefix), cut).problem, (kind, cut)
        if cut == len(content) - 1 and kind in _LAST_BYTE_MAY_DECODE:
            continue
        with pytest.raises(tf.errors.InvalidArgumentError):
            tf.io.decode_image(prefix, channels=3, expand_animations=False)


def test_a_jpeg_one_byte_short_is_rejected_even_where_tensorflow_decodes_it():
    # Content seeded by this name (a file of the CI run where the cut decoded).
    content = helpers.jpeg_bytes("/tmp/pytest-of-root/pytest-14/popen-gw1/"
                                 "test_every_truncation_is_rejec0/photo.jpg")
    prefix = content[:-1]
    decoded = tf.io.decode_image(prefix, channels=3, expand_animations=False)
    assert tuple(decoded.shape) == (SIZE[1], SIZE[0], 3)
    header = headers.read_header(io.BytesIO(prefix), len(prefix))
    assert header.problem == "truncated JPEG: no end-of-image marker"


@pytest.mark.parametrize("content, reason", [
    (b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic", "unsupported format 'heic'"),
    (b"\x00\x00\x00\x1cftypavif\x00\x00\x00\x00avifmif1", "unsupported format 'avif'"),
    (b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n", "unsupported format 'pdf'"),
    (b"\xef\xbb\xbf<svg xmlns='http://www.w3.org/2000/svg'/>",
     "not an image: starts with \"<svg xmlns='http://www.w3.org/2000/svg'/...\""),
    (b"PK\x03\x04\x14\x00\x00\x00", "not an image: unrecognised header bytes 50 4b 03 04"),
    (b"\xff\xd8\xff\xe0\x00\x10JFIF", "truncated JPEG: file ends inside its header"),
    (b"\x89PNG\r\n\x1a\n\x00\x00", "truncated PNG: file ends inside its header"),
])
def test_sniff_explains_unusable_headers(content, reason):
    header = headers.read_header(io.BytesIO(content), len(content))
    assert header.problem.startswith(reason)
