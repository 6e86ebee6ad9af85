"""The file cache (``--cache DIR``): cache keys, claims of concurrent runs, chunks.

A cache file's name carries a digest of everything that changes its pixels
(:func:`cache_prefix`), so a changed file or setting never reads a stale
cache; a run claims the prefix it writes with a lock that dies with it, so a
killed run's partial cache is cleared and a live writer is left alone; a
training cache is written in chunks (:func:`cached_chunks`) read in a new
order every epoch, so its shuffle needs only a bounded buffer.
"""

from __future__ import annotations

import collections
import hashlib
import json
import os
import re

from absl import logging
import tensorflow as tf

from catdog import batching
from catdog import decode
from catdog import fileio
from catdog import label_sets


#: Caches of one key that may be written at the same time by different runs.
_CACHE_SLOTS = 8
# Cache prefixes this process holds (prefix -> open lock file). The flock is
# held until the process exits, so another run never clears files a live
# one is writing, and the kernel releases it when the process dies.
_held_caches: dict = {}


def file_stamps(paths, labels=None) -> list:
    """``[path, size, mtime_ns(, label)]`` of each file, for a cache key."""
    stamps = []
    for i, path in enumerate(paths):
        try:
            size, mtime = fileio.stat(path)
        except OSError as e:
            raise ValueError(f"{path!r} cannot be read any more ({e}); it changed "
                             "after the file check. Rerun the job.") from e
        stamps.append([path, size, mtime] + ([label_sets.record(labels[i])] if labels is not None else []))
    return stamps


def cache_prefix(cache_dir, split, identity, num_chunks: int = 0):
    """The file-cache prefix of ``identity`` under ``cache_dir``, claimed for this run.

    The name carries a digest of everything that changes the cached pixels
    and labels (``identity``: the files with their sizes and modification
    times or the shard / TFDS files, labels, image size, decode options, the
    layout; plus TensorFlow's version and :data:`catdog.decode.DECODE_VERSION`), so a
    changed file or setting never reads a stale cache. See
    :func:`_claim_cache` for concurrent and killed runs.

    Args:
      cache_dir: the ``--cache`` folder (created).
      split: split name (with the worker share, see :func:`catdog.batching.split_name`).
      identity: JSON-serialisable description of the cached content.
      num_chunks: chunks cached as ``<prefix>-c<k>`` (0: one cache file).

    Returns:
      The prefix to pass to ``Dataset.cache``, or None when every slot of
      this key is being written by other live runs (then do not cache).
    """
    key = dict(identity, tensorflow=tf.__version__, decode_version=decode.DECODE_VERSION)
    digest = hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode("utf-8"))
    tf.io.gfile.makedirs(cache_dir)
    base = os.path.join(cache_dir, f"catdog-{split}-{digest.hexdigest()[:16]}")
    return _claim_cache(base, num_chunks)


def _cache_parts(prefix: str) -> dict:
    """``{part: [file names]}`` of the cache files of ``prefix`` in its folder.

    A part is the prefix itself or one of its chunks ``<prefix>-c<k>``; its
    files are the names TF 2.21's cache writer gives them: while writing
    ``<part>_<n>.lockfile``, ``<part>_<n>.data-*-of-*.tempstate<id>`` and
    ``<part>_<n>.index``; then ``<part>.data-*-of-*`` and ``<part>.index``
    (merged), after which the ``_<n>`` files, lockfiles included, are deleted.
    """
    folder, stem = os.path.split(prefix)
    pattern = re.compile("(" + re.escape(stem) + r"(?:-c\d+)?)"
                         r"(?:_\d+\.|\.index|\.data-\d+-of-\d+)")
    parts = collections.defaultdict(list)
    for name in os.listdir(folder or "."):
        match = pattern.match(name)
        if match:
            parts[match.group(1)].append(name)
    return parts


def _part_complete(part: str, names) -> bool:
    # Merged and finished: the index exists and no writer's lockfile is left
    # (the merged index is written in place, so a writer killed while merging
    # leaves a truncated one, next to its lockfile).
    stem = os.path.basename(part)
    return f"{stem}.index" in names and not any(
        re.fullmatch(re.escape(stem) + r"_\d+\.lockfile", n) for n in names)


