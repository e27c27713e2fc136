"""Pictures people look at in the MLflow UI and next to DVC outputs. Each returns a Figure."""

from __future__ import annotations

import math
from collections.abc import Sequence

import matplotlib

matplotlib.use("Agg")  # stages run headless; select before pyplot is imported

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402


def digit_grid(images: np.ndarray, labels: np.ndarray, columns: int = 8, title: str = "") -> Figure:
    """MNIST digits in a grid, each titled with its label (the tutorial's ``imshow``, many at once)."""
    count = len(images)
    rows = math.ceil(count / columns)
    fig, axes = plt.subplots(rows, columns, figsize=(columns * 1.1, rows * 1.25), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, image, label in zip(axes.flat, images, labels):
        ax.imshow(np.asarray(image).reshape(28, 28), cmap="gray")
        ax.set_title(str(label), fontsize=9)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def histograms(columns: np.ndarray, names: Sequence[str], title: str = "", bins: int = 20) -> Figure:
    """One histogram per column (Boston features and the MEDV target, as the tutorial plots it)."""
    count = columns.shape[1]
    per_row = 4
    rows = math.ceil(count / per_row)
    fig, axes = plt.subplots(rows, per_row, figsize=(per_row * 3, rows * 2.3), squeeze=False)
    for ax in axes.flat[count:]:
        ax.axis("off")
    for ax, values, name in zip(axes.flat, columns.T, names):
        ax.hist(values, bins=bins, color="tab:blue", edgecolor="white")
        ax.set_title(name, fontsize=10)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def flower_scatter(splits: dict[str, tuple[np.ndarray, np.ndarray]]) -> Figure:
    """The flower's points per split, coloured by class with the tutorial's Spectral map."""
    fig, axes = plt.subplots(1, len(splits), figsize=(5 * len(splits), 4.5), squeeze=False)
    for ax, (split, (x, y)) in zip(axes.flat, splits.items()):
        ax.scatter(x[:, 0], x[:, 1], c=np.asarray(y).reshape(-1), s=12, cmap=plt.cm.Spectral)
        ax.set_title(f"{split} ({len(x)} points)")
        ax.set_xlabel("x1")
        ax.set_ylabel("x2")
    fig.tight_layout()
    return fig


def save(fig: Figure, path) -> None:
    """Write ``fig`` as PNG and release it (figures are not garbage-collected while pyplot holds them)."""
    fig.savefig(path, dpi=100)
    plt.close(fig)
