"""The report's figures, drawn with matplotlib's Agg backend: the µP learning-rate transfer of a sweep and the
training curves of chosen runs on an epoch-equivalent axis."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the backend)
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402

from dashboards.curves import EVAL_TOP1, TRAIN_LOSS  # noqa: E402
from dashboards.sweeps import DEFAULT_METRIC  # noqa: E402
from mupvit.results import LOSS_WINDOW  # noqa: E402

PARAMETRIZATIONS = {"sp": "SP (standard parametrization)", "mup": "µP (maximal update parametrization)"}
DPI = 110


def metric_label(metric: str) -> str:
    if metric == DEFAULT_METRIC:
        return f"final train loss (mean of last {LOSS_WINDOW} logged)"
    return metric


def off_scale_limit(values: pd.Series, mode: str) -> float | None:
    """Where the axis stops so one blown-up trial does not flatten the rest: 3 interquartile ranges past the
    worse quartile (Tukey's far-out fence); None when nothing lies beyond it."""
    if len(values) < 4:
        return None
    q1, q3 = values.quantile([0.25, 0.75])
    fence = q3 + 3 * (q3 - q1) if mode == "min" else q1 - 3 * (q3 - q1)
    beyond = values > fence if mode == "min" else values < fence
    return float(fence) if beyond.any() and q3 > q1 else None


def plot_transfer(trials: pd.DataFrame, best: pd.DataFrame, path: Path) -> None:
    """One sweep: final metric vs log2 lr, a curve per width, one panel per parametrization (SP left, µP right,
    shared axes); the best lr per width starred; diverged trials as crosses along the top edge, trials stopped
    early hollow, values past the axis limit as triangles on the edge."""
    sweep, metric, mode = trials["sweep"].iloc[0], trials["metric"].iloc[0], trials["mode"].iloc[0]
    names = sorted(trials["parametrization"].unique(), key=lambda n: (n not in PARAMETRIZATIONS, n == "mup", n))
    widths = sorted(trials["width"].dropna().unique())
    colors = dict(zip(widths, plt.cm.viridis(np.linspace(0.0, 0.85, len(widths))), strict=True))
    finite = trials.loc[~trials["diverged"], "value"].dropna()
    limit = off_scale_limit(finite, mode)
    fig, axes = plt.subplots(1, len(names), figsize=(5.5 * len(names), 4.4), sharex=True, sharey=True,
                             squeeze=False)
    for ax, name in zip(axes[0], names, strict=True):
        for width in widths:
            group = trials[(trials["parametrization"] == name) & (trials["width"] == width)].sort_values("log2_lr")
            color = colors[width]
            ok = group[~group["diverged"] & group["value"].notna()]
            shown = ok["value"].clip(upper=limit) if mode == "min" else ok["value"].clip(lower=limit)
            ended = ~ok["early_stopped"]
            # The line joins trials that ran to the end (the mean where a searcher repeated an lr); a trial stopped
            # early reports an earlier, worse value, so it is only a hollow marker.
            line = shown[ended].groupby(ok["log2_lr"][ended]).mean()
            ax.plot(line.index, line.values, "-", color=color, label=f"width {width:g}")
            ax.plot(ok["log2_lr"][ended], shown[ended], "o", color=color)
            ax.plot(ok["log2_lr"][~ended], shown[~ended], "o", mfc="white", color=color)
            if limit is not None:
                past = ok["value"] > limit if mode == "min" else ok["value"] < limit
                ax.plot(ok["log2_lr"][past], shown[past], "^" if mode == "min" else "v", ms=9, color=color)
            diverged = group[group["diverged"]]
            ax.plot(diverged["log2_lr"], [0.95] * len(diverged), "x", ms=9, mew=2, color=color,
                    transform=ax.get_xaxis_transform())
            pick = best[(best["parametrization"] == name) & (best["width"] == width)].dropna(subset=["best lr"])
            ax.plot(pick["log2 lr"], pick["best value"], "*", ms=17, color=color, mec="black", zorder=5)
        ax.set_title(PARAMETRIZATIONS.get(name, name))
        ax.set_xlabel("log2 learning rate")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel(metric_label(metric))
    markers = [Line2D([], [], ls="", marker="*", ms=13, color="grey", mec="black", label="best lr of a width")]
    if trials["diverged"].any():
        markers.append(Line2D([], [], ls="", marker="x", mew=2, color="grey", label="diverged (no value)"))
    if trials["early_stopped"].any():
        markers.append(Line2D([], [], ls="", marker="o", mfc="white", color="grey", label="stopped early"))
    if limit is not None:
        markers.append(Line2D([], [], ls="", marker="^" if mode == "min" else "v", color="grey",
                              label="beyond the axis"))
    handles, _ = axes[0][-1].get_legend_handles_labels()
    axes[0][-1].legend(handles=handles + markers, fontsize=8, loc="best")
    better = "lower" if mode == "min" else "higher"
    fig.suptitle(f"µP learning-rate transfer, sweep '{sweep}' ({better} is better): under µP the best lr "
                 "should stay put as width grows", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)


def plot_curves(curves: pd.DataFrame, path: Path) -> None:
    """Train loss and eval top-1 against epochs (step x batch / train images), one line per run."""
    panels = [c for c in (TRAIN_LOSS, EVAL_TOP1) if c in set(curves["curve"])]
    runs = list(dict.fromkeys(curves["run_id"]))
    colors = dict(zip(runs, plt.cm.tab10(np.arange(len(runs)) % 10), strict=True))
    fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 4.4), squeeze=False)
    for ax, panel in zip(axes[0], panels, strict=True):
        for run_id in runs:
            line = curves[(curves["run_id"] == run_id) & (curves["curve"] == panel)]
            if line.empty:
                continue
            ax.plot(line["epoch"], line["value"], "-" if panel == TRAIN_LOSS else "-o", ms=4, color=colors[run_id],
                    label=f"{line['run'].iloc[0]} (batch {line['batch'].iloc[0]})")
        ax.set_title(panel)
        ax.set_xlabel("epoch (step x batch / train images)")
        ax.set_ylabel(panel)
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.suptitle("Training curves on an epoch-equivalent axis (runs of any batch size line up)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
