"""The report's run tables as DataFrames, accuracies in percent: the reproduction table (one row per training
run) and the ablation table in the paper's layout (rows: the recipe and each single change; columns: epochs)."""

from __future__ import annotations

import pandas as pd

from dashboards.runs import Histories, epoch_results, eval_split, model_width, number, resolved_config, text
from mupvit.config import Config
from mupvit.results import (
    PAPER_EPOCHS,
    PAPER_REAL_TAG,
    PAPER_TAG,
    PAPER_TOP1,
    PAPER_V2_TAG,
    departures,
    epoch_label,
    result_name,
    special_evaluators,
)

# The contract with experiments/ablations/ (tag `ablation`): name -> the change, as the paper's table words it.
ABLATIONS = {
    "recipe": "the recipe (paper: \"our improvements\")",
    "head_linear": "head: MLP -> linear",
    "pool_cls": "pooling: global average -> [cls] token",
    "posemb_learned": "position embedding: sincos2d -> learned",
    "no_randaug_mixup": "no RandAugment, no MixUp",
    "batch_4096": "batch size: 1024 -> 4096",
}


def percent(fraction: float | None) -> float | None:
    return None if fraction is None else round(100 * fraction, 2)


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value)


def clock(seconds: float | None) -> str:
    if seconds is None:
        return ""
    seconds = round(seconds)
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


def top1_column(epochs: float) -> str:
    return f"top-1 @{epoch_label(epochs)}ep (%)"


def top5_column(epochs: float) -> str:
    return f"top-5 @{epoch_label(epochs)}ep (%)"


def value_at(history: pd.DataFrame, step: int | None) -> float | None:
    """The history's value at `step` (None when it was not logged there)."""
    if step is None or history.empty:
        return None
    match = history.loc[history["step"] == step, "value"]
    return number(match.iloc[-1]) if len(match) else None


def training_runs(runs: pd.DataFrame) -> pd.DataFrame:
    """Runs that are neither a sweep parent nor a sweep trial, oldest first."""
    return runs[runs["role"] == "training"].sort_values(["experiment", "start_time"])


def _results(run: pd.Series, histories: Histories) -> dict[str, float | None]:
    """top-1 and top-5 at each N-epoch-equivalent; top-5 from the first eval split at acc1_at_<N>ep's step."""
    split = eval_split(run)
    acc5 = histories.get(run["run_id"], f"{split}/acc5") if split else pd.DataFrame(columns=["step", "value"])
    cells: dict[str, float | None] = {}
    for epochs, key in epoch_results(run).items():
        history = histories.get(run["run_id"], key)
        step = int(history["step"].iloc[-1]) if not history.empty else None
        cells[top1_column(epochs)] = percent(number(run[f"metrics.{key}"]))
        cells[top5_column(epochs)] = percent(value_at(acc5, step))
    return cells


NOT_RUN = "—"  # an evaluator the run did not have: shown as such, never guessed


def other_benchmarks(run: pd.Series, cfg: Config | None) -> dict[str, float | str | None]:
    """The run's final ImageNet-ReaL and ImageNet-v2 top-1 beside the paper's (tags mupvit.paper_real/_v2), from
    the evaluators its resolved config `cfg` declares; NOT_RUN where it had none."""
    names = special_evaluators(cfg) if cfg is not None else {}
    cells: dict[str, float | str | None] = {}
    for kind, label, tag in (("real", "ReaL", PAPER_REAL_TAG), ("v2", "v2", PAPER_V2_TAG)):
        name = names.get(kind)
        cells[f"{label} (%)"] = percent(number(run.get(f"metrics.final/{name}/acc1"))) if name else NOT_RUN
        cells[f"paper {label} (%)"] = number(run.get(f"tags.{tag}"))
    return cells


# The reproduction table's first columns, after its headline top-1: what a reader compares, visible without
# scrolling sideways in a 1400-px window; the setting, budget, speed and other results follow.
LEADING = ("paper top-1 (%)", "diff vs paper (pp)", "departs from the paper", "ReaL (%)", "paper ReaL (%)",
           "v2 (%)", "paper v2 (%)")


