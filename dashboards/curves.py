"""Training curves on an epoch-equivalent axis, so runs of different batch sizes line up: the optimiser step
`s` of a run with global batch `B` on `N` training images is epoch s * B / N."""

from __future__ import annotations

import pandas as pd

from dashboards.runs import Histories, eval_split, number

TRAIN_LOSS, EVAL_TOP1 = "train loss", "eval top-1 (%)"


def epoch_axis(steps: pd.Series, batch_size: float, train_images: float) -> pd.Series:
    return steps * batch_size / train_images


def training_curves(runs: pd.DataFrame, histories: Histories) -> pd.DataFrame:
    """Rows run_id, run, batch, curve (train loss | eval top-1 (%)), step, epoch, value for each run in `runs`
    that records its batch size and train-set size (tag train_images)."""
    parts = []
    for _, run in runs.iterrows():
        batch, images = number(run.get("params.train.batch_size")), number(run.get("tags.train_images"))
        if not batch or not images:
            continue
        split = eval_split(run)
        sources = [(TRAIN_LOSS, "train/loss", 1.0)] + ([(EVAL_TOP1, f"{split}/acc1", 100.0)] if split else [])
        for curve, key, scale in sources:
            history = histories.get(run["run_id"], key)
            parts.append(pd.DataFrame({
                "run_id": run["run_id"], "run": run["run_name"], "batch": int(batch), "curve": curve,
                "step": history["step"], "epoch": epoch_axis(history["step"], batch, images),
                "value": history["value"] * scale,
            }))
    columns = ["run_id", "run", "batch", "curve", "step", "epoch", "value"]
    return pd.concat(parts, ignore_index=True)[columns] if parts else pd.DataFrame(columns=columns)
