"""Each picture renders to a PNG of the expected size, from the data it is given."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from matplotlib.figure import Figure

from bplab import plots


def png_size(path: Path) -> tuple[int, int]:
    header = path.read_bytes()[:24]
    assert header[:8] == b"\x89PNG\r\n\x1a\n"
    return int.from_bytes(header[16:20], "big"), int.from_bytes(header[20:24], "big")


def test_digit_grid_tiles_every_digit_with_its_label(tmp_path: Path) -> None:
    images = np.linspace(-1, 1, 10 * 784, dtype=np.float32).reshape(10, 784)
    figure = plots.digit_grid(images, [f"{i}→{i + 1}" for i in range(10)], columns=4, title="ten digits")
    [axes] = figure.axes
    assert [t.get_text() for t in axes.texts] == [f"{i}→{i + 1}" for i in range(10)]
    mosaic = axes.images[0].get_array()
    assert mosaic.shape == (3 * 42, 4 * 30)  # 3 rows of (label strip + digit + gap), 4 columns
    np.testing.assert_array_equal(mosaic[12:40, 0:28], images[0].reshape(28, 28))
    plots.save(figure, tmp_path / "grid.png")
    assert png_size(tmp_path / "grid.png") == (440, 415)


def test_decision_boundary_predicts_on_a_grid_around_the_points(tmp_path: Path) -> None:
    seen = []

    def predict(grid: np.ndarray) -> np.ndarray:
        seen.append(grid)
        return grid[:, 0] > 0

    x = np.array([[-2.0, -1.0], [2.0, 1.0]])
    figure = plots.decision_boundary(predict, x, np.array([[0], [1]]), title="t", step=0.1)
    [grid] = seen
    assert grid.dtype == np.float32 and grid.shape[1] == 2
    assert grid[:, 0].min() == pytest.approx(-3) and grid[:, 0].max() == pytest.approx(2.9, abs=0.11)
    plots.save(figure, tmp_path / "boundary.png")
    assert png_size(tmp_path / "boundary.png") == (600, 500)


@pytest.mark.parametrize("make", [
    lambda rng: plots.histograms(rng.normal(size=(50, 5)), list("abcde"), "five"),
    lambda rng: plots.flower_scatter({"train": (rng.normal(size=(20, 2)), rng.integers(0, 2, (20, 1)))}),
    lambda rng: plots.learning_curves([1, 2, 3], {"train_loss": [3.0, 2.0, 1.0], "val_loss": [3.0, 2.5, 2.0],
                                                  "train_acc": [0.1, 0.5, 0.9], "val_acc": [0.1, 0.4, 0.8]}, "lc"),
    lambda rng: plots.learning_curves([1, 2], {"train_loss": [3.0, 1.0], "val_loss": [3.0, 2.0]}, "lc",
                                      step_losses=[4.0, 3.0, 2.0, 1.0]),
    lambda rng: plots.weight_histograms({"w": rng.normal(size=(4, 3))}, {"w": rng.normal(size=(4, 3))}, "w"),
    lambda rng: plots.confusion_matrix(rng.integers(0, 100, (10, 10)), "cm"),
    lambda rng: plots.regression_diagnostics(rng.normal(size=30), rng.normal(size=30), "r"),
])
def test_every_picture_renders(make, tmp_path: Path) -> None:
    figure = make(np.random.default_rng(0))
    assert isinstance(figure, Figure)
    plots.save(figure, tmp_path / "p.png")
    width, height = png_size(tmp_path / "p.png")
    assert width >= 300 and height >= 200


def test_learning_curves_draw_a_panel_per_metric_with_train_and_validation_together() -> None:
    metrics = {"train_loss": [3.0, 2.0, 1.0], "val_loss": [3.0, 2.5, 2.0], "train_acc": [0.1, 0.5, 0.9],
               "val_acc": [0.1, 0.4, 0.8], "lr": [0.1, 0.05, 0.025]}
    figure = plots.learning_curves([1, 2, 3], metrics, "lc", step_losses=[4.0, 3.0, 2.0, 1.0])
    panels = {ax.get_title(): ax for ax in figure.axes}
    assert list(panels) == ["loss per epoch", "accuracy per epoch", "lr per epoch", "train loss per iteration"]
    lines = {title: {line.get_label(): list(line.get_ydata()) for line in ax.lines} for title, ax in panels.items()}
    assert lines["accuracy per epoch"] == {"train": [0.1, 0.5, 0.9], "validation": [0.1, 0.4, 0.8]}
    assert lines["lr per epoch"] == {"lr": [0.1, 0.05, 0.025]}
    assert panels["loss per epoch"].get_yscale() == "log"
    assert lines["train loss per iteration"]["_child0"] == [4.0, 3.0, 2.0, 1.0]
