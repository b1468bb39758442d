"""Every PNG the project draws: the confusion matrix, the worst mistakes, a run's learning curves, and the
studies' figures (line plots, and each setting's seeds side by side).

matplotlib runs headless (Agg), and each figure is rendered to memory and written through fileio, so a
kill never leaves half a PNG. Log axes carry plain numbers (200, not 2x10^2), and legends sit beside the
data or in a row of their own, never over each other's labels.
"""
from __future__ import annotations

import io
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from .data import cache_dir

# matplotlib builds a font cache on first use, by default in the user's home; the project keeps it with its own
# caches (input/.cache/), so a `make train`, which draws its learning curves, writes nowhere outside the project
os.environ.setdefault("MPLCONFIGDIR", str((cache_dir() / "matplotlib").resolve()))
import matplotlib  # noqa: E402

matplotlib.use("Agg")  # no display on servers, CI or a Kaggle kernel
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402
from matplotlib.ticker import FuncFormatter, MaxNLocator, NullFormatter  # noqa: E402

from . import fileio  # noqa: E402

if TYPE_CHECKING:
    import pandas as pd


def save(fig: plt.Figure, path: Path) -> Path:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return fileio.write_bytes(path, buf.getvalue())


def log_ticks(low: float, high: float) -> list[float]:
    """Round numbers in [low, high] (> 0) to label a log axis with: one per decade over a wide range, 1-2-5 or
    finer over a narrower one, evenly spaced ones (140, 160, ...) over a range too narrow for those; at least
    four where the range holds them."""
    decades = range(math.floor(math.log10(low)), math.ceil(math.log10(high)) + 1)
    for mantissas in ((1,), (1, 2, 5), (1, 1.5, 2, 3, 5, 7)):
        ticks = [round(m * 10.0 ** d, 12) for d in decades for m in mantissas if low <= m * 10.0 ** d <= high]
        if len(ticks) >= 4:
            return ticks
    return [float(t) for t in MaxNLocator(5).tick_values(low, high) if low <= t <= high]


def plain_log_y(ax: plt.Axes, label=lambda v: f"{v:g}") -> None:
    """Label a log y axis, once its data is drawn, with log_ticks written by `label`; the minor ticks stay
    unlabelled (matplotlib labels them 2x10^2 over a narrow range)."""
    low, high = sorted(ax.get_ylim())
    ticks = log_ticks(low, high)
    ax.set_yticks(ticks, [label(t) for t in ticks])
    ax.yaxis.set_minor_formatter(NullFormatter())


def error_floor(accuracy_percent) -> np.ndarray:
    """The error (%) of accuracies (%), for an accuracy axis (accuracy_axis); a perfect score, which a tiny
    holdout can reach, stays on the log axis at 0.01% error."""
    return np.maximum(100 - np.asarray(accuracy_percent, dtype=float), 0.01)


def accuracy_axis(ax: plt.Axes, ylabel: str) -> None:
    """A y axis of errors (error_floor) on a log scale, labelled as accuracy, best at the top: 90 -> 99 ->
    99.5% get equal room, so the last epochs' differences show beside the first epochs' climb."""
    ax.set_yscale("log")
    ax.invert_yaxis()
    plain_log_y(ax, label=lambda error: f"{100 - error:g}")
    ax.set_ylabel(f"{ylabel} (%, log scale of the error)")


def confusion_png(confusion: list[list[int]], path: Path, title: str) -> Path:
    """Counts, rows = truth, columns = prediction; the colour is the row share, so rare classes show too."""
    counts = np.asarray(confusion)
    share = counts / np.maximum(counts.sum(1, keepdims=True), 1)
    fig, ax = plt.subplots(figsize=(6.4, 5.6), layout="constrained")
    image = ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    for (i, j), n in np.ndenumerate(counts):
        if n:
            ax.text(j, i, str(n), ha="center", va="center", fontsize=8,
                    color="white" if share[i, j] > 0.5 else "black")
    ax.set(xticks=range(10), yticks=range(10), xlabel="predicted", ylabel="true")
    fig.colorbar(image, ax=ax, label="share of the true class")
    fig.suptitle(title, fontsize=10)  # above the colour bar's top label, not beside it
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


