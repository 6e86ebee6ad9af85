"""Test helpers: the one place tests make images, folders and tiny runs.

Every writer takes the target path, creates parent folders, writes the file
and returns the path as a string. Pixel content is derived from the file
path or a seed, so two files never turn out byte-identical by accident.

- ``write_image``, ``make_class_folder`` (a learnable class signal),
  ``id_folder``/``image_ids`` (pixels that carry an id, to follow each image
  through a pipeline);
- ``VALID`` and ``BAD`` map a kind name to ``(file_name, writer)`` of every
  kind of file catdog must accept or reject (for ``BAD``, also the start of
  the reason the file check gives); ``write_tree`` builds a class-folder
  layout from kind names;
- ``build_model``/``write_run``/``image_bytes``: tiny model dirs and encoded
  images for export and predict tests;
- ``tree_state`` (a folder is left as it was), ``free_ports`` (loopback jobs).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import socket
import zlib

import keras
import numpy as np
from PIL import Image
import tensorflow as tf

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The shared dev photos and weights lie beside the checkout; CATDOG_SHARED
# points elsewhere (as .ci/run honours it too).
SHARED = os.environ.get("CATDOG_SHARED", os.path.join(os.path.dirname(REPO), "shared"))


def write_image(path, pixels, fmt=None):
    """Writes uint8 HxWx3 pixels as JPEG or PNG (by extension unless ``fmt``)."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fmt = fmt or ("png" if path.lower().endswith(".png") else "jpeg")
    data = (tf.io.encode_png(pixels) if fmt == "png"
            else tf.io.encode_jpeg(pixels, quality=90))
    tf.io.write_file(path, data)
    return path


def make_class_folder(root, classes=("cats", "dogs"), per_class=12, size=24,
                      seed=0):
    """Writes ``root/<class>/<class>_<i>.jpg`` with a learnable class signal.

    Class i images are brighter in channel i (mod 3), so a model can learn
    them; returns ``root``.
    """
    rng = np.random.RandomState(seed)
    for label, name in enumerate(classes):
        for i in range(per_class):
            pixels = rng.randint(0, 120, size=(size, size, 3)).astype(np.uint8)
            pixels[..., label % 3] += 120
            write_image(os.path.join(root, name, f"{name}_{i:03d}.jpg"), pixels)
    return str(root)


def id_folder(root, ids_per_class, size=16):
    """Class folders of PNGs whose pixels encode a unique id (red + 256 * green).

    Returns ``{id: class index}``. At ``image_size=size`` the resize is the
    identity, so :func:`image_ids` reads the ids back from a batch exactly.
    """
    labels = {}
    for label, (name, ids) in enumerate(zip(("cats", "dogs"), ids_per_class)):
        for i in ids:
            pixels = np.zeros((size, size, 3), np.uint8)
            pixels[..., 0], pixels[..., 1], pixels[..., 2] = i % 256, i // 256, 255 * label
            write_image(os.path.join(root, name, f"{name}_{i:04d}.png"), pixels)
            labels[i] = label
    return labels


def image_ids(images):
    """The ids of a batch of :func:`id_folder` images."""
    pixel = np.asarray(images)[:, 0, 0, :2].astype(np.int64)
    return (pixel[:, 0] + 256 * pixel[:, 1]).tolist()


def tree_state(root):
    """Names, bytes and mtimes of everything under ``root``: equal before and
    after a run means the run left the folder exactly as it was."""
    state = {}
    for folder, dirs, files in os.walk(root):
        dirs.sort()
        for name in sorted(dirs + files):
            path = os.path.join(folder, name)
            stat = os.lstat(path)
            digest = None
            if os.path.isfile(path) and not os.path.islink(path):
                with open(path, "rb") as f:
                    digest = hashlib.sha256(f.read()).hexdigest()
            state[os.path.relpath(path, root)] = (stat.st_mtime_ns, stat.st_size, digest)
    return state


def free_ports(n):
    """``n`` free TCP ports on 127.0.0.1 (for loopback multi-worker jobs)."""
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports

HEIGHT, WIDTH = 24, 32


def pixels(name: str, height: int = HEIGHT, width: int = WIDTH,
           channels: int = 3, dtype=np.uint8) -> np.ndarray:
    """Deterministic image content (a gradient plus noise) seeded by ``name``."""
    rng = np.random.RandomState(zlib.crc32(name.encode("utf-8")))
    top = np.iinfo(dtype).max
    ramp = np.linspace(0, 1, width)[None, :, None] * np.linspace(0.3, 1, height)[:, None, None]
    noise = rng.random_sample((height, width, channels))
    return ((0.6 * ramp + 0.4 * noise) * top).astype(dtype)


