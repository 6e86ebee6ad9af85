"""What the first and last bytes of a file say: format, size, truncation.

The format comes from magic bytes, never from the extension (a PNG named
``.jpg`` is a valid image; an HTML page named ``.jpg`` is not). Width and
height come from the JPEG SOFn marker, the PNG IHDR chunk, the GIF logical
screen, the BMP info header or the WebP VP8/VP8L/VP8X chunk. Pixels are
never decoded, so this is safe on decompression bombs.

Truncation is detected structurally, so that a decoder that recovers
truncated data could not let a half-gray photo through as label noise: a
JPEG must contain an end-of-image marker (``FFD9``) after its first
start-of-scan marker (entropy-coded data cannot contain ``FFD9``, so this is
exact, and data appended after the end of the image -- camera trailers,
motion photos -- is allowed); a PNG must contain its complete 12-byte
``IEND`` chunk; a WebP file must be as long as its RIFF header says. A JPEG
whose *middle* is corrupted but whose structure is intact passes here and
in the decode (libjpeg fills the damaged blocks); flagging it would need a
second, stricter decoder, doubling the cost of a check for a rare case.
"""

from __future__ import annotations

import dataclasses

from catdog import fileio

_HEAD_BYTES = 64 * 1024
_TAIL_BYTES = 4 * 1024
_CHUNK_BYTES = 1024 * 1024


@dataclasses.dataclass(frozen=True)
class ImageHeader:
    """What the first and last bytes of a file say about it.

    Attributes:
      format: ``"jpeg"``, ``"png"``, ``"gif"``, ``"bmp"``, ``"webp"``, the name
        of a recognised but undecodable format (``"tiff"``, ``"heic"``, ...) or
        None when the bytes are not a known image format.
      width: width in pixels from the header, or None if unknown.
      height: height in pixels from the header, or None if unknown.
      size_bytes: file size.
      problem: why the file cannot be used, judged from these bytes alone, or
        None if the header looks fine (the full decode still decides).
    """

    format: str | None
    width: int | None
    height: int | None
    size_bytes: int
    problem: str | None


class _Reader:
    """Random access to a file through one refillable window."""

    def __init__(self, handle, size: int, head: bytes):
        self._handle = handle
        self.size = size
        self._start = 0
        self._window = head

    def read_at(self, offset: int, length: int) -> bytes:
        """Returns up to ``length`` bytes at ``offset`` (fewer at end of file)."""
        end = self._start + len(self._window)
        if self._start <= offset and offset + length <= end:
            return self._window[offset - self._start:offset - self._start + length]
        if offset >= self.size:
            return b""
        self._handle.seek(offset)
        self._window = self._handle.read(max(length, _HEAD_BYTES))
        self._start = offset
        return self._window[:length]

    def contains(self, needle: bytes, start: int) -> bool:
        """Whether ``needle`` occurs at or after ``start``.

        The tail is searched first, which is where the marker of a complete
        file is; the rest of the file is read in chunks only when the tail does
        not have it (data appended after the end of the image).
        """
        tail_start = max(start, self.size - _TAIL_BYTES)
        if needle in self.read_at(tail_start, max(0, self.size - tail_start)):
            return True
        carry = b""
        offset = start
        while offset < tail_start:
            chunk = self.read_at(offset, min(_CHUNK_BYTES, tail_start - offset))
            if not chunk:
                return False
            if needle in carry + chunk:
                return True
            carry = chunk[-(len(needle) - 1):]
            offset += len(chunk)
        # The needle may straddle the boundary between the body and the tail.
        return needle in carry + self.read_at(tail_start, len(needle) - 1)


# SOFn markers carry the frame size; C4 (DHT), C8 (JPG) and CC (DAC) do not.
_JPEG_SOF_MARKERS = frozenset(
    {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE,
     0xCF})
# Markers without a length field.
_JPEG_STANDALONE_MARKERS = frozenset({0x01, *range(0xD0, 0xD8)})