def _note(fig: plt.Figure, note: str) -> None:
    """The settings behind the numbers, small, under everything else."""
    if note:
        fig.text(0.5, -0.01, note, ha="center", va="top", fontsize=7, wrap=True)


# ---------------------------------------------------------------- the studies


@dataclass
class Panel:
    """One set of axes: series label -> (x values, y values), each drawn with its `styles` entry (matplotlib
    keywords) when it has one."""

    ylabel: str
    series: dict[str, tuple[list, list]] = field(default_factory=dict)
    xlabel: str = "batch size"
    log2_x: bool = True  # batch sizes double from point to point
    yscale: str = "linear"  # "log", or "accuracy": accuracies (%) on an accuracy_axis
    title: str = ""
    styles: dict[str, dict] = field(default_factory=dict)


def lines_png(panels: list[Panel], path: Path, title: str, note: str = "") -> Path:
    """Side-by-side line plots with markers; one legend, inside a lone panel with few lines, else beside the
    panels; `note` (the settings behind the numbers) goes under them."""
    fig, axes = plt.subplots(1, len(panels), figsize=(4.6 * len(panels) + 1.6, 4.0), squeeze=False,
                             sharey=len(panels) > 1, layout="constrained")
    legend: dict[str, Line2D] = {}
    for ax, panel in zip(axes[0], panels):
        ticks: set = set()
        for label, (xs, ys) in panel.series.items():
            ys = error_floor(ys) if panel.yscale == "accuracy" else ys
            style = {"marker": "o", "markersize": 4, **panel.styles.get(label, {})}
            legend[label], = ax.plot(xs, ys, label=label, **style)
            ticks.update(xs)
        if panel.log2_x:
            ax.set_xscale("log", base=2)
            ax.set_xticks(sorted(ticks), [str(t) for t in sorted(ticks)])
            ax.xaxis.set_minor_formatter(NullFormatter())
        else:
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs
        ax.set(xlabel=panel.xlabel, title=panel.title)
        ax.grid(True, alpha=0.3)
    first = panels[0]
    if first.yscale == "accuracy":
        accuracy_axis(axes[0, 0], first.ylabel)  # shared by every panel
    else:
        axes[0, 0].set_ylabel(first.ylabel)
        if first.yscale == "log":
            axes[0, 0].set_yscale("log")
            plain_log_y(axes[0, 0])
    if len(legend) > 1:
        if len(panels) == 1 and len(legend) <= 4:
            axes[0, 0].legend(fontsize=8)
        else:
            fig.legend(legend.values(), legend.keys(), loc="outside right center", fontsize=8)
    fig.suptitle(title, fontsize=11)
    _note(fig, note)
    return save(fig, path)


@dataclass
class SeedPanel:
    """One set of axes: a category per setting on x; at each, every LR arm's seeds as dots beside each other,
    with their mean. `band` is shaded across the panel (the noise bound around a reference setting)."""

    title: str
    categories: list[str]
    arms: dict[str, list[list[float]]]  # arm label -> the seeds' values at each category ([]: not trained)
    band: tuple[float, float] | None = None


ARM_MARKERS = ("o", "D", "s", "^")