def _write(path, data: bytes) -> str:
    path = os.fspath(path)
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)
    return path


def _pil_bytes(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def jpeg_bytes(name: str = "x", height: int = HEIGHT, width: int = WIDTH) -> bytes:
    """A baseline JPEG as TensorFlow encodes it (with a JFIF APP0 segment)."""
    return tf.io.encode_jpeg(pixels(name, height, width), quality=90).numpy()


def png_bytes(name: str = "x", height: int = HEIGHT, width: int = WIDTH) -> bytes:
    return tf.io.encode_png(pixels(name, height, width)).numpy()


def _jpeg_segments(data: bytes):
    """Splits a JPEG into (marker, segment bytes) up to start of scan."""
    offset, segments = 2, []
    while data[offset + 1] != 0xDA:
        length = int.from_bytes(data[offset + 2:offset + 4], "big")
        segments.append((data[offset + 1], data[offset:offset + 2 + length]))
        offset += 2 + length
    return segments, data[offset:]


def _without_app0(data: bytes) -> tuple[list, bytes]:
    segments, scan = _jpeg_segments(data)
    return [s for m, s in segments if m != 0xE0], scan


# --- valid images -----------------------------------------------------------

def write_jpeg(path) -> str:
    return _write(path, jpeg_bytes(os.fspath(path)))


def write_progressive_jpeg(path) -> str:
    image = Image.fromarray(pixels(os.fspath(path)))
    return _write(path, _pil_bytes(image, "JPEG", progressive=True, quality=90))


def write_png(path) -> str:
    return _write(path, png_bytes(os.fspath(path)))


def write_gif(path) -> str:
    """A two-frame animated GIF; catdog uses its first frame."""
    name = os.fspath(path)
    frames = [Image.fromarray(pixels(name + str(i))).convert("P") for i in range(2)]
    return _write(path, _pil_bytes(frames[0], "GIF", save_all=True,
                                   append_images=frames[1:], duration=100, loop=0))


def write_bmp(path) -> str:
    return _write(path, _pil_bytes(Image.fromarray(pixels(os.fspath(path))),
                                   "BMP"))


def write_gray_jpeg(path) -> str:
    gray = pixels(os.fspath(path), channels=1)
    return _write(path, tf.io.encode_jpeg(gray).numpy())


def write_gray_png(path) -> str:
    gray = pixels(os.fspath(path), channels=1)
    return _write(path, tf.io.encode_png(gray).numpy())


def write_rgba_png(path) -> str:
    return _write(path, tf.io.encode_png(
        pixels(os.fspath(path), channels=4)).numpy())


def write_palette_png(path) -> str:
    image = Image.fromarray(pixels(os.fspath(path))).convert("P")
    return _write(path, _pil_bytes(image, "PNG"))


def write_png16(path) -> str:
    """A 16-bit RGB PNG."""
    deep = pixels(os.fspath(path), dtype=np.uint16)
    return _write(path, tf.io.encode_png(deep).numpy())


def write_cmyk_jpeg(path) -> str:
    image = Image.fromarray(pixels(os.fspath(path))).convert("CMYK")
    return _write(path, _pil_bytes(image, "JPEG", quality=90))


def write_jpeg_no_jfif(path) -> str:
    """A JPEG with no APPn segment at all (SOI, tables, frame, scan)."""
    segments, scan = _without_app0(jpeg_bytes(os.fspath(path)))
    return _write(path, b"\xff\xd8" + b"".join(segments) + scan)


def write_jpeg_exif_only(path) -> str:
    """A JPEG whose only APPn segment is a (minimal) Exif APP1, as cameras write."""
    segments, scan = _without_app0(jpeg_bytes(os.fspath(path)))
    tiff = b"MM\x00*\x00\x00\x00\x08\x00\x00"  # Big-endian TIFF header, no entries.
    payload = b"Exif\x00\x00" + tiff
    app1 = b"\xff\xe1" + (len(payload) + 2).to_bytes(2, "big") + payload
    return _write(path, b"\xff\xd8" + app1 + b"".join(segments) + scan)


#: PIL transposes that undo EXIF orientation k (as ImageOps.exif_transpose).
_EXIF_UPRIGHT = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180,
                 4: Image.Transpose.FLIP_TOP_BOTTOM, 5: Image.Transpose.TRANSPOSE,
                 6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
                 8: Image.Transpose.ROTATE_90}
