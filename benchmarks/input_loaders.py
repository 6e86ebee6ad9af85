"""The loaders the input benchmark times, and the clock and probes it times them with.

Stock ``ImageDataGenerator`` and ``image_dataset_from_directory``, catdog's
pipeline from a folder and from TFRecord shards, the decode ceiling and
floor, the augmentation block and a plain memory copy; each returns images
per second (and per CPU-second where it matters).
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import gc
import importlib.util
import os
import platform
import time
from typing import NamedTuple

try:
    import resource
except ImportError:  # not on Windows
    resource = None

import numpy as np
import tensorflow as tf

from benchmarks import input_memory
from catdog import data as data_lib


def loadavg():
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def machine() -> dict:
    """What the figures were measured on."""
    cpu = platform.processor() or ""
    with contextlib.suppress(OSError):
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    return {"cpu": cpu, "cores": os.cpu_count(), "platform": platform.platform(),
            "python": platform.python_version(), "tensorflow": tf.__version__,
            "gpus": len(tf.config.list_physical_devices("GPU"))}


def rate(n: int, seconds: float) -> float:
    return round(n / seconds, 1) if seconds > 0 else float("inf")


def ratio(a, b):
    return round(a / b, 3) if a and b else None


def _kernel_usage():
    """(kernel CPU seconds, minor page faults) of this process so far."""
    if resource is None:
        return None
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_stime, usage.ru_minflt


class Clock:
    """Wall-clock and process CPU seconds (all threads) of a ``with`` block.

    Wall-clock rates depend on how many cores the scheduler grants while
    other processes compete; images per CPU-second measure the work a loader
    does per image, which that competition barely changes. ``kernel`` (the
    part of ``cpu`` spent in the kernel) and ``faults`` (minor page faults:
    first touches of memory the process had not used before) say how much of
    it went on getting fresh memory; both are None where ``resource`` is not.
    """

    def __enter__(self):
        self._wall, self._cpu = time.perf_counter(), time.process_time()
        self._kernel = _kernel_usage()
        return self

    def __exit__(self, *exc):
        self.wall = time.perf_counter() - self._wall
        self.cpu = time.process_time() - self._cpu
        end = _kernel_usage()
        self.kernel = self.faults = None
        if end is not None and self._kernel is not None:
            self.kernel = end[0] - self._kernel[0]
            self.faults = end[1] - self._kernel[1]
        return False


class Epoch(NamedTuple):
    """One timed pass over a dataset (:func:`time_batches_and_tail`)."""
    images: int
    wall: float
    cpu: float
    tail: float
    kernel: float | None
    faults: int | None

    def per_image(self) -> dict:
        """Kernel microseconds and minor page faults per image (None if unknown)."""
        known = self.images and self.kernel is not None
        return {"kernel_us_per_img": round(self.kernel / self.images * 1e6, 1) if known else None,
                "faults_per_img": round(self.faults / self.images, 2) if known else None}


def release_freed_memory() -> bool:
    """Hands the memory this process has freed back to the kernel.

    A first epoch that fills a memory cache takes fresh memory for every
    image (page faults, kernel time); memory an earlier loader freed and the
    allocator kept would spare it that and make it look cheaper than it is
    in a new training process. So every first epoch starts after this.
    Returns whether the C library could do it (glibc's ``malloc_trim``).
    """
    gc.collect()
    name = ctypes.util.find_library("c")
    try:
        trim = ctypes.CDLL(name).malloc_trim if name else None
    except (OSError, AttributeError):
        trim = None
    if trim is None:
        return False
    trim(ctypes.c_size_t(0))
    return True


def time_batches(batches, first_epoch: bool = False) -> tuple:
    """Iterates ``batches`` of ``(images, labels)``; returns (images, wall s, CPU s).
    ``first_epoch``: as for :func:`time_batches_and_tail`."""
    return time_batches_and_tail(batches, first_epoch)[:3]


def time_batches_and_tail(batches, first_epoch: bool = False) -> Epoch:
    """Like :func:`time_batches`, plus the tail: the seconds from the last
    batch to the end of the epoch (the iterator's end and teardown, where
    tf.data's autotuner can make an epoch wait; see ``catdog.tfdata``), and
    the kernel time and page faults of the pass (see :class:`Clock`).
    ``first_epoch``: free memory goes back to the kernel first
    (:func:`release_freed_memory`)."""
    if first_epoch:
        release_freed_memory()
    n, last = 0, None
    with Clock() as clock:
        for images, _ in batches:
            n += int(images.shape[0])
            last = time.perf_counter()
    tail = time.perf_counter() - last if last is not None else 0.0
    return Epoch(n, clock.wall, clock.cpu, tail, clock.kernel, clock.faults)


def _image_data_generator():
    """Returns the ImageDataGenerator class and where it came from, or (None, reason)."""
    try:
        from tf_keras.preprocessing.image import ImageDataGenerator  # type: ignore
        return ImageDataGenerator, "tf_keras"
    except ImportError:
        pass
    try:
        from keras.src.legacy.preprocessing.image import ImageDataGenerator
        return ImageDataGenerator, "keras.src.legacy.preprocessing.image"
    except ImportError:
        return None, "unavailable"


def time_idg(data_dir: str, image_size, batch_size: int, augment: bool = False):
    """One pass of ``flow_from_directory``; returns (img/s, source, img/CPU-s).

    The rates are None when no ImageDataGenerator is importable.
    """
    idg_class, source = _image_data_generator()
    if idg_class is None:
        return None, source, None
    if augment and importlib.util.find_spec("scipy") is None:
        # Its rotation and zoom call scipy.ndimage, which catdog does not need.
        return None, "unavailable: ImageDataGenerator augmentation needs scipy", None
    kwargs = dict(rescale=1.0 / 255)
    if augment:
        kwargs.update(horizontal_flip=True, rotation_range=35, zoom_range=0.2)
    gen = idg_class(**kwargs).flow_from_directory(
        data_dir, target_size=tuple(image_size), batch_size=batch_size,
        class_mode="binary", shuffle=True, seed=0)
    n = 0
    with Clock() as clock:
        for i in range(len(gen)):
            n += int(gen[i][0].shape[0])
    return rate(n, clock.wall), source, rate(n, clock.cpu)


def time_keras(data_dir: str, image_size, batch_size: int) -> dict:
    """Stock ``image_dataset_from_directory``: defaults, then cache+prefetch."""
    import keras  # pylint: disable=import-outside-toplevel
    make = lambda: keras.utils.image_dataset_from_directory(
        data_dir, image_size=tuple(image_size), batch_size=batch_size, verbose=False)
    first = time_batches_and_tail(make(), first_epoch=True)
    cached = make().cache().prefetch(tf.data.AUTOTUNE)
    n1, s1, _ = time_batches(cached, first_epoch=True)
    n2, s2, _ = time_batches(cached)
    return {"keras_img_per_s": rate(first.images, first.wall),
            "keras_img_per_cpu_s": rate(first.images, first.cpu),
            "keras_tail_s": round(first.tail, 4),
            **{f"keras_{k}": v for k, v in first.per_image().items()},
            "keras_cached_first_epoch_img_per_s": rate(n1, s1),
            "keras_cached_img_per_s": rate(n2, s2),
            # Its cache holds float32 pixels.
            "keras_cache_bytes": int(n1 * image_size[0] * image_size[1] * 3 * 4)}


def time_decode_ceiling(paths, image_size, batch_size: int) -> dict:
    """Parallel decode + resize of bytes already in memory (no file reads)."""
    contents = [open(p, "rb").read() for p in paths]  # pylint: disable=consider-using-with
    size = tuple(image_size)
    source = tf.data.Dataset.from_tensor_slices(tf.constant(contents, tf.string))

    def run(fn):
        ds = (source.map(fn, num_parallel_calls=tf.data.AUTOTUNE, deterministic=False)
              .batch(batch_size).prefetch(tf.data.AUTOTUNE))
        n = 0
        with Clock() as clock:
            for batch in ds:
                n += int(batch.shape[0])
        return rate(n, clock.wall), rate(n, clock.cpu)

    # decode_image dispatches on the bytes; the sizes after decode differ,
    # so "decode alone" reduces each image to one number to batch it.
    decode_only = lambda c: tf.reduce_max(
        tf.io.decode_image(c, channels=3, expand_animations=False))
    # The entropy-decoding floor: JPEGs decoded at 1/8 scale in the DCT
    # domain still have every Huffman-coded bit read, the one part of a
    # decode no loader that sees every pixel can skip (other formats are
    # decoded in full).
    floor = lambda c: tf.cond(
        tf.io.is_jpeg(c),
        lambda: tf.reduce_max(tf.io.decode_jpeg(c, channels=3, ratio=8)),
        lambda: decode_only(c))
    ceiling, ceiling_cpu = run(lambda c: data_lib.decode_and_resize(c, size))
    floor_rate, floor_cpu = run(floor)
    return {"decode_ceiling_img_per_s": ceiling,
            "decode_ceiling_img_per_cpu_s": ceiling_cpu,
            "decode_only_img_per_s": run(decode_only)[0],
            "entropy_floor_img_per_s": floor_rate,
            "entropy_floor_img_per_cpu_s": floor_cpu}


def time_catdog(paths, labels, image_size, batch_size: int, dct_scaling: bool = False,
                epochs: int = 2, decode_options=None) -> dict:
    """catdog's training pipeline: first epoch (decode + cache fill), then cached."""
    ds = data_lib.build_dataset(paths, labels, num_classes=2, image_size=image_size,
                                batch_size=batch_size, training=True, cache="memory",
                                dct_scaling=dct_scaling, decode_options=decode_options)
    # Freed memory back to the kernel before the RSS is read, so the growth
    # is the cache's; the first epoch then starts as time_batches_and_tail's
    # first_epoch would start it.
    release_freed_memory()
    rss0 = input_memory.rss_bytes()
    first = time_batches_and_tail(ds)
    rss1 = input_memory.rss_bytes()
    out = {"first_epoch_img_per_s": rate(first.images, first.wall),
           "first_epoch_images": first.images,
           "first_epoch_tail_s": round(first.tail, 4),
           "first_epoch_img_per_cpu_s": rate(first.images, first.cpu),
           **{f"first_epoch_{k}": v for k, v in first.per_image().items()},
           "rss_delta_bytes": max(0, rss1 - rss0)}
    if epochs > 1:
        n2, s2, _ = time_batches(ds)
        out["cached_epoch_img_per_s"] = rate(n2, s2)
    return out


def warm_page_cache(paths) -> int:
    """Reads every file once (local or ``tf.io.gfile`` URL); returns the bytes read.

    Afterwards every loader reads these files from memory, so none pays disk
    reads another does not.
    """
    total = 0
    for path in paths:
        with tf.io.gfile.GFile(path, "rb") as f:
            while chunk := f.read(1 << 24):
                total += len(chunk)
    return total


def time_catdog_tfrecords(files, num_classes: int, num_examples: int, image_size,
                          batch_size: int, key: str = "catdog_tfrecords") -> dict:
    """catdog's training pipeline over TFRecord shards: first epoch, then cached.

    The figures are named ``<key>_first_epoch_img_per_s`` and so on.
    """
    from catdog.sources import tfrecords  # pylint: disable=import-outside-toplevel
    ds = tfrecords.build_tfrecord_dataset(
        files, num_classes=num_classes, image_size=image_size,
        batch_size=batch_size, training=True, num_examples=num_examples)
    n1, s1, cpu1 = time_batches(ds, first_epoch=True)
    n2, s2, _ = time_batches(ds)
    return {f"{key}_first_epoch_img_per_s": rate(n1, s1),
            f"{key}_first_epoch_img_per_cpu_s": rate(n1, cpu1),
            f"{key}_cached_epoch_img_per_s": rate(n2, s2)}


@contextlib.contextmanager
def _check_cache(cache_dir):
    """``$CATDOG_CACHE_DIR`` set to ``cache_dir`` inside the block (None: as it is)."""
    old = os.environ.get("CATDOG_CACHE_DIR")
    if cache_dir:
        os.environ["CATDOG_CACHE_DIR"] = cache_dir
    try:
        yield
    finally:
        if cache_dir:
            if old is None:
                os.environ.pop("CATDOG_CACHE_DIR", None)
            else:
                os.environ["CATDOG_CACHE_DIR"] = old


def build_shards_at_size(data_dir: str, output_dir: str, image_size, raw: bool,
                         jpeg_quality=None, check_cache: str = "",
                         jpeg_chroma: str = "auto") -> dict:
    """Writes ``data_dir`` as shards stored at ``image_size`` (build_tfrecords.py
    --image_size, JPEG or ``raw``); returns their files, manifest, build
    seconds and bytes. ``check_cache``: where the writer's file check caches
    (a temporary sample's results stay out of the user's cache)."""
    from catdog import fileio  # pylint: disable=import-outside-toplevel
    from catdog.sources import tfrecord_writer  # pylint: disable=import-outside-toplevel
    with _check_cache(check_cache), Clock() as clock:
        manifest = tfrecord_writer.write_tfrecords(
            data_dir, output_dir, image_size=image_size, raw=raw,
            jpeg_quality=jpeg_quality, jpeg_chroma="444" if raw else jpeg_chroma,
            progress=False)
    files = [fileio.join(output_dir, s["file"]) for s in manifest["shards"]]
    return {"files": files, "manifest": manifest, "seconds": round(clock.wall, 3),
            "bytes": sum(os.path.getsize(f) for f in files)}


@contextlib.contextmanager
def local_data_service(workers: int):
    """``grpc://`` address of an in-process dispatcher with ``workers`` workers.

    In-process workers share this process's cores with the trainer side:
    the figures show the service's own cost and how the work spreads over
    workers on one machine, not a scale-out over hosts.
    """
    from catdog import data_service  # pylint: disable=import-outside-toplevel
    dispatcher = data_service.start_dispatcher(0, job_gc_check_interval_ms=500,
                                               job_gc_timeout_ms=500)
    address = dispatcher.target.split("://", 1)[1]
    servers = [data_service.start_worker(address, 0, host="localhost")
               for _ in range(int(workers))]
    try:
        yield dispatcher.target
    finally:
        for server in servers + [dispatcher]:
            server.stop()


def time_catdog_service(paths, labels, image_size, batch_size: int, service: str,
                        workers: int) -> dict:
    """One epoch of catdog's training pipeline through the tf.data service ``service``.

    Every epoch decodes (nothing is cached on the workers), so one epoch is
    timed; the dataset is registered with the dispatcher before the clock
    starts.
    """
    ds = data_lib.build_dataset(paths, labels, num_classes=2, image_size=image_size,
                                batch_size=batch_size, training=True, cache="none",
                                data_service=service)
    n, s, cpu = time_batches(ds)
    return {f"catdog_service_{workers}w_img_per_s": rate(n, s),
            f"catdog_service_{workers}w_img_per_cpu_s": rate(n, cpu),
            f"catdog_service_{workers}w_images": n}


def cache_element_bytes(n: int, image_size) -> int:
    # What the cache holds: one uint8 HxWx3 image and one float32 label per file.
    return int(n * (image_size[0] * image_size[1] * 3 + 4))


def time_augmentation(paths, labels, image_size, batch_size: int) -> float:
    """catdog's cached images through the in-model augmentation block (training=True)."""
    from catdog import augment  # pylint: disable=import-outside-toplevel
    block = augment.build_augmentation("horizontal", 0.1, 0.2, seed=0)
    ds = data_lib.build_dataset(paths, labels, num_classes=2, image_size=image_size,
                                batch_size=batch_size, training=True, cache="memory")
    for _ in ds:  # fill the cache: only the augmentation is timed
        pass
    step = tf.function(lambda x: block(tf.cast(x, tf.float32), training=True))
    n, start = 0, time.perf_counter()
    for images, _ in ds:
        step(images)
        n += int(images.shape[0])
    return rate(n, time.perf_counter() - start)


def symlink_folder(files, class_names, root: str) -> str:
    """A class-folder tree at ``root`` of symlinks to ``files`` (``(path, label)``)."""
    for i, (path, label) in enumerate(files):
        folder = os.path.join(root, class_names[label])
        os.makedirs(folder, exist_ok=True)
        os.symlink(os.path.abspath(path),
                   os.path.join(folder, f"{i:06d}{os.path.splitext(path)[1].lower()}"))
    return root


def sample_folder(listing, max_images: int, workdir: str) -> str:
    """A folder of symlinks to at most ``max_images`` files, classes kept balanced.

    ``listing`` is ``scan.list_image_files``' ``(paths, labels, class_names)``.
    """
    paths, labels, class_names = listing
    per_class = {}
    for p, l in zip(paths, labels):
        per_class.setdefault(l, []).append(p)
    picked = []
    for label in sorted(per_class):
        files = per_class[label]
        take = max(1, int(round(max_images * len(files) / len(paths))))
        step = len(files) / take
        picked += [(files[int(i * step)], label) for i in range(min(take, len(files)))]
    return symlink_folder(picked[:max_images], class_names,
                          os.path.join(workdir, "sample"))


def time_memcpy(n: int, image_size) -> float:
    """Images/s of a plain memory copy of ``n`` uint8 images: the cached-epoch limit.

    A cached epoch that reshuffles every epoch must copy each cached image
    into a new batch; this is that copy without tf.data around it. Both
    buffers are touched first, so page faults are not timed.
    """
    src = np.ones((n, image_size[0], image_size[1], 3), np.uint8)
    dst = np.zeros_like(src)
    start = time.perf_counter()
    np.copyto(dst, src)
    seconds = time.perf_counter() - start
    del src, dst
    return rate(n, seconds)

