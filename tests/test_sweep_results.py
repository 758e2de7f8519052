"""One best-lr rule for the sweep CLI (its table, best_lr.csv and --transfer-to) and the report: a trial that the
scheduler stopped early reports a value from an earlier step and is never the best. Before the two shared
orchestration.sweep_results.best_lr_table, the CLI picked such a trial and the report did not."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from mupvit.config import ConfigError, load_config
from orchestration.sweep import results_table, transfer
from orchestration.sweep_results import TRIAL_COLUMNS, best_lr_table
from orchestration.sweep_spec import SweepSpec

REPO = Path(__file__).resolve().parent.parent
BASE = load_config(REPO / "experiments" / "demo_digits.yaml")
STEPS = 120


def spec(scheduler: str = "asha", mode: str = "min") -> SweepSpec:
    return SweepSpec(name="s", base=str(REPO / "experiments" / "demo_digits.yaml"), overrides={},
                     space={"model.parametrization": {"grid": ["mup"]}, "model.width": {"grid": [64]},
                            "optim.lr": {"log2_grid": [-10, -9, -8]}}, scheduler=scheduler, mode=mode)


def tune_frame(values: list[float], steps: list[int], diverged: list[float]) -> pd.DataFrame:
    """What Tune's ResultGrid.get_dataframe() gives for three trials of the space above."""
    return pd.DataFrame({"config/model.parametrization": ["mup"] * 3, "config/model.width": [64] * 3,
                         "config/optim.lr": [2.0**-10, 2.0**-9, 2.0**-8], "train/loss_avg": values, "step": steps,
                         "trial_id": ["a", "b", "c"], "diverged": diverged})


def test_an_early_stopped_trial_is_never_the_best_lr_of_the_cli_or_its_transfer():
    # lr 2^-8 was stopped by ASHA at step 40 with a lower (earlier, incomparable) loss than the finished trials.
    table = results_table(tune_frame([0.6, 0.5, 0.4], [STEPS, STEPS, 40], [0, 0, 0]), spec(), BASE, STEPS)
    assert list(table.columns[:len(TRIAL_COLUMNS)]) == TRIAL_COLUMNS
    assert table["early_stopped"].tolist() == [False, False, True]
    best = best_lr_table(table)
    assert best["best lr"].tolist() == [2.0**-9]
    sets, lr = transfer(spec(), best, str(REPO / "experiments" / "vit_s16_i1k_90ep.yaml"), 64)
    assert lr == 2.0**-9 and f"optim.lr={2.0**-9:.6g}" in sets


def test_diverged_trials_are_counted_but_never_chosen_and_max_mode_picks_the_largest():
    table = results_table(tune_frame([float("inf"), 0.5, 0.7], [0, STEPS, STEPS], [1, 0, 0]),
                          spec(mode="max"), BASE, STEPS)
    assert table["diverged"].tolist() == [True, False, False] and table["value"].isna().tolist()[0]
    best = best_lr_table(table)
    assert best[["best lr", "trials", "diverged"]].values.tolist() == [[2.0**-8, 3, 1]]


def test_without_a_scheduler_no_trial_counts_as_stopped_early():
    table = results_table(tune_frame([0.6, 0.5, 0.4], [STEPS, 60, 40], [0, 0, 0]), spec("none"), BASE, STEPS)
    assert not table["early_stopped"].any()
    assert best_lr_table(table)["best lr"].tolist() == [2.0**-8]


def test_settings_the_sweep_does_not_search_come_from_the_base():
    frame = tune_frame([0.6, 0.5, 0.4], [STEPS] * 3, [0] * 3).drop(columns=["config/model.width",
                                                                             "config/model.parametrization"])
    table = results_table(frame, spec(), BASE, STEPS)
    assert set(table["parametrization"]) == {BASE.model.parametrization}
    assert set(table["width"]) == {BASE.model.width}


def test_no_finished_mup_trial_means_no_transfer():
    table = results_table(tune_frame([0.6, 0.5, 0.4], [40, 40, 40], [0, 0, 0]), spec(), BASE, STEPS)
    with pytest.raises(ConfigError, match="no finished µP trial"):
        transfer(spec(), best_lr_table(table), str(REPO / "experiments" / "vit_s16_i1k_90ep.yaml"), 64)
