"""The coordinate check (`python -m mupvit.coord_check ... --out DIR`) in the report: its figure, copied or
re-plotted from coord.csv, and the log-log slopes of activation size against width at the last step."""

from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd

from dashboards.runs import ReportError
from mupvit.coord_results import LAYERS, plot, read_csv, slopes


def slope_table(rows: list[dict]) -> pd.DataFrame:
    """Per parametrization: slope of log mean |activation| vs log width for each layer type at the last step
    (0 = width-independent, what µP promises)."""
    fitted = slopes(rows)
    if not fitted:  # a single width has no slope
        return pd.DataFrame()
    last = max(step for _, step, _ in fitted)
    names = sorted({name for name, _, _ in fitted}, key=["sp", "mup"].index)
    return pd.DataFrame([{"parametrization": name, "step": last,
                          **{layer: round(fitted[name, last, layer], 3) for layer in LAYERS
                             if (name, last, layer) in fitted}} for name in names])


def coord_check_figure(folder: Path, figure: Path) -> pd.DataFrame:
    """Write the coordinate-check figure to `figure` (coord.png as is, else re-plotted from coord.csv); return
    the slope table (empty without coord.csv)."""
    png, table = folder / "coord.png", folder / "coord.csv"
    if not png.is_file() and not table.is_file():
        raise ReportError(f"--coord-check {folder}: no coord.png or coord.csv there; write them with "
                          f"`python -m mupvit.coord_check experiments/demo_digits.yaml --out {folder}`")
    rows = read_csv(table) if table.is_file() else []
    if png.is_file():
        shutil.copyfile(png, figure)
    else:
        plot(rows, figure)
    return slope_table(rows) if rows else pd.DataFrame()
