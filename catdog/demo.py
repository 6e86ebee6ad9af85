"""A small deterministic two-class image folder for the built-in demo.

``run_pipeline.py`` without ``--train_dir`` writes this folder and trains the
four stages on it, so a fresh install can be seen working in minutes without
any download. The two classes differ in shape and texture (round blobs
with stripes across for ``cats``, squares with stripes down for ``dogs``), with random colours, sizes, positions, backgrounds and
noise, so the task is learnable but not trivial.
"""

from __future__ import annotations

import os

import numpy as np
import tensorflow as tf

CLASSES = ("cats", "dogs")


def _draw(rng: np.random.RandomState, label: int, size: int) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    bg = rng.uniform(0, 255, size=3)
    grad = rng.uniform(-40, 40, size=3)
    img = bg + grad * (xx[..., None] / size)
    r = rng.uniform(0.22, 0.38) * size
    cy, cx = rng.uniform(r, size - r, size=2)
    # The shape's colour contrasts with the background, so the shape (not
    # the colour) is what tells the classes apart.
    color = (bg + rng.uniform(90, 165, size=3)) % 255
    if label == 0:
        mask = (yy - cy) ** 2 + (xx - cx) ** 2 <= r ** 2
    else:
        mask = (np.abs(yy - cy) <= r * 0.85) & (np.abs(xx - cx) <= r * 0.85)
    # Stripes inside the shape run across for cats and down for dogs: a
    # texture a small CNN picks up in a few epochs.
    period = rng.uniform(5, 9)
    stripes = np.sin(2 * np.pi * (yy if label == 0 else xx) / period) > 0
    img[mask & stripes] = color
    img[mask & ~stripes] = 255 - color
    img += rng.normal(0, 25, size=img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def make_demo_folder(root: str, train_per_class: int = 150,
                     val_per_class: int = 40, size: int = 96,
                     seed: int = 0) -> dict:
    """Writes ``root/train/{cats,dogs}`` and ``root/valid/{cats,dogs}`` JPEGs.

    Deterministic: the same arguments always give the same bytes. Existing
    files with the same names are left as they are (the folder is reused).

    Args:
      root: folder to write into.
      train_per_class: training images per class.
      val_per_class: validation images per class.
      size: image side in pixels.
      seed: random seed.

    Returns:
      ``{"train_dir": ..., "val_dir": ...}``.
    """
    rng = np.random.RandomState(seed)
    out = {}
    for split, n in (("train", train_per_class), ("valid", val_per_class)):
        for label, name in enumerate(CLASSES):
            folder = os.path.join(root, split, name)
            os.makedirs(folder, exist_ok=True)
            for i in range(n):
                pixels = _draw(rng, label, size)
                path = os.path.join(folder, f"{name[:-1]}.{i:04d}.jpg")
                if not os.path.exists(path):
                    tf.io.write_file(path, tf.io.encode_jpeg(pixels, quality=90))
        out["train_dir" if split == "train" else "val_dir"] = os.path.join(root, split)
    return out
