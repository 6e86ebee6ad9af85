"""Index an image folder and find every file training could not use.

A single empty or truncated file makes ``tf.io.decode_image`` fail in the
middle of an epoch and takes the whole run down. catdog finds such files
before training, skips them and reports each one with its path and the
reason. Training and ``scripts/scan_data.py`` call the same functions here,
so they agree file by file.

How a file is judged (``check_file`` / ``check_files``):

1. **Header sniff** (``sniff_header``): reads the first 64 KiB and a few KiB
   of the tail. The format comes from magic bytes, never from the extension
   (a PNG named ``.jpg`` is a valid image; an HTML page named ``.jpg`` is
   not). Width and height come from the JPEG SOFn marker, the PNG IHDR chunk,
   the GIF logical screen, the BMP info header or the WebP VP8/VP8L/VP8X
   chunk. Empty files, non-images, formats TensorFlow cannot decode (TIFF,
   HEIC, AVIF, JPEG XL, ...) and truncated JPEG / PNG / WebP files are
   rejected here with a readable reason.
2. **Decompression-bomb guard**: an image whose header claims more than
   ``max_pixels`` pixels is rejected without ever being decoded.
3. **Full decode**: everything else goes through
   ``catdog.data.decode_and_resize``, the decode training uses. It is the
   arbiter: a file passes only if that decode succeeds. The decode runs as a
   parallel ``tf.data`` map with ``ignore_errors()`` that carries each file's
   index, so the surviving indices tell which files failed; only the failures
   are decoded again, eagerly, to capture the error message.

Truncation policy, decided by experiment with TensorFlow 2.21 (decoding every
prefix of small JPEG, progressive JPEG, PNG, GIF, BMP and WebP files):
``decode_image`` rejects every truncated JPEG, PNG, BMP and WebP (TF does not
ask libjpeg to recover truncated data), and accepts a GIF only when nothing
but its final trailer byte is missing, which loses no pixels. Truncation is
nevertheless detected structurally as well, so that a decoder that recovers
truncated data cannot let a half-gray photo through as label noise: a JPEG
must contain an end-of-image marker (``FFD9``) after its first start-of-scan
marker (entropy-coded data cannot contain ``FFD9``, so this is exact, and
data appended after the end of the image -- camera trailers, motion photos
-- is allowed); a PNG must contain its complete 12-byte ``IEND`` chunk; a
WebP file must be as long as its RIFF header says. A JPEG whose *middle* is corrupted but whose
structure is intact decodes without error (libjpeg prints "Corrupt JPEG
data" on stderr and fills the damaged blocks); such files pass: the only way
to flag them would be a second, stricter decoder, which doubles the cost of
a scan for a rare case.

Speed, measured on 2 shared CPU cores with real ~500x375 JPEG photos:
``check_files`` checks 660-930 files/s from cold (so 25,000 photos take
roughly 30-40 s); the tf.data decode alone runs at 730-1,160 files/s, while
the same decode called eagerly from 2 threads managed 220-610 files/s; the
header pass reads 5,000-10,000 files/s. With a warm cache, checking 25,000
files took 0.6-0.8 s.

Results are cached on disk, keyed by (absolute path, size, mtime_ns,
max_pixels), so the training stages run back to back decode-check a folder
only once. The cache lives in ``cache_dir``, ``$CATDOG_CACHE_DIR`` or
``~/.cache/catdog/scan`` and is never written inside the scanned folder;
results of another TensorFlow version or of older checks are not reused.

Nothing here modifies, moves or deletes a scanned file.
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import hashlib
import json
import logging
import os
import re
import statistics
import sys
import time
from typing import Callable, Iterable, Sequence, Union

import tensorflow as tf

from catdog import decode
from catdog import fileio

__all__ = [
    "ClassSummary",
    "DEFAULT_MAX_PIXELS",
    "IMAGE_EXTENSIONS",
    "FileCheck",
    "ImageHeader",
    "ScanInputError",
    "ScanReport",
    "check_file",
    "check_files",
    "default_cache_dir",
    "list_image_files",
    "scan_directory",
    "sniff_header",
    "walk_image_files",
]

_log = logging.getLogger(__name__)

# Same limit as Pillow's decompression-bomb warning: about 90 megapixels,
# i.e. ~270 MB of RGB pixels per decoded image.
DEFAULT_MAX_PIXELS = 89_478_485

# The extensions keras.utils.image_dataset_from_directory indexes.
IMAGE_EXTENSIONS = (".bmp", ".gif", ".jpeg", ".jpg", ".png")

# Operating-system litter that is never an image. Hidden files (".DS_Store",
# AppleDouble "._*" files) are skipped by their leading dot already.
_IGNORED_FILE_NAMES = frozenset({".ds_store", "thumbs.db", "desktop.ini"})
# Directories that never hold real images: macOS zip metadata.
_IGNORED_DIR_NAMES = frozenset({"__macosx"})

_HEAD_BYTES = 64 * 1024
_TAIL_BYTES = 4 * 1024
_CHUNK_BYTES = 1024 * 1024
# Output size of the check decode. The resize cannot fail once the decode
# succeeded, so a tiny size keeps the check cheap.
_CHECK_IMAGE_SIZE = (16, 16)

# Reasons starting with this describe the file system, not the file's
# content (permissions, a vanished file, a network error): never cached.
_READ_ERROR = "cannot read file: "

_CACHE_ENV_VAR = "CATDOG_CACHE_DIR"
# Bump when the checks change, so results of older checks are not reused.
_CACHE_SCHEMA = 1

ProgressArg = Union[bool, Callable[[int, int], None], None]


class ScanInputError(ValueError):
    """A directory, class name or setting given to the scan is unusable."""


# --------------------------------------------------------------------------
# Indexing.
# --------------------------------------------------------------------------


def _is_candidate(file_name: str) -> bool:
    """Whether a file name is an image candidate (extension, not litter)."""
    lower = file_name.lower()
    if lower.startswith(".") or lower in _IGNORED_FILE_NAMES:
        return False
    return lower.endswith(IMAGE_EXTENSIONS)


def _is_ignored_dir(dir_name: str) -> bool:
    return dir_name.startswith(".") or dir_name.lower() in _IGNORED_DIR_NAMES


def _walk_files(directory: str, follow_links: bool) -> tuple[list[str], list[str]]:
    """Lists the files under ``directory``, recursively, in sorted order.

    Returns:
      ``(candidates, ignored)``: paths with an image extension, and the other
      non-hidden files (a ``.webp`` or ``.heic`` photo silently left out of a
      dataset is worth telling the user about). Hidden files, OS litter and
      hidden / ``__MACOSX`` directories appear in neither list.
    """
    walked = []
    for root, dirs, files in fileio.walk(directory, follow_links):
        # Prune in place so hidden directories (.git, .ipynb_checkpoints, ...)
        # are not descended into.
        dirs[:] = sorted(d for d in dirs if not _is_ignored_dir(d.rstrip("/")))
        walked.append((root, sorted(files)))
    # Sorted by directory path, then file name: the order
    # keras.utils.image_dataset_from_directory uses with shuffle=False.
    walked.sort(key=lambda item: item[0])
    candidates, ignored = [], []
    for root, files in walked:
        for name in files:
            if _is_candidate(name):
                candidates.append(fileio.join(root, name))
            elif not name.startswith(".") and name.lower() not in _IGNORED_FILE_NAMES:
                ignored.append(fileio.join(root, name))
    return candidates, ignored


def walk_image_files(directory: str, follow_links: bool = False) -> list[str]:
    """The image candidates under ``directory``, recursively, in sorted order.

    The one folder walker of catdog: training's class folders, evaluation,
    the scan, prediction and the augmentation pictures all list files with
    it, so every entry point sees the same files. Candidates end in
    :data:`IMAGE_EXTENSIONS` (any case); hidden files, ``.DS_Store``,
    ``Thumbs.db``, ``desktop.ini``, AppleDouble ``._*`` files, hidden and
    ``__MACOSX`` folders are skipped; symlinked folders are followed only
    with ``follow_links``. Nothing is opened.

    Args:
      directory: a local folder or a ``tf.io.gfile`` URL.
      follow_links: descend into symlinked subfolders.

    Returns:
      The candidate paths.
    """
    return _walk_files(directory, follow_links)[0]


def _class_folders(directory: str) -> list[str]:
    return sorted(
        name for name in fileio.listdir(directory)
        if not _is_ignored_dir(name) and fileio.isdir(fileio.join(directory, name)))


def _require_directory(directory, what: str) -> str:
    if isinstance(directory, os.PathLike):
        directory = os.fspath(directory)
    if not isinstance(directory, str) or not directory:
        raise ScanInputError(f"{what} must be a folder path; got {directory!r}.")
    if not fileio.exists(directory):
        raise ScanInputError(
            f"{what} {directory!r} does not exist; pass an existing folder.")
    if not fileio.isdir(directory):
        raise ScanInputError(f"{what} {directory!r} is a file, not a folder.")
    return directory


def _index(directory, class_names, follow_links):
    """Shared body of ``list_image_files``; also returns the ignored files."""
    directory = _require_directory(directory, "data directory")
    found = _class_folders(directory)
    if class_names is None:
        class_names = found
    else:
        if isinstance(class_names, str):
            raise ScanInputError(
                f"class_names must be a list of folder names, got the string "
                f"{class_names!r}; pass e.g. ['cats', 'dogs'].")
        class_names = [str(name) for name in class_names]
        duplicated = sorted({n for n in class_names if class_names.count(n) > 1})
        if duplicated:
            raise ScanInputError(
                f"class_names lists {duplicated} more than once: {class_names}.")
        for name in class_names:
            if name not in found:
                raise ScanInputError(
                    f"class name {name!r} is not a subfolder of {directory!r}; "
                    f"subfolders found: {found}. Fix class_names or the folder layout.")
    if len(class_names) < 2:
        raise ScanInputError(
            f"{directory!r} must contain one subfolder per class, at least 2; "
            f"found {len(class_names)} class folder(s): {class_names}. Expected a "
            f"layout like {fileio.join(directory, 'cats')} and {fileio.join(directory, 'dogs')}.")
    paths, labels, ignored = [], [], []
    for label, name in enumerate(class_names):
        class_dir = fileio.join(directory, name)
        candidates, other = _walk_files(class_dir, follow_links)
        if not candidates:
            raise ScanInputError(
                f"class folder {class_dir!r} has no image files (extensions "
                f"{', '.join(IMAGE_EXTENSIONS)}, any case). Add images or leave the "
                f"class out with class_names.")
        paths.extend(candidates)
        labels.extend([label] * len(candidates))
        ignored.extend(other)
    return paths, labels, list(class_names), ignored


def list_image_files(
    directory,
    class_names: Sequence[str] | None = None,
    follow_links: bool = False,
) -> tuple[list[str], list[int], list[str]]:
    """Lists the candidate image files of a one-subfolder-per-class folder.

    Same semantics as ``keras.utils.image_dataset_from_directory(labels=
    "inferred", shuffle=False)``: the class of a file is the top-level subfolder
    it is in (files in nested subfolders count for that class), classes are in
    alphanumeric order unless ``class_names`` gives the order, and files are
    in a deterministic sorted order. Candidates are files ending in
    ``.jpg .jpeg .png .gif .bmp`` in any case; hidden files, ``.DS_Store``,
    ``Thumbs.db``, ``desktop.ini``, AppleDouble ``._*`` files, hidden
    directories and ``__MACOSX`` are ignored. Nothing is opened: whether a
    candidate is a usable image is decided by ``check_files``.

    Local paths use ``os``; paths with a scheme (``gs://...``) use
    ``tf.io.gfile``.

    Args:
      directory: the folder holding one subfolder per class.
      class_names: optional list of class folder names to use, in label order.
        Folders not listed are left out.
      follow_links: whether to descend into symlinked subdirectories below
        the class folders.

    Returns:
      ``(paths, labels, class_names)``: file paths (strings), their integer
      labels (index into ``class_names``) and the class names.

    Raises:
      ScanInputError (a ``ValueError``): the directory is missing, has fewer
        than 2 class folders, ``class_names`` names a folder that does not
        exist, or a class folder has no candidate files.
    """
    paths, labels, names, _ = _index(directory, class_names, follow_links)
    return paths, labels, names


# --------------------------------------------------------------------------
# Header sniffing.
# --------------------------------------------------------------------------


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


def _sniff_open(handle, size: int) -> ImageHeader:
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
        return _sniff_open(handle, size)


# --------------------------------------------------------------------------
# Checking files.
# --------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class FileCheck:
    """Whether one file is a usable image, and why not.

    Attributes:
      path: the file, as it was given.
      ok: True if ``catdog.data.decode_and_resize`` decodes it and it passed
        the header checks.
      reason: why the file is unusable, or None if ``ok``.
      format: format from the magic bytes (see ``ImageHeader.format``).
      width: width in pixels from the header, or None.
      height: height in pixels from the header, or None.
      size_bytes: file size, or None if the file could not be read.
    """

    path: str
    ok: bool
    reason: str | None
    format: str | None
    width: int | None
    height: int | None
    size_bytes: int | None

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _pixel_limit_problem(width: int, height: int, max_pixels: int) -> str | None:
    pixels = width * height
    if pixels <= max_pixels:
        return None
    return (f"image is {width}x{height} ({pixels / 1e6:.1f} MP), above "
            f"max_pixels={max_pixels}; raise --max_pixels to use it")


def _validate_max_pixels(max_pixels) -> int:
    if isinstance(max_pixels, bool) or not isinstance(max_pixels, int) or max_pixels <= 0:
        raise ScanInputError(
            f"max_pixels must be a positive integer; got max_pixels={max_pixels!r}.")
    return max_pixels


def _check_header(path: str, max_pixels: int, stamp=None):
    """Runs the header checks on one file.

    Args:
      path: the file.
      max_pixels: the pixel limit.
      stamp: ``(size, mtime_ns)`` if the caller has stat-ed the file already.

    Returns:
      ``(check, stamp)``: ``check`` is the final ``FileCheck`` when the header
      settles it, or a provisional ok ``FileCheck`` when the file still needs
      the full decode; ``stamp`` is ``(size, mtime_ns)`` for the cache, or
      None when the file could not be read (such results are not cached: the
      error may be transient).
    """
    try:
        stamp = stamp or fileio.stat(path)
        with fileio.open_binary(path) as handle:
            header = _sniff_open(handle, stamp[0])
    except (OSError, tf.errors.OpError) as e:
        message = e.message if isinstance(e, tf.errors.OpError) else str(e)
        return FileCheck(path, False, f"{_READ_ERROR}{message}",
                         None, None, None, None), None
    problem = header.problem
    if problem is None:
        problem = _pixel_limit_problem(header.width, header.height, max_pixels)
    check = FileCheck(path, problem is None, problem, header.format,
                      header.width, header.height, header.size_bytes)
    return check, stamp


_TF_ERROR_NOISE = (
    re.compile(r"^\{\{function_node [^}]*\}\}\s*"),
    re.compile(r"\s*\[Op:[^\]]*\].*$", re.DOTALL),
)


def _clean_tf_message(message: str) -> str:
    for pattern in _TF_ERROR_NOISE:
        message = pattern.sub("", message)
    return message.strip().splitlines()[0] if message.strip() else "unknown error"


def _decode_error(path: str) -> str | None:
    """Decodes one file eagerly; returns the error message or None."""
    try:
        contents = tf.io.read_file(fileio.tf_path(path))
    except tf.errors.OpError as e:
        return f"{_READ_ERROR}{_clean_tf_message(e.message)}"
    try:
        decode.decode_and_resize(contents, _CHECK_IMAGE_SIZE)
    except tf.errors.OpError as e:
        return f"decode failed: {_clean_tf_message(e.message)}"
    return None


def _decode_survivors(paths: Sequence[str], num_parallel, on_done) -> set[int]:
    """Decodes ``paths`` in a parallel tf.data map; returns the indices that
    decoded. ``ignore_errors`` drops each failing element, so a failure costs
    nothing here; the caller re-decodes only the missing indices."""

    def decode_one(index, path):
        image = decode.decode_and_resize(tf.io.read_file(path), _CHECK_IMAGE_SIZE)
        # Depend on the pixels: the resized shape is static, so returning only
        # the index would let the optimizer prune the decode away.
        return index, tf.reduce_max(image)

    indices = tf.range(len(paths), dtype=tf.int64)
    names = tf.constant([fileio.tf_path(p) for p in paths], tf.string)
    dataset = tf.data.Dataset.from_tensor_slices((indices, names))
    dataset = dataset.map(
        decode_one, num_parallel_calls=num_parallel or tf.data.AUTOTUNE,
        deterministic=False)
    dataset = dataset.ignore_errors().map(lambda index, _: index).batch(64)
    survivors = set()
    for batch in dataset.as_numpy_iterator():
        survivors.update(int(i) for i in batch)
        on_done(len(batch))
    return survivors


def check_file(path: str, max_pixels: int = DEFAULT_MAX_PIXELS) -> FileCheck:
    """Checks one file: header, pixel limit, then the real decode.

    Args:
      path: the file.
      max_pixels: largest width*height accepted; bigger images are rejected
        from their header, without being decoded.

    Returns:
      A ``FileCheck``. Never raises for a bad or unreadable file.
    """
    max_pixels = _validate_max_pixels(max_pixels)
    check, _ = _check_header(os.fspath(path), max_pixels)
    if check.ok:
        error = _decode_error(check.path)
        if error:
            check = dataclasses.replace(check, ok=False, reason=error)
    return check


# --------------------------------------------------------------------------
# Scan cache.
# --------------------------------------------------------------------------


def default_cache_dir() -> str:
    """``$CATDOG_CACHE_DIR`` if set, else ``~/.cache/catdog/scan``."""
    return os.environ.get(_CACHE_ENV_VAR) or os.path.join(
        os.path.expanduser("~"), ".cache", "catdog", "scan")


def _within(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


class _ScanCache:
    """Check results of earlier scans, in one JSON file per data folder."""

    def __init__(self, cache_dir: str | None, paths: Sequence[str]):
        self.file = None
        self._entries: dict[str, list] = {}
        self._dirty = False
        local = [os.path.abspath(p) for p in paths if not fileio.is_remote(p)]
        folders = sorted({os.path.dirname(p) for p in local})
        data_root = os.path.commonpath(folders) if folders else None
        key_root = data_root if data_root else (paths[0].rsplit("/", 1)[0] if paths else "")
        cache_dir = os.path.realpath(os.path.expanduser(cache_dir or default_cache_dir()))
        if data_root and _within(cache_dir, os.path.realpath(data_root)):
            _log.warning(
                "Not caching scan results: cache dir %s is inside the data folder %s "
                "and catdog never writes there. Set %s or cache_dir elsewhere.",
                cache_dir, data_root, _CACHE_ENV_VAR)
            return
        digest = hashlib.sha256(key_root.encode("utf-8", "surrogateescape")).hexdigest()
        self.file = os.path.join(cache_dir, f"scan-{digest[:16]}.json")
        self._entries = self._load()

    def _load(self) -> dict:
        try:
            with open(self.file, "rb") as f:
                content = json.loads(f.read().decode("utf-8"))
            if (content.get("schema") != _CACHE_SCHEMA
                or content.get("tensorflow") != tf.__version__
                or not isinstance(content.get("entries"), dict)):
                return {}
            return content["entries"]
        except FileNotFoundError:
            return {}
        except (OSError, ValueError, AttributeError) as e:
            # A damaged cache only costs a re-check; it is rewritten afterwards.
            _log.warning("Ignoring unreadable scan cache %s: %s", self.file, e)
            self._dirty = True
            return {}

    def get(self, path: str, stamp, max_pixels: int) -> FileCheck | None:
        entry = self._entries.get(fileio.abspath(path))
        try:
            size, mtime_ns, limit, ok, reason, fmt, width, height = entry
        except (TypeError, ValueError):
            return None
        if [size, mtime_ns, limit] != [stamp[0], stamp[1], max_pixels]:
            return None
        if not isinstance(ok, bool) or (reason is not None and not isinstance(reason, str)):
            return None
        return FileCheck(path, ok, reason, fmt, width, height, size)

    def put(self, check: FileCheck, stamp, max_pixels: int) -> None:
        if check.reason and check.reason.startswith(_READ_ERROR):
            return
        self._entries[fileio.abspath(check.path)] = [
            stamp[0], stamp[1], max_pixels, check.ok, check.reason, check.format,
            check.width, check.height]
        self._dirty = True

    def save(self) -> None:
        if self.file is None or not self._dirty:
            return
        content = {"schema": _CACHE_SCHEMA, "tensorflow": tf.__version__,
                   "entries": self._entries}
        folder = os.path.dirname(self.file)
        try:
            os.makedirs(folder, exist_ok=True)
            # Atomic, so a concurrent reader never sees half a file.
            fileio.write_text(self.file, json.dumps(content))
        except OSError as e:
            _log.warning("Could not write scan cache %s: %s", self.file, e)


# --------------------------------------------------------------------------
# Progress.
# --------------------------------------------------------------------------


class _Progress:
    """Progress as a callback, a tqdm bar on stderr, plain lines, or nothing."""

    def __init__(self, progress: ProgressArg, total: int, description: str):
        self._total = total
        self._done = 0
        self._callback = progress if callable(progress) else None
        self._bar = None
        self._printing = False
        self._next_print = 0.0
        if self._callback is None and progress and total:
            try:
                import tqdm  # Comes with tensorflow-datasets; optional.
                # delay: short scans finish before a bar is ever drawn.
                self._bar = tqdm.tqdm(total=total, desc=description, unit="file",
                                      file=sys.stderr, delay=2.0)
            except ImportError:
                self._printing = True
                self._description = description
                self._next_print = time.monotonic() + 2.0

    def update(self, count: int = 1) -> None:
        if not count:
            return
        self._done += count
        if self._callback is not None:
            self._callback(self._done, self._total)
        elif self._bar is not None:
            self._bar.update(count)
        elif self._printing and (time.monotonic() >= self._next_print
                                 or self._done == self._total):
            print(f"{self._description}: {self._done}/{self._total} files",
                  file=sys.stderr)
            self._next_print = time.monotonic() + 5.0

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


def _thread_map(fn, items, threads: int):
    """``ThreadPoolExecutor.map`` that hands items to threads in chunks.

    One future per file costs more than the work on a cached file: with a
    future each, 25,000 warm-cache lookups took 4.7 s; in chunks, 0.8 s.

    Yields:
      ``fn(item)`` for each item, in order.
    """
    items = list(items)
    size = max(1, min(64, len(items) // (4 * threads)))
    chunks = [items[start:start + size] for start in range(0, len(items), size)]
    with concurrent.futures.ThreadPoolExecutor(threads) as pool:
        for outcomes in pool.map(lambda chunk: [fn(item) for item in chunk], chunks):
            yield from outcomes


def _default_threads(paths: Sequence[str]) -> int:
    """Threads for per-file I/O (headers, hashes).

    Local files in the page cache are parsed faster by few threads (the
    parsing holds the GIL: 2 threads beat 8 on 2 cores when measured);
    remote files wait on the network, where many threads hide the latency.
    """
    if paths and fileio.is_remote(paths[0]):
        return 32
    return min(8, os.cpu_count() or 1)


def check_files(
    paths: Iterable[str],
    max_pixels: int = DEFAULT_MAX_PIXELS,
    num_parallel: int | None = None,
    progress: ProgressArg = False,
    cache_dir: str | None = None,
    use_cache: bool = True,
) -> list[FileCheck]:
    """Checks many files; same verdicts as ``check_file``, much faster.

    Header checks run in a thread pool (they are I/O); files that pass them are
    decoded in a parallel ``tf.data`` map; only the files that fail that
    decode are decoded again, one by one, for their error message.

    Args:
      paths: files to check, e.g. the paths from ``list_image_files``.
      max_pixels: largest width*height accepted; bigger images are rejected
        from their header, without being decoded.
      num_parallel: threads for the header checks and parallel calls of the
        decode map; None picks them from the CPU count (AUTOTUNE).
      progress: False for silence, True for a progress bar on stderr (tqdm if
        installed, else a line every few seconds), or a callable
        ``progress(done, total)``.
      cache_dir: folder of the scan cache; None means ``$CATDOG_CACHE_DIR`` or
        ``~/.cache/catdog/scan``. A folder inside the scanned data is refused
        (with a warning, and no caching).
      use_cache: whether to read and write the scan cache.

    Returns:
      One ``FileCheck`` per path, in the order of ``paths``.
    """
    paths = [os.fspath(p) for p in paths]
    max_pixels = _validate_max_pixels(max_pixels)
    if num_parallel is not None and (not isinstance(num_parallel, int) or num_parallel < 1):
        raise ScanInputError(
            f"num_parallel must be a positive integer or None; got {num_parallel!r}.")
    total = len(paths)
    results: list[FileCheck | None] = [None] * total
    if not total:
        return []
    cache = _ScanCache(cache_dir, paths) if use_cache else None
    stamps: list = [None] * total
    bar = _Progress(progress, total, "checking images")
    try:
        threads = num_parallel or _default_threads(paths)

        def header_phase(index):
            path = paths[index]
            if cache is not None:
                try:
                    stamp = fileio.stat(path)
                except OSError:
                    stamp = None
                cached = cache.get(path, stamp, max_pixels) if stamp else None
                if cached is not None:
                    return cached, stamp, True
                check, stamp = _check_header(path, max_pixels, stamp)
            else:
                check, stamp = _check_header(path, max_pixels)
            return check, stamp, False

        to_decode = []
        for index, (check, stamp, cached) in enumerate(
                _thread_map(header_phase, range(total), threads)):
            results[index] = check
            stamps[index] = stamp
            if cached or not check.ok:
                bar.update()
                if cache is not None and not cached and stamp is not None:
                    cache.put(check, stamp, max_pixels)
            else:
                to_decode.append(index)

        if to_decode:
            survivors = _decode_survivors(
                [paths[i] for i in to_decode], num_parallel, bar.update)
            for position, index in enumerate(to_decode):
                if position not in survivors:
                    error = _decode_error(paths[index])
                    if error:
                        results[index] = dataclasses.replace(
                            results[index], ok=False, reason=error)
                    bar.update()
                if cache is not None and stamps[index] is not None:
                    cache.put(results[index], stamps[index], max_pixels)
    finally:
        bar.close()
    if cache is not None:
        cache.save()
    return results


# --------------------------------------------------------------------------
# Folder report.
# --------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ClassSummary:
    """File counts of one class folder."""

    name: str
    total: int
    usable: int
    bad: int


@dataclasses.dataclass(frozen=True)
class ScanReport:
    """Everything ``scan_directory`` found; ``to_dict`` and ``format_text``
    render it.

    Attributes:
      data_dir: the scanned folder.
      other_dirs: folders compared against ``data_dir`` for leaked files.
      class_names: class names in label order.
      max_pixels: pixel limit used.
      classes: per-class counts.
      checks: one ``FileCheck`` per candidate file of ``data_dir``.
      labels: label of each entry of ``checks``.
      ignored_files: non-image files left out of the index.
      duplicates_across_classes: groups of byte-identical files filed under
        different classes (label noise).
      duplicates_across_dirs: groups of byte-identical files found both in
        ``data_dir`` and in an ``other_dirs`` folder (train/validation leakage).
      duplicates_within_class: groups of byte-identical files of one class.
      seconds: wall time of the scan.
      layout_warnings: doubts about the folder layout itself.
    """

    data_dir: str
    other_dirs: tuple[str, ...]
    class_names: tuple[str, ...]
    max_pixels: int
    classes: tuple[ClassSummary, ...]
    checks: tuple[FileCheck, ...]
    labels: tuple[int, ...]
    ignored_files: tuple[str, ...]
    duplicates_across_classes: tuple[tuple[str, ...], ...]
    duplicates_across_dirs: tuple[tuple[str, ...], ...]
    duplicates_within_class: tuple[tuple[str, ...], ...]
    seconds: float
    layout_warnings: tuple[str, ...] = ()

    @property
    def bad_files(self) -> list[FileCheck]:
        return [c for c in self.checks if not c.ok]

    @property
    def imbalance_ratio(self) -> float | None:
        """Usable files of the largest class over the smallest; None if a class
        has no usable file."""
        counts = [c.usable for c in self.classes]
        if not counts or min(counts) == 0:
            return None
        return max(counts) / min(counts)

    @property
    def warnings(self) -> list[str]:
        lines = list(self.layout_warnings)
        for summary in self.classes:
            if summary.usable == 0:
                lines.append(f"class {summary.name!r} has no usable image")
        ratio = self.imbalance_ratio
        if ratio is not None and ratio > 1.5:
            largest = max(self.classes, key=lambda c: c.usable)
            smallest = min(self.classes, key=lambda c: c.usable)
            lines.append(
                f"class imbalance: largest/smallest = {ratio:.2f} ({largest.name} "
                f"{largest.usable} / {smallest.name} {smallest.usable}); consider "
                f"class weights or resampling")
        if self.duplicates_across_classes:
            lines.append(
                f"{len(self.duplicates_across_classes)} group(s) of identical files "
                f"under different classes (label noise)")
        if self.duplicates_across_dirs:
            lines.append(
                f"{len(self.duplicates_across_dirs)} group(s) of identical files in "
                f"{self.data_dir} and {', '.join(self.other_dirs)} (leakage)")
        return lines

    def _size_stats(self) -> dict:
        usable = [c for c in self.checks if c.ok]
        stats = {}
        for field in ("width", "height"):
            values = [getattr(c, field) for c in usable if getattr(c, field)]
            stats[field] = ({"min": min(values), "median": statistics.median(values),
                             "max": max(values)} if values else None)
        return stats

    def _reason_counts(self) -> dict:
        """Bad files counted by the kind of reason, most frequent first."""
        kinds = collections.Counter()
        for check in self.bad_files:
            kind = re.split(r"[:;]", check.reason)[0]
            kinds["above max_pixels" if kind.startswith("image is ") else kind] += 1
        return dict(kinds.most_common())

    def _format_counts(self) -> dict:
        counts = collections.Counter(c.format for c in self.checks if c.ok)
        return dict(sorted(counts.items()))

    def to_dict(self) -> dict:
        """A JSON-ready summary (bad files listed, usable files counted)."""
        return {
            "data_dir": self.data_dir,
            "other_dirs": list(self.other_dirs),
            "class_names": list(self.class_names),
            "max_pixels": self.max_pixels,
            "num_files": len(self.checks),
            "num_usable": sum(c.ok for c in self.checks),
            "num_bad": sum(not c.ok for c in self.checks),
            "classes": [dataclasses.asdict(c) for c in self.classes],
            "imbalance_ratio": self.imbalance_ratio,
            "warnings": self.warnings,
            "image_sizes": self._size_stats(),
            "formats": self._format_counts(),
            "bad_reasons": self._reason_counts(),
            "bad_files": [{"path": c.path, "reason": c.reason} for c in self.bad_files],
            "ignored_files": list(self.ignored_files),
            "duplicates": {
                "across_classes": [list(g) for g in self.duplicates_across_classes],
                "across_dirs": [list(g) for g in self.duplicates_across_dirs],
                "within_class": [list(g) for g in self.duplicates_within_class],
            },
            "seconds": round(self.seconds, 3),
        }

    def _short(self, path: str) -> str:
        """``path`` relative to ``data_dir`` when it is inside it."""
        prefix = self.data_dir.rstrip("/" + os.sep)
        for sep in (os.sep, "/"):
            if path.startswith(prefix + sep):
                return path[len(prefix) + 1:]
        return path

    def format_text(self, max_listed: int = 50) -> str:
        """The report as text for a terminal.

        Args:
          max_listed: bad files / duplicate groups / ignored files listed per
            section before the rest is summarised as "... and N more" (the JSON
            report always lists them all).

        Returns:
          The report, lines joined with newlines.
        """
        lines = [f"catdog scan of {self.data_dir} (max_pixels={self.max_pixels}, "
                 f"{self.seconds:.1f}s)"]
        width = max(len(c.name) for c in self.classes + (ClassSummary("total", 0, 0, 0),))
        lines.append(f"  {'class':<{width}}  {'files':>7}  {'usable':>7}  {'bad':>5}")
        for c in self.classes:
            lines.append(f"  {c.name:<{width}}  {c.total:>7}  {c.usable:>7}  {c.bad:>5}")
        lines.append(
            f"  {'total':<{width}}  {len(self.checks):>7}  "
            f"{sum(c.usable for c in self.classes):>7}  "
            f"{sum(c.bad for c in self.classes):>5}")
        ratio = self.imbalance_ratio
        lines.append("class balance: largest/smallest = "
                     + (f"{ratio:.2f}" if ratio is not None else "n/a"))
        stats = self._size_stats()
        if stats["width"]:
            lines.append(
                "image size (usable): width {min}/{median:g}/{max}, ".format(**stats["width"])
                + "height {min}/{median:g}/{max} (min/median/max)".format(**stats["height"]))
        formats = self._format_counts()
        if formats:
            lines.append("formats (usable): " + ", ".join(
                f"{name} {count}" for name, count in formats.items()))

        def section(title, items, render):
            lines.append(f"{title}: {len(items)}")
            for item in items[:max_listed]:
                lines.append("  " + render(item))
            if len(items) > max_listed:
                lines.append(f"  ... and {len(items) - max_listed} more "
                             f"(the JSON report lists all)")

        reasons = self._reason_counts()
        if reasons:
            lines.append("bad files by reason: " + ", ".join(
                f"{kind} {count}" for kind, count in reasons.items()))
        section("bad files (skipped by training)", self.bad_files,
                lambda c: f"{self._short(c.path)}: {c.reason}")
        section("identical files across classes (label noise)",
                self.duplicates_across_classes,
                lambda g: " == ".join(self._short(p) for p in g))
        if self.other_dirs:
            section("identical files across data_dir and other_dirs (leakage)",
                    self.duplicates_across_dirs,
                    lambda g: " == ".join(self._short(p) for p in g))
        section("identical files within a class", self.duplicates_within_class,
                lambda g: " == ".join(self._short(p) for p in g))
        if self.ignored_files:
            section("ignored non-image files", list(self.ignored_files), self._short)
        for warning in self.warnings:
            lines.append(f"WARNING: {warning}")
        return "\n".join(lines)


def _file_digest(path: str) -> str:
    digest = hashlib.sha256()
    with fileio.open_binary(path) as handle:
        while True:
            chunk = handle.read(_CHUNK_BYTES)
            if not chunk:
                return digest.hexdigest()
            digest.update(chunk)


def _identical_groups(items, num_threads: int) -> list[list]:
    """Groups ``(path, size, tag)`` items whose bytes are identical.

    Only files whose size collides with another file's are hashed: most
    files have a unique size, so most are never read.
    """
    by_size = collections.defaultdict(list)
    for item in items:
        if item[1]:  # Empty files are bad files, reported already.
            by_size[item[1]].append(item)
    to_hash = [item for group in by_size.values() if len(group) > 1 for item in group]
    by_digest = collections.defaultdict(list)

    def digest(item):
        try:
            return _file_digest(item[0])
        except (OSError, tf.errors.OpError):
            return None

    for item, value in zip(to_hash, _thread_map(digest, to_hash, num_threads)):
        if value is not None:
            by_digest[(item[1], value)].append(item)
    groups = [g for g in by_digest.values() if len(g) > 1]
    groups.sort(key=lambda g: g[0][0])
    return groups


def _split_like_warning(data_dir, paths, labels, names) -> tuple[str, ...]:
    """Warns when the "classes" look like dataset splits.

    Pointing at the parent of ``training_set`` / ``test_set`` makes each
    split a class; there every file sits in a subfolder and every "class"
    has the same subfolders (``cats``, ``dogs``).
    """
    subfolders = [set() for _ in names]
    for path, label in zip(paths, labels):
        relative = path[len(fileio.join(data_dir, names[label])):].lstrip("/" + os.sep)
        parts = relative.replace(os.sep, "/").split("/")
        if len(parts) < 2:
            return ()  # A file directly in a class folder: a real class.
        subfolders[label].add(parts[0])
    if len(subfolders[0]) < 2 or any(s != subfolders[0] for s in subfolders):
        return ()
    return (f"every class folder {names} holds the same subfolders "
            f"{sorted(subfolders[0])}: these look like dataset splits, not classes; "
            f"point at one split, e.g. {fileio.join(data_dir, names[0])}",)


def scan_directory(
    data_dir,
    class_names: Sequence[str] | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    other_dirs: Sequence[str] = (),
    progress: ProgressArg = True,
    cache_dir: str | None = None,
    use_cache: bool = True,
    follow_links: bool = False,
    num_parallel: int | None = None,
) -> ScanReport:
    """Checks every image of a class folder and looks for duplicates.

    Args:
      data_dir: folder with one subfolder per class.
      class_names: optional class folders to use, in label order.
      max_pixels: largest width*height accepted.
      other_dirs: folders (e.g. the validation set) whose files are compared
        with ``data_dir`` byte for byte, to find leakage. Their files are
        listed (any depth, same extension rules) but not decode-checked: scan
        them on their own for that.
      progress: as in ``check_files``.
      cache_dir: as in ``check_files``.
      use_cache: as in ``check_files``.
      follow_links: as in ``list_image_files``.
      num_parallel: as in ``check_files``.

    Returns:
      A ``ScanReport``.

    Raises:
      ScanInputError (a ``ValueError``): unusable ``data_dir``,
        ``class_names``, ``other_dirs`` or ``max_pixels``.
    """
    start = time.perf_counter()
    max_pixels = _validate_max_pixels(max_pixels)
    data_dir = os.fspath(data_dir)
    if isinstance(other_dirs, (str, os.PathLike)):
        other_dirs = [other_dirs]
    other_dirs = [_require_directory(d, "other directory") for d in other_dirs]
    paths, labels, names, ignored = _index(data_dir, class_names, follow_links)
    checks = check_files(paths, max_pixels=max_pixels, num_parallel=num_parallel,
                         progress=progress, cache_dir=cache_dir, use_cache=use_cache)

    classes = []
    for label, name in enumerate(names):
        mine = [c for c, l in zip(checks, labels) if l == label]
        usable = sum(c.ok for c in mine)
        classes.append(ClassSummary(name, len(mine), usable, len(mine) - usable))

    # Tag each file with where it came from: ("class", label) or ("other", i).
    items = [(c.path, c.size_bytes, ("class", l))
             for c, l in zip(checks, labels) if c.ok]
    scanned = {fileio.abspath(c.path) for c in checks}
    for number, other in enumerate(other_dirs):
        for path in _walk_files(other, follow_links)[0]:
            if fileio.abspath(path) in scanned:
                continue  # other_dirs overlapping data_dir: a file is not its own copy.
            try:
                items.append((path, fileio.stat(path)[0], ("other", number)))
            except OSError:
                pass  # Unreadable: not this folder's concern; its own scan says why.
    threads = num_parallel or _default_threads(paths)
    across_classes, across_dirs, within_class = [], [], []
    for group in _identical_groups(items, threads):
        group_paths = tuple(item[0] for item in group)
        class_labels = [item[2][1] for item in group if item[2][0] == "class"]
        has_other = any(item[2][0] == "other" for item in group)
        if len(set(class_labels)) > 1:
            across_classes.append(group_paths)
        if class_labels and has_other:
            across_dirs.append(group_paths)
        if len(class_labels) != len(set(class_labels)):
            within_class.append(tuple(
                item[0] for item in group
                if item[2][0] == "class" and class_labels.count(item[2][1]) > 1))

    return ScanReport(
        data_dir=data_dir,
        other_dirs=tuple(other_dirs),
        class_names=tuple(names),
        max_pixels=max_pixels,
        classes=tuple(classes),
        checks=tuple(checks),
        labels=tuple(labels),
        ignored_files=tuple(ignored),
        duplicates_across_classes=tuple(across_classes),
        duplicates_across_dirs=tuple(across_dirs),
        duplicates_within_class=tuple(within_class),
        seconds=time.perf_counter() - start,
        layout_warnings=_split_like_warning(data_dir, paths, labels, names),
    )