def seeds_png(panels: list[SeedPanel], path: Path, title: str, ylabel: str, note: str = "",
              band_label: str = "") -> Path:
    """Each setting's seeds as dots, each arm's offset from the next, with the seeds' mean (a line, its value
    written beside it) and their range (a bar from the lowest seed to the highest); the key in a row below."""
    fig = plt.figure(figsize=(1.5 + 4.4 * len(panels), 5.4), layout="constrained")
    grid = fig.add_gridspec(2, len(panels), height_ratios=[4.2, 1])
    axes = [fig.add_subplot(grid[0, 0])]
    axes += [fig.add_subplot(grid[0, i], sharey=axes[0]) for i in range(1, len(panels))]
    n_arms = max(len(p.arms) for p in panels)
    width = 0.6 / n_arms  # the room of one arm at a category
    for ax, panel in zip(axes, panels):
        if panel.band is not None:
            ax.axhspan(*panel.band, color="0.88", zorder=0)
        for a, (arm, values) in enumerate(panel.arms.items()):
            colour, marker = f"C{a}", ARM_MARKERS[a % len(ARM_MARKERS)]
            x0 = (a - (n_arms - 1) / 2) * width
            left = a < n_arms / 2  # a left arm's means are written to its left, the others' to their right
            for i, seeds in enumerate(values):
                if not seeds:
                    continue
                x, mean, end = i + x0, float(np.mean(seeds)), width * 0.4
                ax.plot([x, x], [min(seeds), max(seeds)], color=colour, lw=1.2, zorder=2)
                ax.plot([x - end, x + end], [mean, mean], color=colour, lw=2.4, zorder=2)
                ax.scatter([x] * len(seeds), seeds, color=colour, marker=marker, s=28, zorder=3, edgecolors="white",
                           linewidths=0.6)
                ax.annotate(f"{mean:.4g}", (x - end if left else x + end, mean), xytext=(-3 if left else 3, 0),
                            textcoords="offset points", ha="right" if left else "left", va="center", fontsize=9,
                            color=colour)
        ax.set_xticks(range(len(panel.categories)), panel.categories)
        ax.set_xlim(-0.7, len(panel.categories) - 0.3)
        ax.set_title(panel.title, fontsize=10)
        ax.grid(True, axis="y", alpha=0.3)
        if ax is not axes[0]:
            ax.tick_params(labelleft=False)
    axes[0].ticklabel_format(axis="y", style="plain", useOffset=False)
    axes[0].set_ylabel(ylabel)
    arms = dict.fromkeys(arm for p in panels for arm in p.arms)
    key = [Line2D([], [], color=f"C{a}", marker=ARM_MARKERS[a % len(ARM_MARKERS)], linestyle="none",
                  label=f"{arm}: a seed") for a, arm in enumerate(arms)]
    key.append(Line2D([], [], color="0.3", lw=2.4, label="the mean of the seeds; bar: lowest to highest seed"))
    if band_label and any(p.band is not None for p in panels):
        key.append(Patch(color="0.88", label=band_label))
    key_ax = fig.add_subplot(grid[1, :])
    key_ax.axis("off")
    # the key's own row holds it; it does not squeeze the panels when a label is long
    key_ax.legend(handles=key, loc="center", ncol=2, fontsize=9, frameon=False).set_in_layout(False)
    fig.suptitle(title, fontsize=11)
    _note(fig, note)
    return save(fig, path)


# ---------------------------------------------------------------- a study's figures (make sweep)


NORMS = {"group": "GroupNorm", "batch": "BatchNorm"}
ARM_NAMES = {"rule": "our LR rule", "fixed": "the write-ups' fixed LR"}


def with_settings(frame: pd.DataFrame) -> pd.DataFrame:
    """A study's rows (sweep.csv's, or studies.by_group's) with `setting`, how each point makes its batch as
    the figures name it (batch 128, 128 x 8 accumulated, true batch 1024), and `order`, the settings' order on
    an axis: by effective batch, the accumulated one before the true batch it stands for."""
    micro = frame.loc[frame["accum"] > 1, "batch_size"].min()  # NaN in a batch-size study
    settings = [f"{b} x {a}\naccumulated" if a > 1 else f"batch {b}" if b == micro or np.isnan(micro)
                else f"true batch\n{b}" for b, a in zip(frame["batch_size"], frame["accum"])]
    keys = list(zip(frame["effective_batch"], frame["accum"] == 1, settings))
    return frame.assign(setting=settings, order=[sorted(set(keys)).index(k) for k in keys])


def setting_panels(frame: pd.DataFrame, column: str, scale: float = 1.0,
                   band_half: float | None = None) -> list[SeedPanel]:
    """One panel per norm of a study's rows: each setting's seeds of `column` (times `scale`) per LR arm; with
    `band_half`, a band of that half-width around the mean of the first setting (the micro-batch alone) under
    the LR rule."""
    frame = with_settings(frame)
    categories = list(frame.sort_values("order").drop_duplicates("order")["setting"])
    panels = []
    for norm, rows in frame.groupby("norm", sort=False):
        arms = {ARM_NAMES[arm]: [list(rows.loc[(rows["arm"] == arm) & (rows["setting"] == c), column] * scale)
                                 for c in categories] for arm in ARM_NAMES if arm in set(rows["arm"])}
        base = rows.loc[(rows["arm"] == "rule") & (rows["setting"] == categories[0]), column].mean() * scale
        band = None if band_half is None or np.isnan(base) else (base - band_half, base + band_half)
        panels.append(SeedPanel(NORMS[norm], categories, arms, band))
    return panels


