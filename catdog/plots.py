"""Figures: learning curves of a run, and the comparison of stages.

matplotlib with the Agg backend, so figures are written on headless cluster
nodes without a display.
"""

from __future__ import annotations

import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (backend chosen first)

from catdog import fileio  # noqa: E402


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


def comparison(histories: dict, path: str, title: str = "") -> str:
    """Overlays train (dashed) and validation (solid) curves of several stages.

    Args:
      histories: ``{stage name: history rows}`` in display order.
      path: PNG file to write.
      title: figure title.

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
                ax.plot(epochs, [r["val_" + metric] for r in rows], "-o",
                        markersize=3, color=color, label=f"{stage} validation")
        ax.set_xlabel("epoch")
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(title or "catdog stages: train (dashed) vs validation (solid)")
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