def _sniff_jpeg(reader: _Reader):
    """Returns ``(width, height, problem)`` for a file starting with FFD8."""
    width = height = None
    offset = 2
    while True:
        marker = reader.read_at(offset, 4)
        if len(marker) < 2:
            return width, height, (
                f"truncated JPEG: file ends inside its header at byte {offset}")
        if marker[0] != 0xFF:
            return width, height, (
                f"corrupt JPEG header: no marker at byte {offset} "
                f"(found 0x{marker[0]:02x})")
        code = marker[1]
        if code == 0xFF:  # Fill byte before a marker.
            offset += 1
            continue
        if code in _JPEG_STANDALONE_MARKERS:
            offset += 2
            continue
        if code == 0xD9:
            return width, height, "corrupt JPEG: end-of-image marker before any image data"
        if len(marker) < 4:
            return width, height, (
                f"truncated JPEG: file ends inside its header at byte {offset}")
        length = int.from_bytes(marker[2:4], "big")
        if length < 2:
            return width, height, f"corrupt JPEG header: bad segment length at byte {offset}"
        if code in _JPEG_SOF_MARKERS and width is None:
            frame = reader.read_at(offset + 4, 5)
            if len(frame) < 5:
                return width, height, "truncated JPEG: file ends inside its frame header"
            height = int.from_bytes(frame[1:3], "big")
            width = int.from_bytes(frame[3:5], "big")
        if code == 0xDA:  # Start of scan: the header is over.
            if width is None:
                return None, None, (
                    "corrupt JPEG: no frame header (SOFn marker) before the image data")
            scan_start = offset + 2 + length
            if not reader.contains(b"\xff\xd9", scan_start):
                return width, height, "truncated JPEG: no end-of-image marker"
            return width, height, None
        offset += 2 + length


def _sniff_png(reader: _Reader, head: bytes):
    if len(head) < 24:
        return None, None, "truncated PNG: file ends inside its header"
    if head[12:16] != b"IHDR":
        return None, None, (
            f"corrupt PNG: first chunk is {head[12:16]!r}, expected b'IHDR'")
    width = int.from_bytes(head[16:20], "big")
    height = int.from_bytes(head[20:24], "big")
    # The IEND chunk is always these 12 bytes (empty body, fixed CRC);
    # matching all of them also catches a file cut inside the CRC.
    if not reader.contains(b"\x00\x00\x00\x00IEND\xaeB`\x82", 33):
        return width, height, "truncated PNG: no IEND chunk"
    return width, height, None


def _sniff_gif(head: bytes):
    if len(head) < 10:
        return None, None, "truncated GIF: file ends inside its header"
    return (int.from_bytes(head[6:8], "little"),
            int.from_bytes(head[8:10], "little"), None)


def _sniff_bmp(head: bytes):
    if len(head) < 26:
        return None, None, "truncated BMP: file ends inside its header"
    info_size = int.from_bytes(head[14:18], "little")
    if info_size == 12:  # OS/2 BITMAPCOREHEADER: 16-bit unsigned sizes.
        return (int.from_bytes(head[18:20], "little"),
                int.from_bytes(head[20:22], "little"), None)
    width = int.from_bytes(head[18:22], "little", signed=True)
    # A negative height means rows are stored top-down.
    height = int.from_bytes(head[22:26], "little", signed=True)
    return abs(width), abs(height), None


def _sniff_webp(reader: _Reader, head: bytes):
    if len(head) < 30:
        return None, None, "truncated WebP: file ends inside its header"
    declared = int.from_bytes(head[4:8], "little") + 8
    chunk = head[12:16]
    width = height = None
    if chunk == b"VP8X":
        width = int.from_bytes(head[24:27], "little") + 1
        height = int.from_bytes(head[27:30], "little") + 1
    elif chunk == b"VP8 ":
        width = int.from_bytes(head[26:28], "little") & 0x3FFF
        height = int.from_bytes(head[28:30], "little") & 0x3FFF
    elif chunk == b"VP8L":
        bits = int.from_bytes(head[21:25], "little")
        width = (bits & 0x3FFF) + 1
        height = ((bits >> 14) & 0x3FFF) + 1
    else:
        return None, None, f"corrupt WebP: unknown first chunk {chunk!r}"
    if reader.size < declared:
        return width, height, (
            f"truncated WebP: header says {declared} bytes, file has {reader.size}")
    return width, height, None


