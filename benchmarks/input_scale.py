"""Scale mode of the input benchmark: does catdog's file handling stay linear?

For each file count, a temporary folder of small generated JPEGs (two
classes) is listed (:func:`catdog.scan.list_image_files`), checked as
training checks it (:func:`catdog.scan.check_files`, the decode check, with
a cold check cache in a temporary folder, then once more warm) and split
(:func:`catdog.splits.split_files`). Each phase reports files per second and
the peak extra resident memory over the RSS just before it, so a phase whose
rate falls or whose memory per file grows with the count shows at a glance.
Everything is written under one temporary folder, deleted afterwards; no
user folder is read or written.
"""

from __future__ import annotations

import io
import os
import shutil
import struct
import tempfile
import threading
import time

import numpy as np
from PIL import Image

from catdog import scan
from catdog import splits
from benchmarks.input_loaders import loadavg, machine
from benchmarks.input_memory import rss_bytes

CLASS_NAMES = ("cats", "dogs")
#: Files per subfolder of a class, so no folder gets huge at 100,000 files.
FILES_PER_FOLDER = 5000


def parse_counts(text: str) -> list[int]:
    """``"1000,10000"`` -> ``[1000, 10000]``; ValueError naming ``--scale``."""
    try:
        counts = [int(part) for part in str(text).split(",") if part.strip()]
    except ValueError:
        counts = []
    if not counts or any(c < 2 * len(CLASS_NAMES) for c in counts):
        raise ValueError(
            "`--scale` must be a comma-separated list of file counts, each >= "
            f"{2 * len(CLASS_NAMES)}, e.g. --scale=1000,10000,100000. Received: scale={text!r}")
    return counts


def _base_jpegs(size: int) -> list[bytes]:
    """One small JPEG per class, of a different colour each."""
    out = []
    rng = np.random.default_rng(0)
    for label in range(len(CLASS_NAMES)):
        pixels = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
        pixels[..., label] //= 4  # the classes differ in colour
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, format="JPEG", quality=85)
        out.append(buffer.getvalue())
    return out


def _variant(jpeg: bytes, index: int) -> bytes:
    # A COM segment right after SOI makes every file's bytes (and size)
    # differ without another encode; decoders skip comments.
    comment = f"catdog scale {index}".encode("ascii")
    return jpeg[:2] + b"\xff\xfe" + struct.pack(">H", len(comment) + 2) + comment + jpeg[2:]


def write_jpegs(root: str, count: int, size: int = 32) -> float:
    """Writes ``count`` distinct small JPEGs in class folders under ``root``.

    Returns:
      The seconds it took.
    """
    start = time.perf_counter()
    bases = _base_jpegs(size)
    made = set()
    for index in range(count):
        label = index % len(CLASS_NAMES)
        folder = os.path.join(root, CLASS_NAMES[label],
                              f"part{index // len(CLASS_NAMES) // FILES_PER_FOLDER:03d}")
        if folder not in made:
            os.makedirs(folder)
            made.add(folder)
        with open(os.path.join(folder, f"{index:07d}.jpg"), "wb") as f:
            f.write(_variant(bases[label], index))
    return time.perf_counter() - start


class PeakRss:
    """Peak RSS of this process during a ``with`` block, above the RSS at its start.

    A thread samples ``/proc/self/statm`` every few milliseconds (the
    kernel's high-water mark cannot be reset between phases).
    """

    def __init__(self, interval: float = 0.005):
        self._interval = interval
        self._stop = threading.Event()

    def _sample(self):
        while not self._stop.wait(self._interval):
            self._peak = max(self._peak, rss_bytes())

    def __enter__(self):
        self.before = self._peak = rss_bytes()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        self._start = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.seconds = time.perf_counter() - self._start
        self._stop.set()
        self._thread.join()
        self._peak = max(self._peak, rss_bytes())
        self.extra_bytes = max(0, self._peak - self.before)
        return False