#: The inverse of each: what a camera stores for an upright scene.
_EXIF_STORED = {**_EXIF_UPRIGHT, 6: Image.Transpose.ROTATE_90,
                8: Image.Transpose.ROTATE_270}


def upright_pixels(height: int = 48, width: int = 32, block: int = 8) -> np.ndarray:
    """An asymmetric picture (blocks of distinct flat colours): every flip,
    rotation and transpose of it differs, and JPEG keeps it nearly exact."""
    rng = np.random.RandomState(7)
    blocks = rng.randint(0, 256, (height // block, width // block, 3)).astype(np.uint8)
    return np.kron(blocks, np.ones((block, block, 1), np.uint8))


def oriented_jpeg_bytes(upright: np.ndarray, orientation, exif: bool = True) -> bytes:
    """A JPEG whose EXIF orientation tag says how to turn it back to ``upright``.

    The stored pixels are ``upright`` turned as a camera held sideways stores
    them, so a viewer that honours the tag shows ``upright``.
    """
    image = Image.fromarray(upright)
    if orientation in _EXIF_STORED:
        image = image.transpose(_EXIF_STORED[orientation])
    info = Image.Exif()
    info[0x0112] = orientation
    options = {"exif": info} if exif else {}
    return _pil_bytes(image, "JPEG", quality=95, subsampling=0, **options)


def write_oriented_jpeg(path, orientation, upright=None) -> str:
    """Writes :func:`oriented_jpeg_bytes` of ``upright`` (default :func:`upright_pixels`)."""
    upright = upright_pixels() if upright is None else upright
    return _write(path, oriented_jpeg_bytes(upright, orientation))


def write_jpeg_with_trailer(path) -> str:
    """A complete JPEG followed by 10 KB of appended data (as phones append
    motion-photo or maker data after the end-of-image marker)."""
    return _write(path, jpeg_bytes(os.fspath(path)) + b"\x00" * 10_000)


def write_webp(path) -> str:
    image = Image.fromarray(pixels(os.fspath(path)))
    return _write(path, _pil_bytes(image, "WEBP", quality=80))


def png_bomb_bytes(width: int = 24_000, height: int = 24_000) -> bytes:
    """A complete, valid 1-bit grayscale PNG of any size, in ~70 KB.

    Rows of zeros compress ~1000:1, so this is the cheap way to hold a real
    24000x24000 image (1.7 GB once decoded to RGB) in a file.
    """
    def chunk(kind: bytes, body: bytes) -> bytes:
        return (len(body).to_bytes(4, "big") + kind + body
                + zlib.crc32(kind + body).to_bytes(4, "big"))

    ihdr = width.to_bytes(4, "big") + height.to_bytes(4, "big") + bytes([1, 0, 0, 0, 0])
    row = b"\x00" * (1 + (width + 7) // 8)  # Filter byte + packed bits.
    compressor = zlib.compressobj(6)
    idat = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat)
            + chunk(b"IEND", b""))


def jpeg_bomb_bytes(width: int = 24_000, height: int = 24_000) -> bytes:
    """A small JPEG whose SOF0 header claims ``width`` x ``height``: what a
    decompression bomb looks like to a decoder that trusts the header."""
    data = bytearray(jpeg_bytes("bomb"))
    sof = data.index(b"\xff\xc0")
    data[sof + 5:sof + 7] = height.to_bytes(2, "big")
    data[sof + 7:sof + 9] = width.to_bytes(2, "big")
    return bytes(data)


# --- bad files ----------------------------------------------------------------

def write_empty(path) -> str:
    return _write(path, b"")


def write_truncated_jpeg(path) -> str:
    data = jpeg_bytes(os.fspath(path))
    return _write(path, data[:len(data) * 6 // 10])


def write_truncated_png(path) -> str:
    data = png_bytes(os.fspath(path))
    return _write(path, data[:len(data) * 6 // 10])


def write_corrupt_png(path) -> str:
    """A complete PNG whose compressed pixel data is damaged: only a decode
    can tell."""
    data = bytearray(png_bytes(os.fspath(path)))
    start = data.index(b"IDAT") + 20
    for i in range(start, start + 40):
        data[i] ^= 0x55
    return _write(path, bytes(data))


def write_random_bytes(path) -> str:
    rng = np.random.RandomState(zlib.crc32(os.fspath(path).encode("utf-8")))
    # A first byte no image format starts with.
    return _write(path, b"\x17" + rng.bytes(2047))


def write_html(path) -> str:
    return _write(path, b"<!DOCTYPE html>\n<html><head><title>404 Not Found</title>"
                        b"</head><body>Not Found</body></html>\n")


def write_text(path) -> str:
    return _write(path, b"These are my holiday notes, not a picture.\n")


def write_tiff(path) -> str:
    image = Image.fromarray(pixels(os.fspath(path)))
    return _write(path, _pil_bytes(image, "TIFF"))


def write_jpeg_bomb(path) -> str:
    return _write(path, jpeg_bomb_bytes())


def write_png_bomb(path) -> str:
    return _write(path, png_bomb_bytes())


# Kind -> (file name, writer). All decode to HxWx3 uint8 with catdog.
VALID = {
    "jpeg": ("photo.jpg", write_jpeg),
    "progressive_jpeg": ("progressive.jpg", write_progressive_jpeg),
    "png": ("image.png", write_png),
    "gif": ("animated.gif", write_gif),
    "bmp": ("image.bmp", write_bmp),
    "gray_jpeg": ("gray.jpg", write_gray_jpeg),
    "gray_png": ("gray.png", write_gray_png),
    "rgba_png": ("rgba.png", write_rgba_png),
    "palette_png": ("palette.png", write_palette_png),
    "png16": ("deep16.png", write_png16),
    "cmyk_jpeg": ("cmyk.jpg", write_cmyk_jpeg),
    "upper_case_ext": ("UPPER.JPG", write_jpeg),
    "mixed_case_ext": ("Mixed.Jpeg", write_jpeg),
    "png_named_jpg": ("really_a_png.jpg", write_png),
    "webp_named_jpg": ("really_a_webp.jpg", write_webp),
    "jpeg_no_jfif": ("no_jfif.jpg", write_jpeg_no_jfif),
    "jpeg_exif_only": ("exif_only.jpg", write_jpeg_exif_only),
    "jpeg_with_trailer": ("with_trailer.jpg", write_jpeg_with_trailer),
    "korean_name": ("사진.jpg", write_jpeg),
}

# Kind -> (file name, writer, start of the reason catdog.scan gives).
BAD = {
    "empty": ("empty.jpg", write_empty, "empty file (0 bytes)"),
    "truncated_jpeg": ("truncated.jpg", write_truncated_jpeg,
                       "truncated JPEG: no end-of-image marker"),
    "truncated_png": ("truncated.png", write_truncated_png, "truncated PNG: no IEND chunk"),
    "corrupt_png": ("corrupt.png", write_corrupt_png, "decode failed: "),
    "random_bytes": ("random.jpg", write_random_bytes,
                     "not an image: unrecognised header bytes 17"),
    "html": ("page.jpg", write_html, "not an image: starts with '<!DOCTYPE html"),
    "text_named_png": ("notes.png", write_text,
                       "not an image: starts with 'These are my holiday notes"),
    "tiff_named_jpg": ("scan.jpg", write_tiff, "unsupported format 'tiff'"),
    "jpeg_bomb": ("bomb.jpg", write_jpeg_bomb,
                  "image is 24000x24000 (576.0 MP), above max_pixels=89478485; "
                  "raise --max_pixels to use it"),
}


def write_tree(root, layout: dict) -> dict:
    """Writes a class-folder tree.

    Args:
      root: folder to create.
      layout: ``{class_name: [kind, ...]}``; a kind is a key of ``VALID`` or
        ``BAD``, optionally prefixed with a sub-path (``"nested/jpeg"``).
        Repeated kinds in one class get numbered file names.

    Returns:
      ``{class_name: [path, ...]}`` in the order written.
    """
    written = {}
    for class_name, kinds in layout.items():
        paths = []
        for number, spec in enumerate(kinds):
            subdir, _, kind = spec.rpartition("/")
            file_name, writer = (VALID[kind] if kind in VALID else BAD[kind][:2])
            stem, ext = os.path.splitext(file_name)
            name = f"{stem}_{number}{ext}"
            paths.append(writer(os.path.join(os.fspath(root), class_name, subdir, name)))
        written[class_name] = paths
    return written


def build_model(num_classes, input_size=(32, 32), head_dtype="float32"):
    """A tiny classifier taking 0..255 pixels, seeded so outputs vary by image."""
    inputs = keras.Input((*input_size, 3))
    x = keras.layers.Rescaling(1 / 255)(inputs)
    x = keras.layers.Conv2D(
        4, 3, kernel_initializer=keras.initializers.GlorotUniform(seed=1))(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    units, activation = (1, "sigmoid") if num_classes == 2 else (num_classes, "softmax")
    head = keras.layers.Dense(
        units, activation, dtype=head_dtype,
        kernel_initializer=keras.initializers.RandomNormal(stddev=8.0, seed=2))
    model = keras.Model(inputs, head(x))
    # Centre the head on mid-grey so images of different colours get
    # different classes.
    grey = np.full((1, *(s or 8 for s in input_size), 3), 127.5, np.float32)
    features = keras.Model(inputs, x)(grey).numpy()
    head.bias.assign((-(features @ head.kernel.numpy())[0]).astype(head.bias.dtype))
    return model


def write_run(model_dir, model, class_names, image_size):
    """Writes model.keras and a minimal config.json, as a finished run does."""
    os.makedirs(model_dir)
    model.save(os.path.join(model_dir, "model.keras"))
    with open(os.path.join(model_dir, "config.json"), "w") as f:
        json.dump({"stage": "baseline", "class_names": class_names,
                   "data": {"image_size": list(image_size)}}, f)
    return str(model_dir)


def upright_detector(upright: np.ndarray, strength: float = 40.0):
    """A binary model that answers class 1 (probability ~1) for ``upright``
    and class 0 for any flip, rotation or transpose of it.

    A linear score on the pixels, matched to ``upright``'s pattern: it tells
    which pixels reached the model, whatever the decode path.
    """
    height, width, _ = upright.shape
    pattern = upright.astype(np.float32) / 255.0
    pattern -= pattern.mean()
    kernel = (strength * pattern / np.sum(pattern * pattern)).reshape(-1, 1)
    inputs = keras.Input((height, width, 3))
    x = keras.layers.Flatten()(keras.layers.Rescaling(1 / 255)(inputs))
    dense = keras.layers.Dense(1, "sigmoid")
    model = keras.Model(inputs, dense(x))
    mean = float(upright.astype(np.float32).mean() / 255.0)
    # Upright scores +strength/2; a turned copy (uncorrelated pattern) about -strength/2.
    bias = -float(np.sum(kernel[:, 0]) * mean) - strength / 2
    dense.set_weights([kernel.astype(np.float32), np.array([bias], np.float32)])
    return model


def write_upright_run(model_dir, upright: np.ndarray, exif_orientation=True) -> str:
    """A model dir of :func:`upright_detector`; ``exif_orientation=None`` writes
    a config.json from before the setting existed (no key)."""
    model_dir = write_run(model_dir, upright_detector(upright), ["turned", "upright"],
                          upright.shape[:2])
    if exif_orientation is not None:
        path = os.path.join(model_dir, "config.json")
        with open(path) as f:
            config = json.load(f)
        config["data"]["exif_orientation"] = bool(exif_orientation)
        with open(path, "w") as f:
            json.dump(config, f)
    return model_dir


def image_bytes(seed, shape=(40, 52, 3), fmt="jpeg"):
    """Random image whose mean colour differs per seed (so classes differ)."""
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, shape[-1:]) * 0.7 + rng.integers(0, 77, shape)
    encode = tf.io.encode_jpeg if fmt == "jpeg" else tf.io.encode_png
    return encode(pixels.astype(np.uint8)).numpy()


TWO_WORKERS = {"worker": ["127.0.0.1:1", "127.0.0.1:2"]}


class FakeMultiWorker(tf.distribute.MultiWorkerMirroredStrategy):
    """One task of a multi-worker job without starting TF servers.

    Only which task this is and how many replicas the job has matter to the
    code under test; anything it computes runs on the default strategy.
    """

    def __init__(self, cluster=None, task_type="worker", task_id=0, replicas=2):  # pylint: disable=super-init-not-called
        self._resolver = tf.distribute.cluster_resolver.SimpleClusterResolver(
            tf.train.ClusterSpec(cluster or TWO_WORKERS), task_type=task_type, task_id=task_id)
        self._replicas = replicas

    @property
    def cluster_resolver(self):
        return self._resolver

    @property
    def extended(self):
        import types  # pylint: disable=import-outside-toplevel
        return types.SimpleNamespace(_in_multi_worker_mode=lambda: True)

    @property
    def num_replicas_in_sync(self):
        return self._replicas

    def scope(self):
        return tf.distribute.get_strategy().scope()


def validation_copy(folder) -> str:
    """A copy of ``folder`` beside it (``<folder>-val``), for tests that
    validate on the images they train on: catdog refuses the same files in
    both splits (a leak), not the same pixels in other files."""
    dest = os.fspath(folder).rstrip("/") + "-val"
    if not os.path.exists(dest):
        shutil.copytree(os.fspath(folder), dest)
    return dest