def _cache_complete(prefix: str, num_chunks: int) -> bool:
    parts = _cache_parts(prefix)
    wanted = [f"{prefix}-c{k}" for k in range(num_chunks)] if num_chunks else [prefix]
    return all(_part_complete(p, parts.get(os.path.basename(p), ())) for p in wanted)


def _claim_cache(base: str, num_chunks: int = 0):
    """Picks the cache prefix for this run and clears what a dead run left.

    Each prefix has a lock file ``<prefix>.lock`` on which the run that
    writes (or may write) the cache holds an exclusive ``flock`` for the
    rest of its life. Holding it means no live process writes this prefix,
    so TensorFlow's lockfile and partial files under it are leftovers of a
    killed run: they are deleted (only files of this prefix with the names
    TensorFlow's cache writer gives them), else the next ``cache()`` would
    fail with ``AlreadyExistsError``. When another live run holds the lock,
    a complete cache is read without it; an incomplete one is left alone and
    this run takes the next slot (``<base>-s1``, ...), writing a cache of its
    own. Remote cache folders (``gs://``) are not locked.
    """
    if fileio.is_remote(base):
        logging.warning("File cache %s is not on a local disk: it is not locked, so "
                        "a killed run's partial cache must be deleted by hand.", base)
        return base
    import fcntl  # pylint: disable=import-outside-toplevel
    for slot in range(_CACHE_SLOTS):
        prefix = base if not slot else f"{base}-s{slot}"
        if prefix in _held_caches:
            return prefix
        lock = open(f"{prefix}.lock", "a", encoding="utf-8")  # pylint: disable=consider-using-with
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            lock.close()
            if _cache_complete(prefix, num_chunks):
                return prefix
            logging.info("Cache %s is being written by another run; using the next slot.",
                         prefix)
            continue
        _held_caches[prefix] = lock
        _clear_partial_cache(prefix)
        return prefix
    logging.warning("Every slot of file cache %s is being written by another run; "
                    "this run does not cache.", base)
    return None


def _clear_partial_cache(prefix: str) -> None:
    """Deletes the incomplete parts a killed run left of the cache ``prefix``.

    Only files with the names TensorFlow's cache writer gives them (see
    :func:`_cache_parts`) are touched, and complete parts are kept. Call only
    while holding the prefix's lock (no live run writes it).
    """
    folder = os.path.dirname(prefix)
    for part, names in sorted(_cache_parts(prefix).items()):
        if not _part_complete(part, names):
            for name in sorted(names):
                logging.info("Removing %s, left by a run killed while caching.", name)
                os.remove(os.path.join(folder, name))


#: Cached chunks read at the same time when a file cache is shuffled.
_CHUNK_CYCLE = 4


def chunk_size(shuffle_buffer: int) -> int:
    # Chunks small enough that the buffer holds all the chunks being read,
    # so every epoch mixes whole chunks, grouped anew.
    return max(1, int(shuffle_buffer or batching.STREAM_SHUFFLE_BUFFER) // _CHUNK_CYCLE)


def cached_chunks(chunk_fn, num_chunks: int, prefix: str, *, seed: int,
                  deterministic: bool, cycle_length: int = _CHUNK_CYCLE
                  ) -> tf.data.Dataset:
    """Chunks of a split, each cached in its own file, read in a random order.

    Args:
      chunk_fn: ``k -> dataset`` of the decoded elements of chunk ``k``.
      num_chunks: number of chunks.
      prefix: cache file prefix; chunk ``k`` is cached at ``<prefix>-c<k>``.
      seed: seed of the chunk order, drawn anew every epoch.
      deterministic: fixed element order.
      cycle_length: chunks read at the same time.

    Returns:
      The elements of every chunk once, ``cycle_length`` chunks interleaved.
    """
    order = tf.data.Dataset.range(num_chunks).shuffle(
        num_chunks, seed=seed, reshuffle_each_iteration=True)

    def cached(k):
        return chunk_fn(k).cache(tf.strings.join([prefix, "-c", tf.strings.as_string(k)]))

    return order.interleave(cached, cycle_length=min(cycle_length, num_chunks),
                            block_length=1, num_parallel_calls=tf.data.AUTOTUNE,
                            deterministic=deterministic)

