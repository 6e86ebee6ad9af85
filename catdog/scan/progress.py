"""Progress reporting and the thread pool of the file checks and the audit."""

from __future__ import annotations

import concurrent.futures
import os
import sys
import time
from typing import Callable, Sequence, Union

from catdog import fileio

ProgressArg = Union[bool, Callable[[int, int], None], None]


class Progress:
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


def thread_map(fn, items, threads: int):
    """``ThreadPoolExecutor.map`` that hands items to threads in chunks.

    One future per file costs more than the work on a file whose result is
    cached, so items go to the threads in chunks of up to 64.

    Yields:
      ``fn(item)`` for each item, in order.
    """
    items = list(items)
    size = max(1, min(64, len(items) // (4 * threads)))
    chunks = [items[start:start + size] for start in range(0, len(items), size)]
    with concurrent.futures.ThreadPoolExecutor(threads) as pool:
        for outcomes in pool.map(lambda chunk: [fn(item) for item in chunk], chunks):
            yield from outcomes


def default_threads(paths: Sequence[str]) -> int:
    """Threads for per-file I/O (headers, hashes).

    Local files in the page cache are parsed faster by few threads (the
    parsing holds the GIL); remote files wait on the network, where many
    threads hide the latency.
    """
    if paths and fileio.is_remote(paths[0]):
        return 32
    return min(8, os.cpu_count() or 1)
