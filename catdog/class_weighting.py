"""Loss weights per class for ``--class_weight``: ``none``, ``balanced`` or NAME=WEIGHT pairs."""

from __future__ import annotations

import math
from typing import Any, Optional, Sequence

from catdog.options import flag_error as _fail

CLASS_WEIGHT_MODES = ("none", "balanced")  # or explicit NAME=WEIGHT,...


def parse_class_weight(value: str) -> Any:
    """``None``, ``"balanced"`` or ``{name: weight}`` in the order given."""
    text = str(value).strip()
    if text.lower() in CLASS_WEIGHT_MODES:
        return None if text.lower() == "none" else "balanced"
    weights = {}
    for part in text.split(","):
        name, sep, number = part.partition("=")
        name = name.strip()
        if not sep or not name:
            _fail("class_weight", value, "must be 'none', 'balanced' or NAME=WEIGHT "
                  "pairs such as cats=1,dogs=3")
        if name in weights:
            _fail("class_weight", value, f"names class {name!r} twice")
        try:
            weight = float(number)
        except ValueError:
            weight = float("nan")
        if not (math.isfinite(weight) and weight > 0):
            _fail("class_weight", value, f"must give class {name!r} a positive number "
                  f"(got {number.strip()!r})")
        weights[name] = weight
    return weights


def class_weights(value: str, class_names: Sequence, counts: Optional[Sequence]) -> Any:
    """The loss weight of each class, as ``--class_weight`` asks, or ``None``.

    ``balanced`` is scikit-learn's: ``n_samples / (n_classes * count_c)`` from
    the training split's class counts, so every class adds the same total
    weight to the loss; explicit ``NAME=WEIGHT`` pairs must name every class.

    Args:
      value: the ``--class_weight`` setting.
      class_names: class names in label order.
      counts: training examples per class in label order (``balanced`` only).

    Returns:
      ``None`` for ``none``, else ``{class name: weight}`` in label order.

    Raises:
      ValueError: naming the flag and value, for a malformed value, unknown
        or missing class names, or non-positive weights.
    """
    parsed = parse_class_weight(value)
    if parsed is None:
        return None
    names = list(class_names)
    if parsed == "balanced":
        if counts is None or len(counts) != len(names) or not all(c > 0 for c in counts):
            _fail("class_weight", value, f"'balanced' needs training examples of every "
                  f"class {names} (counts {counts})")
        total = sum(counts)
        return {name: total / (len(names) * count) for name, count in zip(names, counts)}
    unknown = [n for n in parsed if n not in names]
    missing = [n for n in names if n not in parsed]
    if unknown or missing:
        _fail("class_weight", value, f"must give a weight to each of the classes {names} "
              f"(unknown {unknown}, missing {missing})")
    return {name: parsed[name] for name in names}
