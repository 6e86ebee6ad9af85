"""Every figure catdog draws, from rows and pixels.

Learning curves of a run and the comparison of stages (from history rows),
what augmentation does to images, the worst mistakes (from prediction rows)
and the confusion matrix. Figures import no trainer, predictor or
evaluator: training, the four-stage job, evaluation and the scripts all
draw with them.

matplotlib with the Agg backend, so figures are written on headless cluster
nodes without a display. Images shown are decoded and resized by
:func:`catdog.data.decode_and_resize`: the pixels the model sees.
"""

from __future__ import annotations

import os
from typing import Optional, Sequence

from absl import logging
import matplotlib
import numpy as np
import tensorflow as tf

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (backend chosen first)

from catdog import errors  # noqa: E402
from catdog import fileio  # noqa: E402
from catdog import image_paths  # noqa: E402
from catdog.data import decode_and_resize  # noqa: E402

#: Inches per image cell in the grids.
_CELL = 2.0

# ---------------------------------------------------------------------------
# Curves of training runs.
# ---------------------------------------------------------------------------


def _epochs(rows):
    return [int(r["epoch"]) + 1 for r in rows]


def learning_curves(rows: list, path: str, title: str = "") -> str:
    """Plots train/validation accuracy and loss per epoch into ``path``.

    Args:
      rows: history rows (dicts with ``epoch``, ``accuracy``, ``val_accuracy``,
        ``loss``, ``val_loss``), as read from ``history.csv``.
      path: PNG file to write.
      title: figure title.

    Returns:
      ``path``.
    """
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    epochs = _epochs(rows)
    for ax, metric in zip(axes, ("accuracy", "loss")):
        for prefix, style in (("", "-o"), ("val_", "-s")):
            key = prefix + metric
            if rows and key in rows[0]:
                ax.plot(epochs, [r[key] for r in rows], style, markersize=3,
                        label="validation" if prefix else "train")
        ax.set_xlabel("epoch")
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(title)
    fig.tight_layout()
    save_figure(fig, path)
    return path


def comparison(histories: dict, path: str, title: str = "", best: str = "") -> str:
    """Overlays train (dashed) and validation (solid) curves of several stages.

    Args:
      histories: ``{stage name: history rows}`` in display order.
      path: PNG file to write.
      title: figure title.
      best: the stage to mark (thicker validation curve, "(best)" in the legend).

    Returns:
      ``path``.
    """
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, metric in zip(axes, ("accuracy", "loss")):
        for i, (stage, rows) in enumerate(histories.items()):
            if not rows:
                continue
            color = colors[i % len(colors)]
            epochs = _epochs(rows)
            if metric in rows[0]:
                ax.plot(epochs, [r[metric] for r in rows], "--", color=color,
                        alpha=0.6, label=f"{stage} train")
            if "val_" + metric in rows[0]:
                mark = " (best)" if stage == best else ""
                ax.plot(epochs, [r["val_" + metric] for r in rows], "-o",
                        markersize=3, color=color, label=f"{stage} validation{mark}",
                        linewidth=3.0 if mark else 1.5)
        ax.set_xlabel("epoch")
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(title or "catdog stages: train (dashed) vs validation (solid)")
    fig.tight_layout()
    save_figure(fig, path)
    return path


def lr_range_test(rates: Sequence[float], losses: Sequence[float], suggested: float,
                  path: str, title: str = "") -> str:
    """Plots a learning-rate range test: loss against rate (log scale), ``suggested`` marked."""
    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.plot(rates, losses, "-")
    ax.axvline(suggested, color="tab:red", linestyle="--",
               label=f"suggested {suggested:.3g}")
    ax.set_xscale("log")
    ax.set_xlabel("learning rate")
    ax.set_ylabel("training loss (smoothed)")
    ax.grid(alpha=0.3, which="both")
    ax.legend()
    fig.suptitle(title or "learning-rate range test")
    fig.tight_layout()
    save_figure(fig, path)
    return path