def study_pngs(frame: pd.DataFrame, groups: pd.DataFrame, note: str, out: Path, band_half: float | None,
               band_why: str) -> list[str]:
    """A study's PNGs in `out` from its rows (`frame`: one per point and seed; `groups`: the seeds' means,
    studies.by_group); returns their names. A batch-size study draws lines over the batch size; an accumulation
    study its few settings side by side, each seed a dot, the accuracy (accum_vs_true.png) against a noise band
    of half-width `band_half` points (`band_why` says what it is)."""
    groups = with_settings(groups)
    batch_study = not (frame["accum"] > 1).any()
    xlabel = "batch size" if batch_study else "effective batch size (BS x ACCUM)"

    def series(y: str, scale: float = 1.0) -> dict:
        return {name: (list(line["effective_batch"]), list(line[y] * scale))
                for name, line in groups.groupby("series", sort=False)}

    # an accumulated point's model is its micro-batch point's; the LR arm does not change the model's shape
    true = groups[groups["kind"] == "batch"].drop_duplicates(["effective_batch", "norm"])
    latency = {}
    for norm, line in true.groupby("norm", sort=False):
        suffix = ", BatchNorm" if norm == "batch" else ""
        latency[f"at batch 1{suffix}"] = (list(line["effective_batch"]), list(line["latency_b1_us"]))
        latency[f"at the training batch size{suffix}"] = (list(line["effective_batch"]),
                                                          list(line["latency_own_batch_us"]))
    panels = {"latency": Panel("inference latency per image (μs)", latency, xlabel, yscale="log")}
    if batch_study:  # batch size is a number on x, and one line per LR arm
        panels |= {"train_time": Panel("training time (s)", series("train_s"), xlabel, yscale="log"),
                   "accuracy": Panel("final accuracy (%)", series("accuracy", 100), xlabel),
                   "energy": Panel("training energy (Wh)", series("train_energy_wh"), xlabel, yscale="log")}
        names = ["train_time", "latency", "accuracy", "energy", "accuracy_per_epoch"]
    else:
        for name, column, ylabel in (("train_time", "train_s", "training time (s)"),
                                     ("energy", "train_energy_wh", "training energy (Wh)")):
            seeds_png(setting_panels(frame, column), out / f"{name}.png", f"{ylabel} by setting", ylabel, note)
        accuracy = setting_panels(frame, "accuracy", 100, band_half)
        band = f"noise bound: {accuracy[0].categories[0]} (our LR rule) +-{band_half:.2f} points,\n{band_why}" \
            if band_half is not None else ""
        seeds_png(accuracy, out / "accum_vs_true.png",
                  "accumulated gradients vs the micro-batch alone and the true batch", "holdout accuracy (%)", note, band)
        names = ["train_time", "latency", "energy", "accuracy_per_epoch", "accum_vs_true"]
    for name, panel in panels.items():
        lines_png([panel], out / f"{name}.png", f"{panel.ylabel} vs {xlabel}", note)

    epochs = []
    for norm, rows in groups.groupby("norm", sort=False):
        curves = Panel("validation accuracy", xlabel="epoch", log2_x=False, yscale="accuracy",
                       title="" if batch_study else NORMS[norm])
        for _, r in rows.sort_values("order", kind="stable").iterrows():
            label = r["setting"].replace("\n", " ") + (", fixed LR" if r["arm"] == "fixed" else "")
            curve = [100 * float(a) for a in r["val_acc_per_epoch"].split()]
            curves.series[label] = (list(range(1, len(curve) + 1)), curve)
            curves.styles[label] = {"color": f"C{r['order'] % 10}", "linestyle": "--" if r["arm"] == "fixed" else "-"}
        epochs.append(curves)
    lines_png(epochs, out / "accuracy_per_epoch.png", "validation accuracy per epoch by point", note)
    return names


