"""The coordinate check's results, apart from the measurement (no torch, so the report can read them): the rows
{parametrization, width, step, layer, l1} as coord.csv, their log-log slopes against width, and the figure."""

from __future__ import annotations

import csv
import math
from collections import defaultdict
from pathlib import Path

import numpy as np

LAYERS = ("patch_embed", "attn_out", "mlp_out", "block_out", "features", "logits")
FIELDS = ["parametrization", "width", "step", "layer", "l1"]


def slopes(rows: list[dict]) -> dict[tuple[str, int, str], float]:
    """Least-squares slope of log l1 against log width, per (parametrization, step, layer)."""
    points: dict[tuple[str, int, str], list[tuple[float, float]]] = defaultdict(list)
    for r in rows:
        points[r["parametrization"], r["step"], r["layer"]].append((math.log(r["width"]), math.log(r["l1"])))
    return {key: float(np.polyfit(*zip(*pts, strict=True), 1)[0]) for key, pts in points.items() if len(pts) > 1}


def write_csv(rows: list[dict], path: Path) -> None:
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=FIELDS)
        writer.writeheader()
        writer.writerows(rows)


def plot(rows: list[dict], path: Path) -> None:
    """One panel per (parametrization, layer): l1 vs width on log-log axes, a line per step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = sorted({r["parametrization"] for r in rows}, key=["sp", "mup"].index)
    steps = sorted({r["step"] for r in rows})
    fig, axes = plt.subplots(len(names), len(LAYERS), figsize=(3 * len(LAYERS), 2.8 * len(names)), squeeze=False)
    colors = plt.cm.viridis(np.linspace(0, 0.9, len(steps)))
    for i, name in enumerate(names):
        for j, layer in enumerate(LAYERS):
            ax = axes[i][j]
            for step, color in zip(steps, colors, strict=True):
                pts = sorted((r["width"], r["l1"]) for r in rows
                             if (r["parametrization"], r["layer"], r["step"]) == (name, layer, step))
                ax.plot(*zip(*pts, strict=True), marker="o", color=color, label=f"t={step}")
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.set_title(f"{'µP' if name == 'mup' else 'SP'}: {layer}", fontsize=9)
            ax.set_xlabel("width", fontsize=8)
            if j == 0:
                ax.set_ylabel("mean |activation|", fontsize=8)
    axes[0][-1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def slope_table(rows: list[dict]) -> str:
    fitted = slopes(rows)
    names = sorted({k[0] for k in fitted}, key=["sp", "mup"].index)
    steps = sorted({k[1] for k in fitted})
    lines = [f"log-log slope of mean |activation| vs width (0 = width-independent)\n{'':12}" +
             "".join(f"{layer:>12}" for layer in LAYERS)]
    for name in names:
        for step in steps:
            cells = "".join(f"{fitted[name, step, layer]:12.2f}" for layer in LAYERS)
            lines.append(f"{name:>4} t={step:<5}" + cells)
    return "\n".join(lines)


def read_csv(path: Path) -> list[dict]:
    with path.open(newline="") as f:
        return [{"parametrization": r["parametrization"], "width": int(r["width"]), "step": int(r["step"]),
                 "layer": r["layer"], "l1": float(r["l1"])} for r in csv.DictReader(f)]