# Recognised formats that tf.io.decode_image cannot decode (or, for JPEG XL,
# whose size header catdog does not parse, so the pixel guard cannot apply).
_HEIF_BRANDS = {
    b"heic": "heic", b"heix": "heic", b"hevc": "heic", b"heim": "heic",
    b"heis": "heic", b"mif1": "heif", b"msf1": "heif", b"avif": "avif",
    b"avis": "avif",
}


def _unsupported_format(head: bytes) -> str | None:
    if head[:4] in (b"II*\x00", b"MM\x00*"):
        return "tiff"
    if head[4:8] == b"ftyp":
        return _HEIF_BRANDS.get(head[8:12], "mp4/quicktime video")
    if head[:2] == b"\xff\x0a" or head[:12] == b"\x00\x00\x00\x0cJXL \r\n\x87\n":
        return "jpeg xl"
    if head[:12] == b"\x00\x00\x00\x0cjP  \r\n\x87\n" or head[:4] == b"\xffO\xffQ":
        return "jpeg 2000"
    if head[:4] == b"%PDF":
        return "pdf"
    if head[:4] == b"8BPS":
        return "psd"
    if head[:4] == b"\x00\x00\x01\x00":
        return "ico"
    if head[:4] == b"RIFF":
        return f"riff {head[8:12].decode('latin-1').strip()!r}"
    return None


def _describe_unknown(head: bytes) -> str:
    """A readable reason for bytes that are no known image format."""
    text = head[:256].decode("utf-8", errors="replace").lstrip("\ufeff \t\r\n")
    first_line = text.splitlines()[0] if text else ""
    snippet = first_line[:40]
    if snippet and "\ufffd" not in snippet and all(
            ch.isprintable() or ch == "\t" for ch in snippet):
        if len(first_line) > len(snippet):
            snippet += "..."
        return f"not an image: starts with {snippet!r}"
    return f"not an image: unrecognised header bytes {head[:8].hex(' ')}"


def read_header(handle, size: int) -> ImageHeader:
    """The :class:`ImageHeader` of an open binary file of ``size`` bytes."""
    head = handle.read(_HEAD_BYTES)
    if size == 0 or not head:
        return ImageHeader(None, None, None, size, "empty file (0 bytes)")
    reader = _Reader(handle, size, head)
    if head[:3] == b"\xff\xd8\xff":
        fmt, (width, height, problem) = "jpeg", _sniff_jpeg(reader)
    elif head[:8] == b"\x89PNG\r\n\x1a\n":
        fmt, (width, height, problem) = "png", _sniff_png(reader, head)
    elif head[:6] in (b"GIF87a", b"GIF89a"):
        fmt, (width, height, problem) = "gif", _sniff_gif(head)
    elif head[:2] == b"BM":
        fmt, (width, height, problem) = "bmp", _sniff_bmp(head)
    elif head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        fmt, (width, height, problem) = "webp", _sniff_webp(reader, head)
    else:
        unsupported = _unsupported_format(head)
        if unsupported:
            return ImageHeader(
                unsupported, None, None, size,
                f"unsupported format {unsupported!r}; convert it to JPEG or PNG")
        return ImageHeader(None, None, None, size, _describe_unknown(head))
    if problem is None and (not width or not height):
        problem = f"image header says {width}x{height} pixels"
    return ImageHeader(fmt, width, height, size, problem)


def sniff_header(path: str) -> ImageHeader:
    """Reads the format and size of an image from its first and last bytes.

    Only the first 64 KiB and the last 4 KiB are read for a normal file; the
    rest is read only to tell a truncated JPEG / PNG from one with data
    appended after its end. Pixels are never decoded, so this is safe on
    decompression bombs.

    Args:
      path: file to read.

    Returns:
      An ``ImageHeader``; ``problem`` names what is wrong if the header alone
      shows the file is unusable.

    Raises:
      OSError: the file cannot be opened or read.
    """
    size, _ = fileio.stat(path)
    with fileio.open_binary(path) as handle:
        return read_header(handle, size)