# ---------------------------------------------------------------- a run's learning curves


@dataclass
class NetCurve:
    """One net's per-epoch history (engine.epoch_record's: train_loss, val_loss, val_acc, lr, ...): ensemble
    member `member`, pseudo-label round `round`, trained on fold `fold`, or on all rows (fold None: the refit,
    which has no validation figures); `finished` is False while it trains."""

    member: int
    round: int
    fold: int | None
    epochs: list[dict]
    finished: bool


ROUND_STYLES = ("-", "--", "-.", ":")


def curves_png(nets: list[NetCurve], members: list[str], path: Path, title: str) -> Path:
    """Training loss, validation loss and accuracy per epoch, and the LR on a small axis below: one thin line
    per net, the bold mean of a member's finished folds, a colour per member and a line style per pseudo-label round;
    a refit net has triangles on its line. The key fills the row beside the LR."""
    fig = plt.figure(figsize=(11, 6.4), layout="constrained")
    grid = fig.add_gridspec(2, 3, height_ratios=[2.7, 1])
    axes = {key: fig.add_subplot(grid[0, i]) for i, key in enumerate(("train_loss", "val_loss", "val_acc"))}
    axes["lr"] = fig.add_subplot(grid[1, 0])
    by_line: dict[tuple, list[NetCurve]] = {}
    for net in nets:
        by_line.setdefault((net.member, net.round, net.fold is None), []).append(net)
    for (member, round_, refit), group in by_line.items():
        style = {"color": f"C{member % 10}", "linestyle": ROUND_STYLES[round_ % len(ROUND_STYLES)],
                 "marker": "^" if refit else None, "markersize": 4}
        for key, ax in axes.items():
            curves = [[100 * e[key] if key == "val_acc" else e[key] for e in net.epochs if key in e] for net in group]
            for curve in curves:
                if curve:
                    ax.plot(range(1, len(curve) + 1), error_floor(curve) if key == "val_acc" else curve, lw=0.8,
                            alpha=0.5, **style)
            # a mean of whole curves only: one of a net still training would change its mix of nets halfway
            finished = [curve for net, curve in zip(group, curves) if net.finished and curve]
            if len(finished) > 1 and len({len(c) for c in finished}) == 1:
                mean = np.mean(finished, axis=0)
                ax.plot(range(1, len(mean) + 1), error_floor(mean) if key == "val_acc" else mean, lw=2.2, **style)
    labels = {"train_loss": "training loss", "val_loss": "validation loss", "val_acc": "validation accuracy",
              "lr": "learning rate"}
    for key, ax in axes.items():
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(True, alpha=0.3)
        if key == "val_acc" and ax.lines:
            accuracy_axis(ax, labels[key])
        else:
            ax.set_ylabel(labels[key])
        if not ax.lines:
            ax.text(0.5, 0.5, "no validation figures" if key.startswith("val") else "no figures yet", ha="center",
                    va="center", transform=ax.transAxes, color="0.4")
    axes["lr"].yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    axes["lr"].yaxis.set_major_locator(MaxNLocator(3))
    key = [Line2D([], [], color=f"C{j % 10}", lw=2.2, label=name) for j, name in enumerate(members)
           if any(net.member == j for net in nets)]
    rounds = sorted({net.round for net in nets})
    if len(rounds) > 1:
        key += [Line2D([], [], color="0.3", lw=1.5, linestyle=ROUND_STYLES[r % len(ROUND_STYLES)],
                       label="the CV nets" if r == 0 else f"pseudo-label round {r}") for r in rounds]
    if any(net.fold is None for net in nets):
        key.append(Line2D([], [], color="0.3", marker="^", markersize=4,
                          label="refit on all rows (training loss only)"))
    key += [Line2D([], [], color="0.3", lw=0.8, alpha=0.5, label="one net (a fold)"),
            Line2D([], [], color="0.3", lw=2.2, label="the mean of a member's finished folds")]
    legend_ax = fig.add_subplot(grid[1, 1:])
    legend_ax.axis("off")
    legend_ax.legend(handles=key, loc="center", ncol=2, fontsize=9, frameon=False)
    fig.suptitle(title, fontsize=11)
    return save(fig, path)
