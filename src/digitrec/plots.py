"""Every PNG the project draws: the confusion matrix, the worst mistakes, and the studies' line plots.

matplotlib runs headless (Agg), and each figure is rendered to memory and written through fileio, so a
kill never leaves half a PNG.
"""
from __future__ import annotations

import io
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display on servers, CI or a Kaggle kernel
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from . import fileio  # noqa: E402


def save(fig: plt.Figure, path: Path) -> Path:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return fileio.write_bytes(path, buf.getvalue())


def confusion_png(confusion: list[list[int]], path: Path, title: str) -> Path:
    """Counts, rows = truth, columns = prediction; the colour is the row share, so rare classes show too."""
    counts = np.asarray(confusion)
    share = counts / np.maximum(counts.sum(1, keepdims=True), 1)
    fig, ax = plt.subplots(figsize=(6.4, 5.6))
    image = ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    for (i, j), n in np.ndenumerate(counts):
        if n:
            ax.text(j, i, str(n), ha="center", va="center", fontsize=8,
                    color="white" if share[i, j] > 0.5 else "black")
    ax.set(xticks=range(10), yticks=range(10), xlabel="predicted", ylabel="true", title=title)
    fig.colorbar(image, ax=ax, label="share of the true class")
    return save(fig, path)


def mistakes_png(images: np.ndarray, truth: np.ndarray, predicted: np.ndarray, confidence: np.ndarray,
                 path: Path, title: str) -> Path:
    """A grid of (N, 28, 28) images, each titled with truth, prediction and the prediction's probability."""
    n = len(images)
    cols = min(8, max(n, 1))
    rows = max(1, -(-n // cols))
    fig, axes = plt.subplots(rows, cols, figsize=(1.5 * cols, 1.75 * rows + 0.4), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, image, t, p, c in zip(axes.flat, images, truth, predicted, confidence):
        ax.imshow(image, cmap="gray_r")
        ax.set_title(f"true {t} pred {p}\n{c:.0%}", fontsize=8)
    if n == 0:
        axes[0, 0].text(0.5, 0.5, "no mistakes", ha="center", va="center")
    fig.suptitle(title, fontsize=10)
    return save(fig, path)


@dataclass
class Panel:
    """One set of axes: series label -> (x values, y values)."""

    ylabel: str
    series: dict[str, tuple[list, list]] = field(default_factory=dict)
    xlabel: str = "batch size"
    log2_x: bool = True  # batch sizes double from point to point
    log_y: bool = False


def lines_png(panels: list[Panel], path: Path, title: str, note: str = "") -> Path:
    """Side-by-side line plots with markers; `note` (the settings behind the numbers) goes under them."""
    fig, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels), 4.0), squeeze=False)
    for ax, panel in zip(axes[0], panels):
        ticks: set = set()
        for label, (xs, ys) in panel.series.items():
            ax.plot(xs, ys, marker="o", label=label)
            ticks.update(xs)
        if panel.log2_x:
            ax.set_xscale("log", base=2)
            ax.set_xticks(sorted(ticks), [str(t) for t in sorted(ticks)])
        else:
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs
        if panel.log_y:
            ax.set_yscale("log")
        ax.set(xlabel=panel.xlabel, ylabel=panel.ylabel)
        ax.grid(True, alpha=0.3)
        if len(panel.series) > 1:
            ax.legend(fontsize=8)
    fig.suptitle(title, fontsize=11)
    if note:
        fig.text(0.5, -0.02, note, ha="center", va="top", fontsize=7, wrap=True)
    return save(fig, path)
