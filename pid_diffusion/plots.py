"""Figures, drawn with matplotlib off-screen (Agg) and written through a temporary file."""

import math
import re

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after the backend is chosen)
import numpy as np  # noqa: E402

from .files import atomic_output  # noqa: E402


def _save(figure, path):
    with atomic_output(path) as tmp:
        figure.savefig(tmp, format="png", dpi=100, bbox_inches="tight")
    plt.close(figure)


def checkpoint_kind(model_name):
    """'model', 'ema_0.999', ... of a checkpoint name such as ema_0.999_004000."""
    return re.sub(r"_?\d{6}$", "", model_name) or "model"


def plot_fid_vs_step(rows, path, title="FID by training step", labels=None):
    """FID against step, a line per checkpoint kind (model, ema_<rate>) and, with `labels` (a label per row),
    per label, FID on a log axis when it spans more than a decade. Rows: dicts with model_name, step, FID
    (CSV strings are fine). Returns what was drawn: {line label: [(step, FID)]}."""
    series = {}
    for index, row in enumerate(rows):
        fid = float(row["FID"])
        if math.isfinite(fid):
            kind = checkpoint_kind(row["model_name"])
            name = f"{kind}, {labels[index]}" if labels and labels[index] else kind
            series.setdefault(name, []).append((int(row["step"]), fid))
    if not series:
        return
    figure, axes = plt.subplots(figsize=(6.4, 4.0))
    for kind, points in sorted(series.items()):
        steps, fids = zip(*sorted(points))
        axes.plot(steps, fids, marker="o", label=kind)
    fids = [f for points in series.values() for _, f in points]
    if min(fids) > 0 and max(fids) / min(fids) > 10:
        axes.set_yscale("log")
    axes.set_xlabel("training step")
    axes.set_ylabel("FID")
    axes.set_title(title)
    axes.grid(True, which="both", alpha=0.3)
    axes.legend(fontsize=8)
    _save(figure, path)
    return series


def paired_sample_grid(rows, column_titles, path, title=None):
    """A grid of greyscale or colour images: `rows` is a list of (row label, uint8 NHWC images), one
    image per column; each column headed by its title."""
    columns = len(column_titles)
    figure, axes = plt.subplots(len(rows), columns, figsize=(0.75 * columns + 1.2, 0.75 * len(rows) + 0.6),
                                squeeze=False)
    for r, (label, images) in enumerate(rows):
        for c in range(columns):
            axis = axes[r, c]
            image = np.asarray(images[c])
            axis.imshow(image[..., 0] if image.shape[-1] == 1 else image, cmap="gray", vmin=0, vmax=255,
                        interpolation="nearest")
            axis.set_xticks([])
            axis.set_yticks([])
            if r == 0:
                axis.set_title(column_titles[c], fontsize=10)
        axes[r, 0].set_ylabel(label, rotation=0, ha="right", va="center", fontsize=9)
    if title:
        figure.suptitle(title, fontsize=10)
    figure.subplots_adjust(wspace=0.05, hspace=0.05)
    _save(figure, path)
