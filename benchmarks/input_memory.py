"""Memory of catdog's input pipeline: process RSS, the peak of one epoch, what fits.

Used by the input benchmark (:func:`check_memory` before any timing) and by
``scripts/measure_input_memory.py`` (:func:`epoch_memory`).
"""

from __future__ import annotations

import os
import shutil
import time

from catdog import data as data_lib


def rss_bytes() -> int:
    """Resident set size of this process (Linux ``/proc``; 0 elsewhere)."""
    try:
        with open("/proc/self/statm", encoding="ascii") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def available_memory_bytes():
    """Memory the kernel says a new allocation can get (``MemAvailable``), or None."""
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


#: Share of the available memory the largest in-memory cache may take.
MEMORY_SHARE = 0.7


def check_memory(num_images: int, image_size, available=None) -> None:
    """Refuses a folder whose caches would not fit in memory, before any timing.

    The largest thing the benchmark holds is stock Keras' float32 cache
    (N*H*W*3*4 bytes; catdog's uint8 cache is 4x smaller and never alive at
    the same time).

    Raises:
      ValueError: naming the memory needed and the ``--max_images`` that fits.
    """
    available = available_memory_bytes() if available is None else available
    if not available:
        return
    per_image = int(image_size[0]) * int(image_size[1]) * 3 * 4
    need = num_images * per_image
    if need > MEMORY_SHARE * available:
        fits = max(1, int(MEMORY_SHARE * available // per_image))
        raise ValueError(
            f"{num_images} images at {image_size[0]}x{image_size[1]}: stock Keras' "
            f"float32 cache alone needs {need / 2**30:.1f} GiB, more than "
            f"{MEMORY_SHARE:.0%} of the {available / 2**30:.1f} GiB available. "
            f"Pass --max_images={fits} (or fewer) to time a balanced sample, or a "
            "smaller --image_size.")


def peak_rss_bytes() -> int:
    """Peak resident set size of this process so far (Linux: ru_maxrss in KiB)."""
    import resource  # pylint: disable=import-outside-toplevel
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


def epoch_memory(paths, labels, image_size, batch_size: int, cache: str,
                 shuffle_buffer: int = 0) -> dict:
    """Peak memory of one training epoch of catdog's pipeline.

    Run it in a fresh process per setting: the peak RSS is the process's
    high-water mark, reported relative to the RSS just before the epoch
    (TensorFlow itself, the file list).

    Args:
      paths, labels: the training files.
      image_size: ``(height, width)``.
      batch_size: batch size.
      cache: ``"memory"``, ``"none"`` or a cache folder (emptied first).
      shuffle_buffer: as ``--shuffle_buffer``.

    Returns:
      Images, seconds to the first batch and for the epoch, RSS before, peak
      RSS and their difference (bytes).
    """
    if cache not in ("memory", "none") and os.path.isdir(cache):
        shutil.rmtree(cache)
    ds = data_lib.build_dataset(paths, labels, num_classes=2, image_size=image_size,
                                batch_size=batch_size, training=True, cache=cache,
                                shuffle_buffer=shuffle_buffer)
    before = rss_bytes()
    start = time.perf_counter()
    images, first = 0, None
    for x, _ in ds:
        images += int(x.shape[0])
        if first is None:
            first = time.perf_counter() - start
    seconds = time.perf_counter() - start
    peak = peak_rss_bytes()
    return {"images": images, "image_size": list(image_size), "cache": cache,
            "shuffle_buffer": shuffle_buffer, "first_batch_seconds": round(first or 0, 3),
            "epoch_seconds": round(seconds, 2), "rss_before_bytes": before,
            "peak_rss_bytes": peak, "peak_minus_before_bytes": max(0, peak - before)}