def save_figure(fig, path: str) -> str:
    """Writes ``fig`` as PNG via a temp file and rename (never half a file), closes it."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    try:
        with fileio.atomic_path(path, suffix=".png") as tmp:
            fig.savefig(tmp, dpi=100)
    finally:
        plt.close(fig)
    return path


# ---------------------------------------------------------------------------
# Pictures of images.
# ---------------------------------------------------------------------------


def _load(path: str, image_size) -> np.ndarray:
    return decode_and_resize(tf.io.read_file(path), image_size).numpy()


def _pick_images(image_paths_or_folder, n_images: int) -> list:
    """Files to show: the given files, or ``n_images`` spread over a folder.

    From a folder, files are listed recursively in sorted order and picked
    at even intervals, so a folder of class subfolders shows every class.
    """
    if isinstance(image_paths_or_folder, (str, os.PathLike)):
        image_paths_or_folder = [image_paths_or_folder]
    entries = image_paths.expand_paths(image_paths_or_folder)
    problems = [f"{p}: {e}" for p, e in entries if e is not None]
    files = [p for p, e in entries if e is None]
    if not files:
        raise ValueError("No image files to show: " + "; ".join(problems or
                         [str(image_paths_or_folder)]))
    if len(files) > n_images:
        step = len(files) / n_images
        files = [files[int(i * step + step / 2)] for i in range(n_images)]
    return files


def augment_images(images, n_variants: int, *, flip: str = "horizontal",
                   rotation: float = 0.1, zoom: float = 0.2,
                   seed: Optional[int] = 1337, **settings) -> np.ndarray:
    """Random augmentations of a batch, as the model sees them in training.

    Args:
      images: ``(N, H, W, 3)`` pixels in 0..255.
      n_variants: how many augmented versions of the batch to draw.
      flip, rotation, zoom: settings of
        :func:`catdog.augment.build_augmentation`.
      seed: seed of the random layers (same seed, same result).
      **settings: its other settings (``zoom_width``, ``shear``, ...).

    Returns:
      ``uint8 (n_variants, N, H, W, 3)``.
    """
    from catdog import augment  # Keras layers: imported only when drawing

    block = augment.build_augmentation(flip, rotation, zoom, seed=seed, **settings)
    batch = tf.constant(np.asarray(images, np.float32))
    # One call per variant on the whole batch: each call draws new random
    # transforms, independently per image. training=True as inside fit().
    return np.stack([np.clip(np.round(block(batch, training=True).numpy()), 0, 255)
                     .astype(np.uint8) for _ in range(n_variants)])


def mix_images(images, *, mixup: float = 0.0, cutmix: float = 0.0,
               seed: Optional[int] = 1337) -> tuple:
    """The images as one batch mixed by :func:`catdog.augment.mix_batches`.

    Returns:
      ``(uint8 (N, H, W, 3) mixed images, the share of its own image in each)``.
    """
    from catdog import augment  # Keras layers: imported only when drawing

    n = len(images)
    # Each image its own class: its label's share of its own class is the
    # share of its own image in the mix.
    ds = tf.data.Dataset.from_tensors((np.stack(images), np.arange(n, dtype=np.int32)))
    x, y = next(iter(augment.mix_batches(ds, max(3, n), mixup=mixup, cutmix=cutmix,
                                         seed=seed)))
    mixed = np.clip(np.round(x.numpy()), 0, 255).astype(np.uint8)
    return mixed, y.numpy()[np.arange(n), np.arange(n)]


def augmentation_grid(image_paths_or_folder, path: str, *, image_size=(160, 160),
                      n_images: int = 4, n_variants: int = 6,
                      flip: str = "horizontal", rotation: float = 0.1,
                      zoom: float = 0.2, seed: Optional[int] = 1337,
                      mixup: float = 0.0, cutmix: float = 0.0, **settings) -> str:
    """Draws images next to random augmentations of them.

    The augmentation is :func:`catdog.augment.build_augmentation` with
    these settings, called with ``training=True`` (as ``fit`` calls it), on
    the decoded and resized training pixels: exactly what a model with
    ``augment=True`` trains on.

    Args:
      image_paths_or_folder: image files, or a folder (searched
        recursively; ``n_images`` files are picked across it).
      path: PNG file to write.
      image_size: ``(height, width)`` images are resized to before
        augmentation (the model's input size).
      n_images: rows (images) to show.
      n_variants: augmented versions of each image, after the original.
      flip, rotation, zoom: augmentation settings (see
        :class:`catdog.config.ModelConfig`).
      seed: seed of the random layers, for the same picture every time.
      mixup, cutmix: with either set, a last column shows the images mixed
        as one training batch (:func:`mix_images`), with each one's share
        of its own image; in training the block then augments them.
      **settings: the other augmentation settings (``zoom_width``,
        ``translation``, ``shear``, ``brightness``, ``contrast``,
        ``fill_mode``, ``fill_value``).

    Returns:
      ``path``. Unreadable files are skipped with a warning.

    Raises:
      ValueError: no readable image, or ``n_images`` / ``n_variants`` < 1.
    """
    if n_images < 1 or n_variants < 1:
        raise ValueError("n_images and n_variants must be at least 1. Received: "
                         f"n_images={n_images}, n_variants={n_variants}")
    image_size = (int(image_size[0]), int(image_size[1]))
    names, images = [], []
    for file in _pick_images(image_paths_or_folder, n_images):
        try:
            images.append(_load(file, image_size))
            names.append(file)
        except tf.errors.OpError as e:
            logging.warning("Skipping %s: cannot decode (%s)", file,
                            errors.first_line(e))
    if not images:
        raise ValueError(f"None of the images in {image_paths_or_folder!r} could "
                         "be decoded.")
    variants = augment_images(np.stack(images), n_variants, flip=flip,
                              rotation=rotation, zoom=zoom, seed=seed, **settings)

    mixed = mix_images(images, mixup=mixup, cutmix=cutmix, seed=seed) if (
        mixup or cutmix) else None
    rows, cols = len(images), n_variants + 1 + (mixed is not None)
    fig, axes = plt.subplots(rows, cols, figsize=(cols * _CELL, rows * _CELL + 0.6),
                             squeeze=False)
    for r in range(rows):
        for c in range(cols):
            ax = axes[r][c]
            is_mixed = mixed is not None and c == cols - 1
            ax.imshow(images[r] if c == 0 else mixed[0][r] if is_mixed
                      else variants[c - 1][r])
            ax.set_xticks([])
            ax.set_yticks([])
            if is_mixed:
                ax.set_xlabel(f"{mixed[1][r]:.0%} its own", fontsize=8)
            if r == 0:
                ax.set_title("original" if c == 0 else "mixed batch" if is_mixed
                             else f"augmented {c}", fontsize=9)
            if c == 0:
                ax.set_ylabel(_short(names[r]), fontsize=8)
    title = ", ".join([f"flip={flip}", f"rotation={rotation}", f"zoom={zoom}"]
                      + [f"{k}={v}" for k, v in dict(settings, mixup=mixup,
                                                     cutmix=cutmix).items()
                         if v not in (None, 0, "reflect")])  # only what is set
    fig.suptitle(f"Training-time augmentation ({title}); "
                 f"{image_size[0]}x{image_size[1]} pixels", fontsize=10)
    fig.tight_layout()
    save_figure(fig, path)
    return path


def _short(path: str, keep: int = 2) -> str:
    """The last ``keep`` parts of a path (``dogs/dog.12.jpg``)."""
    parts = str(path).replace("\\", "/").rstrip("/").split("/")
    return "/".join(parts[-keep:])


def worst_mistakes_grid(rows, path: str, *, n: int = 16,
                        class_names: Optional[Sequence[str]] = None,
                        image_size=(160, 160)) -> str:
    """Shows the most confident mistakes with their true and predicted class.

    Args:
      rows: prediction rows (dicts with ``path``, ``label``,
        ``predicted``, ``probability``, ``correct``; optionally ``image``,
        uint8 pixels to show instead of reading ``path``), as
        :func:`catdog.evaluate.prediction_rows` makes them or
        :func:`catdog.evaluate.read_predictions_csv` reads them back.
        Mistakes are shown in the order given: those rows are sorted most
        confident mistake first.
      path: PNG file to write. With no mistake, the picture says so.
      n: at most this many mistakes are shown (a square-ish grid).
      class_names: the model's classes. For a binary model, where the
        ``probability`` column is ``P(class_names[1])``, titles then show the
        probability of the wrong prediction, ``P(predicted)``; without them
        titles show the ``probability`` column as it is.
      image_size: size images read from ``path`` are shown at.

    Returns:
      ``path``.
    """
    if isinstance(rows, (str, os.PathLike)):
        raise TypeError(
            "worst_mistakes_grid takes prediction rows; read a predictions.csv "
            "with catdog.evaluate.read_predictions_csv first. Received: "
            f"{os.fspath(rows)!r}")
    rows = list(rows)
    mistakes = [r for r in rows if not _is_true(r["correct"])][:max(0, n)]
    if not mistakes:
        fig, ax = plt.subplots(figsize=(4, 1.5))
        ax.axis("off")
        ax.text(0.5, 0.5, f"No mistakes on {len(rows)} images", ha="center",
                va="center", fontsize=12)
        save_figure(fig, path)
        return path
    cols = int(np.ceil(np.sqrt(len(mistakes))))
    grid_rows = int(np.ceil(len(mistakes) / cols))
    fig, axes = plt.subplots(grid_rows, cols,
                             figsize=(cols * _CELL * 1.15, grid_rows * _CELL * 1.3 + 0.5),
                             squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, row in zip(axes.ravel(), mistakes):
        image = row.get("image")
        if image is None:
            try:
                image = _load(str(row["path"]), image_size)
            except (tf.errors.OpError, OSError):
                image = None
        if image is None:
            ax.text(0.5, 0.5, "image not available", ha="center", va="center",
                    fontsize=8, transform=ax.transAxes)
        else:
            ax.imshow(image)
        ax.set_title(f"{_short(row['path'], 1)}\ntrue: {row['label']}\n"
                     f"pred: {row['predicted']}, {_probability_text(row, class_names)}",
                     fontsize=8, color="darkred")
    fig.suptitle(f"Most confident mistakes ({len(mistakes)} shown)", fontsize=11)
    fig.tight_layout()
    save_figure(fig, path)
    return path


def _is_true(value) -> bool:
    return value if isinstance(value, bool) else str(value).strip().lower() == "true"


def _probability_text(row, class_names) -> str:
    p = float(row["probability"])
    if class_names is not None and len(class_names) == 2:
        # The CSV holds P(class_names[1]); show the wrong answer's probability.
        if row["predicted"] != class_names[1]:
            p = 1.0 - p
        return f"P={p:.3f}"
    if class_names is not None:
        return f"P={p:.3f}"  # multi-class rows hold P(predicted) already
    return f"probability={p:.3f}"


def confusion_matrix_image(matrix, class_names: Sequence[str], path: str,
                           title: str = "Confusion matrix") -> str:
    """Draws a confusion matrix: rows true class, columns predicted class.

    Cell colour is the row fraction (the recall of the row's class, on the
    diagonal), so classes of different sizes compare fairly; each cell shows
    the count and that fraction.

    Args:
      matrix: ``(C, C)`` counts, ``matrix[true][predicted]``.
      class_names: the C class names.
      path: PNG file to write.
      title: figure title.

    Returns:
      ``path``.
    """
    matrix = np.asarray(matrix, np.int64)
    k = len(class_names)
    if matrix.shape != (k, k):
        raise ValueError(f"matrix must be {k}x{k} for class_names "
                         f"{list(class_names)}. Received: shape {matrix.shape}")
    totals = matrix.sum(axis=1, keepdims=True)
    fractions = np.divide(matrix, totals, out=np.zeros(matrix.shape, np.float64),
                          where=totals > 0)
    side = max(4.0, 0.9 * k + 2.5)
    fig, ax = plt.subplots(figsize=(side + 1.0, side))
    image = ax.imshow(fractions, cmap="Blues", vmin=0.0, vmax=1.0)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="fraction of true class")
    font = 11 if k <= 6 else 8 if k <= 12 else 6
    for i in range(k):
        for j in range(k):
            ax.text(j, i, f"{matrix[i, j]}\n{fractions[i, j]:.0%}", ha="center",
                    va="center", fontsize=font,
                    color="white" if fractions[i, j] > 0.5 else "black")
    ax.set_xticks(range(k))
    ax.set_xticklabels(class_names, rotation=45 if k > 4 else 0, ha="right" if k > 4 else "center")
    ax.set_yticks(range(k))
    ax.set_yticklabels(class_names)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title(f"{title} ({int(matrix.sum())} images)")
    fig.tight_layout()
    save_figure(fig, path)
    return path
