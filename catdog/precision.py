"""Mixed-precision policy for catdog training jobs.

Under a mixed policy layers compute in float16 / bfloat16 and keep float32
variables; the model's last layer must be ``Dense(..., dtype="float32")`` so
the sigmoid / softmax and the loss run in float32, and ``compile()`` wraps
the optimizer in a ``LossScaleOptimizer`` by itself under ``mixed_float16``.

The Keras dtype policy is process-global state: set it with ``policy_scope``
around model construction so it never leaks into other code of the process.
"""

from __future__ import annotations

import contextlib

import keras
import tensorflow as tf

POLICY_NAMES = ("float32", "mixed_float16", "mixed_bfloat16")
PRECISION_FLAGS = ("auto",) + POLICY_NAMES


def resolve_policy(flag: str = "auto", strategy=None) -> str:
    """Turns ``--mixed_precision`` into a Keras dtype policy name.

    Args:
      flag: ``auto`` or one of ``POLICY_NAMES``. ``auto`` picks
        ``mixed_bfloat16`` under a TPUStrategy (TPUs compute in bfloat16
        natively), ``mixed_float16`` when a GPU is visible (tensor cores), and
        ``float32`` otherwise: on CPU, float16 is emulated and slower.
      strategy: the job's strategy, if any.

    Returns:
      One of ``POLICY_NAMES``.

    Raises:
      ValueError: naming ``--mixed_precision`` and the choices.
    """
    if flag not in PRECISION_FLAGS:
        raise ValueError(f"Unknown --mixed_precision={flag!r}; choose one of "
                         f"{', '.join(PRECISION_FLAGS)}.")
    if flag != "auto":
        return flag
    if strategy is not None and _is_tpu_strategy(strategy):
        return "mixed_bfloat16"
    if tf.config.list_physical_devices("GPU"):
        return "mixed_float16"
    return "float32"


def _is_tpu_strategy(strategy) -> bool:
    # TPUStrategy and its V1 / experimental variants all start with the name.
    return any(c.__name__.startswith("TPUStrategy")
               for c in type(strategy).__mro__)


@contextlib.contextmanager
def policy_scope(name: str):
    """Sets the global Keras dtype policy for the block, then restores it.

    Build (and compile) models inside the block; a layer keeps the policy it
    was created with, so the model stays mixed after the block ends.

    Args:
      name: a Keras dtype policy name, e.g. one of ``POLICY_NAMES``.

    Yields:
      The policy in effect inside the block.
    """
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(name)
    try:
        yield keras.config.dtype_policy()
    finally:
        keras.config.set_dtype_policy(previous)


def check_float32_outputs(model: keras.Model) -> None:
    """Checks that a model's outputs are float32.

    A mixed-precision model whose last layer computes in float16 loses
    precision in the sigmoid / softmax and the loss; the fix is
    ``dtype="float32"`` on the last layer.

    Args:
      model: a built Keras model.

    Raises:
      ValueError: naming the offending output and its dtype.
    """
    for tensor in keras.tree.flatten(model.outputs):
        dtype = keras.backend.standardize_dtype(tensor.dtype)
        if dtype != "float32":
            raise ValueError(
                f"Model {model.name!r} output {tensor.name!r} is {dtype}; "
                f"under mixed precision give the last layer "
                f"dtype=\"float32\".")