def reproduction_table(runs: pd.DataFrame, histories: Histories) -> pd.DataFrame:
    """One row per training run: its setting, budget, speed, top-1/top-5 at every epoch-equivalent it logged, the
    paper's top-1 for that setting (tag mupvit.paper_acc1) and our 90-epoch top-1 minus it.

    Columns: run, the headline top-1 (at 90 epochs, the paper's budget; the largest budget logged when no run has
    90), LEADING, then the rest in the order of the row (setting, budget, speed, other results, run id)."""
    rows, epochs_seen = [], set()
    for _, run in training_runs(runs).iterrows():
        results = epoch_results(run)
        epochs_seen |= set(results)
        ours = percent(number(run.get(f"metrics.{results[PAPER_EPOCHS]}"))) if PAPER_EPOCHS in results else None
        cfg = resolved_config(run)
        paper = number(run.get(f"tags.{PAPER_TAG}"))
        steps = number(run.get("tags.total_steps")) or number(run.get("params.train.total_steps"))
        rows.append({
            "run": run["run_name"], "experiment": run["experiment"], "status": run["status"],
            "variant": text(run.get("params.model.variant")), "head": text(run.get("params.model.head")),
            "pool": text(run.get("params.model.pool")), "posemb": text(run.get("params.model.posemb")),
            "parametrization": text(run.get("params.model.parametrization")), "width": model_width(run),
            "lr": number(run.get("params.optim.lr")), "batch": number(run.get("params.train.batch_size")),
            "epochs": number(run.get("params.train.epochs")), "steps": steps,
            "workers": number(run.get("params.cluster.num_workers")),
            "devices": number(run.get("params.train.devices")),
            "images/s": _rounded(number(run.get("metrics.final/images_per_s"))),
            "wall time": clock(number(run.get("metrics.final/wall_s"))),
            **_results(run, histories),
            "paper top-1 (%)": paper,
            "diff vs paper (pp)": round(ours - paper, 2) if ours is not None and paper is not None else None,
            "departs from the paper": (", ".join(departures(cfg)) or "none") if cfg is not None else "",
            **other_benchmarks(run, cfg),
            "run id": run["run_id"],
        })
    table = pd.DataFrame(rows)
    if table.empty:
        return table
    headline = [top1_column(PAPER_EPOCHS if PAPER_EPOCHS in epochs_seen else max(epochs_seen))] if epochs_seen else []
    first = ["run", *headline, *LEADING]
    results = [c for n in sorted(epochs_seen) for c in (top1_column(n), top5_column(n)) if c not in first]
    setting = [c for c in table.columns if c not in first and c not in results and c != "run id"]
    return table[first + setting + results + ["run id"]]


def ablation_order(names: set[str]) -> list[str]:
    """The contract's order first ("recipe" leads), unknown ablations after it alphabetically."""
    return [n for n in ABLATIONS if n in names] + sorted(names - set(ABLATIONS))


def final_epochs(run: pd.Series) -> float | None:
    """The run's epoch budget: train.epochs, or the last epoch-equivalent it logged for a step-budgeted run."""
    epochs = number(run.get("params.train.epochs"))
    results = epoch_results(run)
    return epochs if epochs is not None else max(results, default=None)


def ablation_table(runs: pd.DataFrame) -> pd.DataFrame:
    """Rows: ablations (tag `ablation`); columns: top-1 (%) at each run's final epoch-equivalent, one column per
    epoch budget, then the paper's numbers for the budgets it reports. Of repeated runs the latest counts."""
    tagged = training_runs(runs)
    if "tags.ablation" not in tagged:
        return pd.DataFrame()
    tagged = tagged[tagged["tags.ablation"].notna()].sort_values("start_time")
    cells: dict[tuple[str, float], float | None] = {}
    for _, run in tagged.iterrows():
        epochs = final_epochs(run)
        if epochs is not None:
            cells[run["tags.ablation"], epochs] = percent(number(run.get(f"metrics.{result_name(epochs)}")))
    budgets = sorted({epochs for _, epochs in cells})
    paper_budgets = [e for e in budgets if any(epochs == e for _, epochs in PAPER_TOP1)]
    rows = []
    for name in ablation_order({name for name, _ in cells}):
        row = {"ablation": name, "change": ABLATIONS.get(name, "")}
        row.update({f"{epoch_label(e)} ep": cells.get((name, e)) for e in budgets})
        row.update({f"paper {epoch_label(e)} ep": PAPER_TOP1.get((name, e)) for e in paper_budgets})
        rows.append(row)
    return pd.DataFrame(rows)