def _phase(name, count, fn):
    with PeakRss() as probe:
        value = fn()
    return value, {"phase": name, "files": count, "seconds": round(probe.seconds, 3),
                   "files_per_s": round(count / probe.seconds, 1) if probe.seconds else None,
                   "peak_extra_rss_bytes": probe.extra_bytes,
                   "peak_extra_rss_bytes_per_file": round(probe.extra_bytes / count, 1)}


def run_scale(counts, image_size: int = 32, log=print) -> dict:
    """Times listing, checking and splitting at each file count.

    Args:
      counts: file counts, e.g. ``[1000, 10000, 100000]``.
      image_size: side of the generated JPEGs.
      log: called with one line per phase.

    Returns:
      ``{"counts", "image_size", "generate", "phases"}``: ``generate`` gives
      the seconds to write each count; ``phases`` one row per count and phase
      (``listing``, ``check_cold``, ``check_warm``, ``split``).
    """
    result = {"counts": list(counts), "image_size": image_size, "machine": machine(),
              "loadavg_start": loadavg(), "generate": [], "phases": []}
    workdir = tempfile.mkdtemp(prefix="catdog-scale-")
    try:  # TensorFlow's start-up (first tf.data pipeline) is not timed
        write_jpegs(os.path.join(workdir, "data"), 8, image_size)
        scan.check_files(scan.list_image_files(os.path.join(workdir, "data"))[0],
                         use_cache=False)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    for count in counts:
        workdir = tempfile.mkdtemp(prefix="catdog-scale-")
        try:
            root = os.path.join(workdir, "data")
            seconds = write_jpegs(root, count, image_size)
            result["generate"].append({"files": count, "seconds": round(seconds, 3),
                                       "files_per_s": round(count / seconds, 1)})
            log(f"{count:,} files: generated in {seconds:.2f} s")
            cache_dir = os.path.join(workdir, "check-cache")
            (paths, labels, _), row = _phase(
                "listing", count, lambda: scan.list_image_files(root))
            rows = [row]
            checks, row = _phase("check_cold", count, lambda: scan.check_files(
                paths, cache_dir=cache_dir))
            rows.append(row)
            if not all(c.ok for c in checks):
                bad = next(c for c in checks if not c.ok)
                raise RuntimeError(f"generated file failed the check: {bad.path}: {bad.reason}")
            _, row = _phase("check_warm", count, lambda: scan.check_files(
                paths, cache_dir=cache_dir))
            rows.append(row)
            class_dirs = [os.path.join(root, name) for name in CLASS_NAMES]
            (train, val), row = _phase("split", count, lambda: splits.split_files(
                paths, labels, 0.2, 1337, class_dirs=class_dirs))
            rows.append(row)
            if len(train) + len(val) != count:
                raise RuntimeError(f"split lost files: {len(train)} + {len(val)} != {count}")
            del paths, labels, checks, train, val
            for row in rows:
                log(f"  {row['phase']:<10} {row['files_per_s']:>12,.0f} files/s   "
                    f"peak extra RSS {row['peak_extra_rss_bytes'] / 2**20:8.1f} MB "
                    f"({row['peak_extra_rss_bytes_per_file']:,.0f} B/file)")
            result["phases"] += rows
        finally:
            shutil.rmtree(workdir, ignore_errors=True)  # only what we wrote
    result["loadavg_end"] = loadavg()
    return result


def format_scale_table(r: dict) -> str:
    """A Markdown table of a :func:`run_scale` result."""
    lines = [f"Generated {r['image_size']}x{r['image_size']} JPEGs, 2 classes; check "
             f"cache cold, then warm; {r['machine']['cores']} cores "
             f"({r['machine']['cpu']}); load average {r['loadavg_start']} -> "
             f"{r['loadavg_end']}", "",
             "| files | phase | seconds | files/s | peak extra RSS | per file |",
             "|---:|---|---:|---:|---:|---:|"]
    for row in r["phases"]:
        lines.append(f"| {row['files']:,} | {row['phase']} | {row['seconds']:.3f} | "
                     f"{row['files_per_s']:,.0f} | "
                     f"{row['peak_extra_rss_bytes'] / 2**20:,.1f} MB | "
                     f"{row['peak_extra_rss_bytes_per_file']:,.0f} B |")
    return "\n".join(lines)
