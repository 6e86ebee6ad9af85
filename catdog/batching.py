"""What a run reads, and the batching tail every input source shares.

- :class:`DataIndex` (with :class:`SplitFiles` or :class:`SourceSplit` per
  split): the inputs of a run, whatever the source;
- :func:`encode_labels`: the one label encoding of every source;
- :class:`WorkerShare`: one worker's part of a split under a multi-worker
  strategy, so every worker runs the same number of steps;
- :func:`batch_pipeline`: cache -> shuffle -> batch -> prefetch.

Sources (:mod:`catdog.sources`) build on this module; it knows no source.
"""

from __future__ import annotations

import collections
import dataclasses
from typing import Optional

import tensorflow as tf

from catdog import label_sets, tfdata


@dataclasses.dataclass
class SplitFiles:
    """The usable files of one split, in a fixed order.

    ``labels`` are ints, or label sets (sorted tuples of ints) with
    ``--label_separator``.
    """

    paths: list
    labels: list

    def __len__(self) -> int:
        return len(self.paths)



@dataclasses.dataclass
class SourceSplit:
    """One split of a TFRecord or TFDS source: what to read and how many examples.

    Stands in for :class:`SplitFiles` in a :class:`DataIndex` (``len()`` is
    the number of examples).

    Attributes:
      source: shard file paths (TFRecords) or the TFDS split string.
      num_examples: number of examples in the split.
    """

    source: object
    num_examples: int

    def __len__(self) -> int:
        return int(self.num_examples)



@dataclasses.dataclass
class DataIndex:
    """What a run trains on: the files of each split and what was skipped.

    Attributes:
      class_names: class names in label order.
      train: usable training files.
      val: usable validation files.
      skipped: ``[{"path", "reason"}]`` for every candidate file that cannot
        be used (never deleted or moved: the user decides what to do).
      csv_report: CSV sources only: the rows of each CSV (``"train"``,
        ``"val"``) and their problems (see
        :func:`catdog.sources.csv_labels.index_csv`); else ``None``.
      copies: file sources: ``[[training path, validation path], ...]``,
        validation images byte-identical to a training image
        (:func:`catdog.splits.copies_across`).
    """

    class_names: list
    train: SplitFiles
    val: SplitFiles
    skipped: list
    csv_report: Optional[dict] = None
    copies: list = dataclasses.field(default_factory=list)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


def require_every_class(labels, class_names, where):
    # A label set (multi-label) counts for each of its classes.
    counts = collections.Counter(
        i for label in labels for i in (label if isinstance(label, (tuple, list)) else (label,)))
    empty = [name for i, name in enumerate(class_names) if counts.get(i, 0) == 0]
    if empty:
        raise ValueError(
            f"Class(es) {empty} have no usable image in {where}; every class needs "
            "at least one readable image (see the skipped files logged above).")


def encode_labels(labels, num_classes: int, multi_label: bool = False) -> tf.Tensor:
    """The labels as the model's loss expects them, for every source.

    Two classes: float 0/1 with a trailing axis of 1 (one label: shape
    ``(1,)``), for a sigmoid head and binary cross-entropy (Keras'
    ``label_mode="binary"``); more classes: int32, for a softmax head.
    Label sets (``multi_label``): multi-hot float32 rows of ``num_classes``,
    for one sigmoid per label, whatever the number of classes.

    Args:
      labels: integer label(s): one label tensor or a sequence of them; with
        ``multi_label``, a sequence of label sets (sequences of class numbers).
      num_classes: number of classes.
      multi_label: the labels are sets.
    """
    if multi_label:
        return tf.constant(label_sets.multi_hot(labels, num_classes))
    labels = tf.convert_to_tensor(labels)
    if num_classes == 2:
        return tf.expand_dims(tf.cast(labels, tf.float32), -1)
    return tf.cast(labels, tf.int32)


#: Default shuffle buffer (decoded images) without an in-memory cache: bounds
#: training memory (about 150 MB at 224x224) whatever the size of the split.
STREAM_SHUFFLE_BUFFER = 1024


