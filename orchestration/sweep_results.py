"""The one reading of a sweep's trials: which learning rate is best per (parametrization, width).

Both the sweep CLI (its printed table, `best_lr.csv` and `--transfer-to`) and the report (its table and starred
figure) call `best_lr_table`, on trial tables of the same columns (TRIAL_COLUMNS), so the lr that µTransfer
launches is the lr the report stars.
"""

from __future__ import annotations

import pandas as pd

# One row per trial. value: the trial's final metric (None when missing or not finite); early_stopped: the
# scheduler stopped it before its last step, so its value is from an earlier, incomparable step.
TRIAL_COLUMNS = ["sweep", "trial_id", "parametrization", "width", "lr", "log2_lr", "metric", "mode", "value",
                 "diverged", "early_stopped"]
BEST_COLUMNS = ["sweep", "parametrization", "width", "best lr", "log2 lr", "metric", "best value", "trials",
                "diverged"]


def best_lr_table(trials: pd.DataFrame) -> pd.DataFrame:
    """Per (sweep, parametrization, width): the lr with the best metric among trials that ran to the end without
    diverging, with trial and divergence counts (best lr None when no trial qualifies)."""
    rows = []
    for (sweep, name, width), group in trials.groupby(["sweep", "parametrization", "width"], sort=False):
        ok = group[~group["diverged"] & ~group["early_stopped"] & group["value"].notna()]
        mode = group["mode"].iloc[0]
        best = ok.loc[ok["value"].idxmin() if mode == "min" else ok["value"].idxmax()] if not ok.empty else None
        rows.append({
            "sweep": sweep, "parametrization": name, "width": width,
            "best lr": None if best is None else best["lr"], "log2 lr": None if best is None else best["log2_lr"],
            "metric": group["metric"].iloc[0], "best value": None if best is None else round(best["value"], 4),
            "trials": len(group), "diverged": int(group["diverged"].sum()),
        })
    return pd.DataFrame(rows, columns=BEST_COLUMNS)
