"""Pictures people look at in the MLflow UI and next to DVC outputs. Each returns a Figure.

Figures are built with matplotlib's object API, not pyplot: no global figure registry to leak
into, no GUI backend to choose, and a stage does not pay for importing pyplot.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from matplotlib import colormaps
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

SPECTRAL = colormaps["Spectral"]  # the tutorial's plt.cm.Spectral


def digit_grid(images: np.ndarray, labels: np.ndarray, columns: int = 8, title: str = "") -> Figure:
    """MNIST digits in a grid, each with its label (the tutorial's ``imshow``, many at once).

    The digits are tiled into one image drawn on one Axes: a subplot per digit made this picture
    cost 1.7 s of a 5 s preprocess stage.
    """
    count = len(images)
    rows = max(1, math.ceil(count / columns))
    cell, pad, caption = 28, 2, 12  # pixels: digit, gap, room for the label above it
    height, width = cell + pad + caption, cell + pad
    tiles = np.asarray(images, dtype=np.float32).reshape(count, cell, cell)
    low, high = (float(tiles.min()), float(tiles.max())) if count else (0.0, 1.0)
    mosaic = np.full((rows * height, columns * width), low, dtype=np.float32)
    fig = Figure(figsize=(columns * 1.1, rows * 1.25 + (0.4 if title else 0)))
    ax = fig.add_axes((0, 0, 1, 0.92 if title else 1))
    for i, (tile, label) in enumerate(zip(tiles, labels)):
        top, left = (i // columns) * height + caption, (i % columns) * width
        mosaic[top: top + cell, left: left + cell] = tile
        ax.text(left + cell / 2, top - 2, str(label), ha="center", va="bottom", fontsize=9, color="white")
    ax.imshow(mosaic, cmap="gray", vmin=low, vmax=high if high > low else low + 1, interpolation="nearest")
    ax.axis("off")
    if title:
        fig.suptitle(title)
    return fig


def histograms(columns: np.ndarray, names: Sequence[str], title: str = "", bins: int = 20) -> Figure:
    """One histogram per column (Boston features and the MEDV target, as the tutorial plots it)."""
    count = columns.shape[1]
    per_row = 4
    rows = math.ceil(count / per_row)
    fig = Figure(figsize=(per_row * 3, rows * 2.3))
    axes = fig.subplots(rows, per_row, squeeze=False)
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
    fig = Figure(figsize=(5 * len(splits), 4.5))
    axes = fig.subplots(1, len(splits), squeeze=False)
    for ax, (split, (x, y)) in zip(axes.flat, splits.items()):
        ax.scatter(x[:, 0], x[:, 1], c=np.asarray(y).reshape(-1), s=12, cmap=SPECTRAL)
        ax.set_title(f"{split} ({len(x)} points)")
        ax.set_xlabel("x1")
        ax.set_ylabel("x2")
    fig.tight_layout()
    return fig


_PANEL_NAMES = {"loss": "loss", "acc": "accuracy"}
_LINE_NAMES = {"train": "train", "val": "validation"}


def learning_curves(epochs: Sequence[int], metrics: dict[str, Sequence[float]], title: str = "",
                    step_losses: Sequence[float] | None = None, steps: Sequence[int] | None = None) -> Figure:
    """The tutorial's curves per epoch: a panel per metric, its train and validation values together.

    ``metrics`` maps names such as ``train_loss``, ``val_loss``, ``train_acc`` to one value per
    epoch; ``train_x`` and ``val_x`` share panel ``x``, any other name has a panel of its own.
    ``step_losses`` adds the per-iteration training loss (seed 004 §3.6), at iterations ``steps``
    (default 1, 2, ...: a training that records every epoch).
    """
    panels: dict[str, list[str]] = {}
    for name in metrics:
        split, _, rest = name.partition("_")
        panels.setdefault(rest if split in _LINE_NAMES and rest else name, []).append(name)
    count = len(panels) + (1 if step_losses else 0)
    fig = Figure(figsize=(5 * count, 3.8))
    axes = list(fig.subplots(1, count, squeeze=False).flat)
    for ax, (panel, names) in zip(axes, panels.items()):
        label = _PANEL_NAMES.get(panel, panel)
        for name in names:
            ax.plot(epochs, metrics[name], label=_LINE_NAMES.get(name.partition("_")[0], name))
        ax.set(title=f"{label} per epoch", xlabel="epoch", ylabel=label)
        if panel == "loss" and min(v for name in names for v in metrics[name]) > 0:
            ax.set_yscale("log")
        ax.legend()
        ax.grid(alpha=0.3)
    if step_losses:
        axes[-1].plot(steps or range(1, len(step_losses) + 1), step_losses, "r-", linewidth=0.8)
        axes[-1].set(title="train loss per iteration", xlabel="iteration", ylabel="loss")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def overlaid_learning_curves(runs: dict[str, dict[str, Sequence[tuple[int, float]]]], title: str = "") -> Figure:
    """Several runs' per-epoch curves on shared panels, one colour per run: ``runs`` maps a run's
    label to its metrics (``train_loss``, ``val_acc``, ...), each a list of (epoch, value).
    Training curves are solid, validation ones dashed; a panel per metric kind (loss, accuracy)."""
    panels: dict[str, None] = {}
    for metrics in runs.values():
        for name in metrics:
            panels.setdefault(name.partition("_")[2] or name)
    fig = Figure(figsize=(max(8, 6 * len(panels)), 4.5))  # room for a title naming the runs
    axes = dict(zip(panels, fig.subplots(1, max(1, len(panels)), squeeze=False).flat))
    colours = colormaps["tab10"].colors
    for colour, (run, metrics) in zip(colours * len(runs), runs.items()):
        for name, points in metrics.items():
            split = name.partition("_")[0]
            epochs, values = zip(*points) if points else ((), ())
            axes[name.partition("_")[2] or name].plot(epochs, values, color=colour,
                                                      linestyle="--" if split == "val" else "-",
                                                      label=f"{run} {_LINE_NAMES.get(split, split)}")
    for panel, ax in axes.items():
        label = _PANEL_NAMES.get(panel, panel)
        values = [v for line in ax.get_lines() for v in line.get_ydata()]
        if panel == "loss" and values and min(values) > 0:
            ax.set_yscale("log")
        ax.set(title=f"{label} per epoch", xlabel="epoch", ylabel=label)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    return fig


def weight_histograms(before: dict[str, np.ndarray], after: dict[str, np.ndarray], title: str = "",
                      bins: int = 30) -> Figure:
    """Histogram of each weight tensor at initialisation and after training (seed 004 §3.5)."""
    names = list(before)
    per_row = min(3, len(names))
    rows = math.ceil(len(names) / per_row)
    fig = Figure(figsize=(per_row * 4, rows * 3))
    axes = fig.subplots(rows, per_row, squeeze=False)
    for ax in axes.flat[len(names):]:
        ax.axis("off")
    for ax, name in zip(axes.flat, names):
        initial, trained = before[name].ravel(), after[name].ravel()
        edges = np.histogram_bin_edges(np.concatenate([initial, trained]), bins=bins)  # shared, so heights compare
        ax.hist(initial, bins=edges, alpha=0.6, label="initial")
        ax.hist(trained, bins=edges, alpha=0.6, label="trained")
        ax.set_title(f"{name} {tuple(before[name].shape)}", fontsize=9)
        ax.legend(fontsize=7)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def decision_boundary(predict, x: np.ndarray, y: np.ndarray, title: str = "", step: float = 0.01) -> Figure:
    """The tutorial's ``plot_decision_boundary``: predicted class over a grid, with the points.

    ``predict`` maps an (n, 2) float32 array to 0/1 predictions of shape (n,) or (n, 1).
    """
    x_min, x_max = x[:, 0].min() - 1, x[:, 0].max() + 1
    y_min, y_max = x[:, 1].min() - 1, x[:, 1].max() + 1
    xx, yy = np.meshgrid(np.arange(x_min, x_max, step), np.arange(y_min, y_max, step))
    grid = np.c_[xx.ravel(), yy.ravel()].astype(np.float32)
    z = np.asarray(predict(grid)).reshape(xx.shape)
    fig = Figure(figsize=(6, 5))
    ax = fig.subplots()
    # An image of the grid's classes looks like the tutorial's contourf of them, at a third of the cost.
    ax.imshow(z.astype(np.float32), origin="lower", extent=(xx.min(), xx.max(), yy.min(), yy.max()),
              cmap=SPECTRAL, vmin=0, vmax=1, aspect="auto", interpolation="nearest")
    ax.scatter(x[:, 0], x[:, 1], c=np.asarray(y).reshape(-1), s=20, cmap=SPECTRAL, edgecolors="k",
               linewidths=0.3)
    ax.set(xlabel="x1", ylabel="x2", title=title)
    fig.tight_layout()
    return fig


def confusion_counts(actual: np.ndarray, predicted: np.ndarray, classes: int) -> np.ndarray:
    """(classes, classes) counts of true class (rows) against predicted class (columns)."""
    actual, predicted = np.asarray(actual).ravel(), np.asarray(predicted).ravel()
    return np.bincount(actual * classes + predicted, minlength=classes * classes).reshape(classes, classes)


def confusion_matrix(matrix: np.ndarray, title: str = "") -> Figure:
    """Counts of true class (rows) against predicted class (columns), annotated."""
    classes = len(matrix)
    fig = Figure(figsize=(7, 6))
    ax = fig.subplots()
    image = ax.imshow(matrix, cmap="Blues")
    fig.colorbar(image, ax=ax)
    threshold = matrix.max() / 2
    for i in range(classes):
        for j in range(classes):
            ax.text(j, i, str(matrix[i, j]), ha="center", va="center", fontsize=7,
                    color="white" if matrix[i, j] > threshold else "black")
    ax.set(xticks=range(classes), yticks=range(classes), xlabel="predicted", ylabel="true", title=title)
    fig.tight_layout()
    return fig


def regression_diagnostics(actual: np.ndarray, predicted: np.ndarray, title: str = "") -> Figure:
    """Predicted against actual (with the identity line) and residuals against predicted."""
    actual, predicted = np.asarray(actual).ravel(), np.asarray(predicted).ravel()
    fig = Figure(figsize=(10, 4.2))
    left, right = fig.subplots(1, 2)
    low, high = min(actual.min(), predicted.min()), max(actual.max(), predicted.max())
    left.scatter(actual, predicted, s=14, alpha=0.7)
    left.plot([low, high], [low, high], "k--", linewidth=1)
    left.set(xlabel="actual", ylabel="predicted", title="predicted vs actual")
    right.scatter(predicted, actual - predicted, s=14, alpha=0.7)
    right.axhline(0, color="k", linestyle="--", linewidth=1)
    right.set(xlabel="predicted", ylabel="actual - predicted", title="residuals")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def save(fig: Figure, path) -> None:
    """Write ``fig`` as PNG."""
    fig.savefig(path, dpi=100)