@dataclasses.dataclass(frozen=True)
class WorkerShare:
    """One worker's part of a split under a multi-worker strategy.

    Built by :func:`worker_share`. Every worker computes the same shares (from
    the same index), so all of them agree on the number of steps.

    Attributes:
      index: this worker's input pipeline id.
      sizes: examples each worker holds, in worker order.
      replicas: replicas this worker feeds.
      batch_size: per-replica batch size.
      global_batch: global batch size.
    """

    index: int
    sizes: tuple
    replicas: int
    batch_size: int
    global_batch: int

    @property
    def num_examples(self) -> int:
        return int(self.sizes[self.index])

    def train_examples(self) -> int:
        """Examples every worker uses per training epoch (the same on all).

        The smallest share rounded down to whole steps: with uneven shares a
        worker with more examples leaves a different few out each epoch
        (after its shuffle), so every worker runs the same number of steps.
        """
        per_step = self.batch_size * self.replicas
        return (min(self.sizes) // per_step) * per_step

    def eval_batch_sizes(self) -> list:
        """Per-replica batch sizes of this worker's validation share.

        Every worker runs the same number of steps and every replica gets a
        non-empty batch at every step (an empty batch fails in oneDNN on some
        CPUs), so the sizes are as even as possible rather than a fixed
        batch size with a short last batch.
        """
        total = sum(self.sizes)
        steps = min(-(-total // self.global_batch), min(self.sizes) // self.replicas)
        per_worker = steps * self.replicas
        q, r = divmod(self.num_examples, per_worker)
        return [q + 1] * r + [q] * (per_worker - r)


def element_shares(num_examples: int, num_workers: int) -> tuple:
    """Sizes of ``Dataset.shard(num_workers, w)`` of ``num_examples`` elements."""
    return tuple(len(range(w, int(num_examples), num_workers)) for w in range(num_workers))


def worker_share(input_context, sizes, batch_size: int, training: bool,
                 what: str) -> Optional[WorkerShare]:
    """The :class:`WorkerShare` of ``input_context``, or None without one.

    Args:
      input_context: a ``tf.distribute.InputContext`` (from
        ``strategy.distribute_datasets_from_function``) or None.
      sizes: examples each worker holds, in worker order.
      batch_size: the GLOBAL batch size.
      training: whether the split is used for training.
      what: the split, for error messages.

    Raises:
      ValueError: a share too small for one step, naming ``--batch_size``.
    """
    if input_context is None:
        return None
    workers = int(input_context.num_input_pipelines)
    replicas = int(input_context.num_replicas_in_sync)
    share = WorkerShare(index=int(input_context.input_pipeline_id),
                        sizes=tuple(int(n) for n in sizes),
                        replicas=max(1, replicas // workers),
                        batch_size=int(input_context.get_per_replica_batch_size(batch_size)),
                        global_batch=int(batch_size))
    if training and not share.train_examples():
        raise ValueError(
            f"`--batch_size` {batch_size} is too large for {what} across {workers} "
            f"workers: the smallest worker share holds {min(share.sizes)} examples, "
            f"fewer than one step ({share.batch_size * share.replicas} per worker). "
            f"Use a smaller --batch_size. Received: batch_size={batch_size}")
    if not training and min(share.sizes) < share.replicas:
        raise ValueError(
            f"{what} has {sum(share.sizes)} examples, fewer than one per replica "
            f"({replicas} replicas on {workers} workers); add examples or use "
            "fewer workers.")
    return share



def split_name(split, share):
    # Each worker of a multi-worker job caches its own share under its own name.
    if share is None:
        return split
    return f"{split}-worker{share.index}of{len(share.sizes)}"



def batch_pipeline(ds: tf.data.Dataset, *, training: bool, batch_size: int,
                   num_examples: int, cache: str = "memory", seed: int = 1337,
                   shuffle_buffer: int = 0, deterministic: bool = False,
                   options: Optional[tf.data.Options] = None,
                   share: Optional[WorkerShare] = None) -> tf.data.Dataset:
    """The tail every source shares: cache -> shuffle -> batch -> prefetch.

    Args:
      ds: a dataset of decoded ``(uint8 image, label)`` elements.
      training: shuffle (reshuffled every epoch) and drop the last partial batch.
      batch_size: global batch size.
      num_examples: elements in ``ds`` (the default shuffle buffer).
      cache: ``"memory"``, ``"none"`` or a cache file path prefix.
      seed: shuffle seed.
      shuffle_buffer: shuffle buffer size; 0 means ``num_examples`` with
        ``cache="memory"``, else at most :data:`STREAM_SHUFFLE_BUFFER` (memory
        bounded by the buffer, not the split). Never less than the examples an
        epoch leaves out plus two, so the shuffle reads ``ds`` to its end and
        a cache in it is complete after the first epoch.
      deterministic: keep element order fixed in parallel stages.
      options: extra ``tf.data.Options`` merged in (e.g. a source's
        auto-shard policy).
      share: this worker's share of a multi-worker job (``ds`` then holds
        only that share): batches are per replica, every worker runs the
        same number of steps, and tf.distribute is told not to shard again.

    Returns:
      The batched, prefetched dataset.
    """
    if cache == "memory":
        ds = ds.cache()
    elif cache and cache != "none":
        ds = ds.cache(cache)
    if training:
        n = max(1, int(num_examples))
        buffer = shuffle_buffer or (n if cache == "memory" else min(n, STREAM_SHUFFLE_BUFFER))
        used = share.train_examples() if share else (n // batch_size) * batch_size
        buffer = min(n, max(int(buffer), n - used + 2))
        ds = ds.shuffle(buffer, seed=seed, reshuffle_each_iteration=True)
    if share is None:
        ds = ds.batch(batch_size, drop_remainder=training,
                      num_parallel_calls=tfdata.parallel_calls(), deterministic=deterministic)
    elif training:
        used = share.train_examples()
        if used < share.num_examples:
            # Leave out the excess AFTER the shuffle (a different few every
            # epoch), reading to the end so a file cache upstream is completed.
            ds = ds.enumerate().filter(lambda i, _: i < used).map(lambda _, e: e)
        ds = ds.batch(share.batch_size, drop_remainder=True,
                      num_parallel_calls=tfdata.parallel_calls(), deterministic=deterministic)
        ds = ds.apply(tf.data.experimental.assert_cardinality(used // share.batch_size))
    else:
        sizes = share.eval_batch_sizes()
        ds = ds.batch(max(sizes))
        if min(sizes) != max(sizes):
            ds = ds.rebatch(tf.constant(sizes, tf.int64))
        ds = ds.apply(tf.data.experimental.assert_cardinality(len(sizes)))
    ds = ds.prefetch(tf.data.AUTOTUNE)
    # The autotuner off, parallel stages at the CPU count: see catdog.tfdata.
    base = tfdata.pipeline_options(deterministic)
    if options is not None:
        base = base.merge(options)
    if share is not None:
        # Each worker already holds only its own share.
        base.experimental_distribute.auto_shard_policy = (
            tf.data.experimental.AutoShardPolicy.OFF)
    return ds.with_options(base)

