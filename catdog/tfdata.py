"""How catdog's tf.data pipelines run: their parallelism and their options.

Every pipeline catdog builds (training, validation, evaluation, prediction,
the file check, the feature pass) runs with tf.data's autotuner off and each
parallel stage at the host's CPU count.

Why: the autotuner gives every iterator a model thread that wakes after
10 ms, then 20, 40, ... up to 60 s. With TensorFlow 2.21 an iterator's
teardown often waits for that thread's next wake, so an epoch that has
delivered its last batch at 2.8 s can end at 5.3 s. Keras makes a new
iterator for every epoch, of training and of validation, so each epoch pays
that wait at random (BUILD_NOTES.md has the figures). For input bound by
decoding, what the autotuner would choose is known anyway: one parallel
call per CPU. With the autotuner off, ``num_parallel_calls=AUTOTUNE``
means at most 16, so catdog's decode and batch stages say the CPU count
instead. Interleaves of files keep AUTOTUNE, which then means one call per
file read at once (``cycle_length``, at most 16), and a prefetch buffer
still grows as it is drained.

A user who wants the autotuner for stages of their own re-enables it on
the dataset catdog returns: ``options.autotune.enabled = True`` in a later
``with_options`` wins.
"""

from __future__ import annotations

import os

import tensorflow as tf


def parallel_calls() -> int:
    """Parallel calls of a decode stage: the CPUs this process may use."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # no affinity on this platform
        return max(1, os.cpu_count() or 1)


def pipeline_options(deterministic: bool = False) -> tf.data.Options:
    """The options of every catdog pipeline (see the module doc).

    Args:
      deterministic: keep element order fixed in parallel stages.
    """
    options = tf.data.Options()
    options.autotune.enabled = False
    options.deterministic = bool(deterministic)
    # Lets tf.data parallelise any stateless map a user appends downstream.
    options.experimental_optimization.map_parallelization = True
    return options


def finish(ds: tf.data.Dataset, deterministic: bool = False) -> tf.data.Dataset:
    """``ds`` with :func:`pipeline_options`."""
    return ds.with_options(pipeline_options(deterministic))
