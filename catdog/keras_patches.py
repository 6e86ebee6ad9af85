"""Version-keyed fixes of Keras 3 ``model.fit`` under MultiWorkerMirroredStrategy.

Keras 3.15's TensorFlow trainer fails across workers in two places (the
first symbolic build reduces an input batch across workers; the logs of a
step are reduced with ``axis=0``, invalid for scalars; see BUILD_NOTES.md).
:func:`apply_keras_multiworker_fix` replaces both while the buggy code is
present, and only acts under a multi-worker strategy. Kept apart from the
strategy code so it is easy to delete: when
``tests/test_keras_patches.py`` reports that Keras no longer has the bugs,
remove this module and its one call in :func:`catdog.train.run`.
"""

from __future__ import annotations

import inspect
import logging
import threading

import keras
import tensorflow as tf

from catdog import distribute

_log = logging.getLogger(__name__)


# Keras versions this compatibility layer was verified against (inclusive).
# Outside this range the layer still patches if the buggy code is present,
# but warns; tests/test_distribute.py fails so the fix gets re-verified.
TESTED_KERAS_VERSIONS = ((3, 15), (3, 15))

_patch_lock = threading.Lock()
_originals: dict = {}


def _trainer_module():
    # Imported lazily: the module exists only with the TensorFlow backend.
    from keras.src.backend.tensorflow import trainer  # pylint: disable=g-import-not-at-top
    return trainer


def _keras_version() -> tuple[int, int]:
    major, minor = keras.__version__.split(".")[:2]
    return int(major), int(minor)


def keras_multiworker_bug_present() -> bool:
    """Whether the installed Keras still has both multi-worker fit() bugs.

    Looks for the two offending calls in the source of
    ``TensorFlowTrainer._maybe_symbolic_build`` (reduces the first input
    batch across workers with ``strategy.reduce``) and ``reduce_per_replica``
    (reduces scalar logs with ``axis=0``).

    Returns:
      True when both calls are found; False when Keras changed either place
      (or is not using the TensorFlow backend), i.e. the fix must not be
      applied blindly.
    """
    if keras.backend.backend() != "tensorflow":
        return False
    trainer = _trainer_module()
    try:
        build_src = inspect.getsource(_originals.get(
            "build", trainer.TensorFlowTrainer._maybe_symbolic_build))
        reduce_src = inspect.getsource(
            _originals.get("reduce", trainer.reduce_per_replica))
    except (OSError, TypeError):
        # No source shipped: trust the tested version range instead.
        low, high = TESTED_KERAS_VERSIONS
        return low <= _keras_version() <= high
    return ("self.distribute_strategy.reduce(" in build_src and
            'strategy.reduce("MEAN", v, axis=0)' in reduce_src)


def _patched_maybe_symbolic_build(self, iterator=None, data_batch=None):
    """Builds from this worker's first replica batch under multi-worker.

    Only shapes and dtypes matter for the symbolic build, so averaging the
    first batch across workers (what Keras does, and what fails across
    workers) is unnecessary.
    """
    strategy = self._distribute_strategy
    if iterator is None or strategy is None or not distribute.is_multi_worker(strategy):
        return _originals["build"](self, iterator=iterator,
                                   data_batch=data_batch)
    from keras.src import tree  # pylint: disable=g-import-not-at-top
    def local_value(value):
        if isinstance(value, tf.distribute.DistributedValues):
            return strategy.experimental_local_results(value)[0]
        return value

    for _, _, it in iterator:
        data_batch = tree.map_structure(local_value, next(it))
        break
    with strategy.scope():
        self._symbolic_build(data_batch=data_batch)


_patched_maybe_symbolic_build._catdog_patch = True


def _patched_reduce_per_replica(values, strategy, reduction):
    """Averages logs across workers element-wise (``axis=None``).

    The logs of a train/test step are scalars; Keras reduces them with
    ``axis=0``, which is invalid for a scalar. ``axis=None`` is the mean over
    replicas, which is what the single-worker path computes.
    """
    if reduction in ("auto", "mean") and distribute.is_multi_worker(strategy):
        from keras.src import tree  # pylint: disable=g-import-not-at-top
        return tree.map_structure(
            lambda v: strategy.reduce("MEAN", v, axis=None), values)
    return _originals["reduce"](values, strategy, reduction)


_patched_reduce_per_replica._catdog_patch = True


def apply_keras_multiworker_fix(strategy=None) -> bool:
    """Makes Keras 3 ``model.fit`` / ``evaluate`` work across workers.

    Patches two functions of ``keras.src.backend.tensorflow.trainer``; the
    patched versions fall through to the originals unless the strategy is a
    MultiWorkerMirroredStrategy spanning several workers, so single-process
    training is untouched. Idempotent; undo with
    ``remove_keras_multiworker_fix``.

    Args:
      strategy: the job's strategy. When given and it is not a
        MultiWorkerMirroredStrategy, nothing is patched.

    Returns:
      True when the fix is active after the call.
    """
    if strategy is not None and not isinstance(
            strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return False
    with _patch_lock:
        if _originals:
            return True
        if not keras_multiworker_bug_present():
            _log.warning(
                "Keras %s no longer has the multi-worker fit() code catdog "
                "patches; not patching. If fit() fails under "
                "--strategy=multi_worker, update catdog/keras_patches.py.",
                keras.__version__)
            return False
        low, high = TESTED_KERAS_VERSIONS
        if not low <= _keras_version() <= high:
            _log.warning("Patching Keras %s for multi-worker fit(); verified "
                         "only on Keras %d.%d-%d.%d.", keras.__version__,
                         *low, *high)
        trainer = _trainer_module()
        _originals["build"] = trainer.TensorFlowTrainer._maybe_symbolic_build
        _originals["reduce"] = trainer.reduce_per_replica
        trainer.TensorFlowTrainer._maybe_symbolic_build = (
            _patched_maybe_symbolic_build)
        trainer.reduce_per_replica = _patched_reduce_per_replica
        _log.info("Applied the Keras multi-worker fit() compatibility fix.")
        return True


def remove_keras_multiworker_fix() -> None:
    """Restores the Keras functions ``apply_keras_multiworker_fix`` patched."""
    with _patch_lock:
        if not _originals:
            return
        trainer = _trainer_module()
        trainer.TensorFlowTrainer._maybe_symbolic_build = _originals.pop(
            "build")
        trainer.reduce_per_replica = _originals.pop("reduce")


def keras_multiworker_fix_active() -> bool:
    """Whether ``apply_keras_multiworker_fix`` is in effect."""
    return bool(_originals)
