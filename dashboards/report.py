"""The comparison report: every training run next to the paper's number, the paper's ablation table, the µP
learning-rate transfer of each sweep, training curves on an epoch axis and the coordinate check, as one
self-contained HTML page (runs/report/report.html) with each table as CSV and Markdown and each figure as PNG.

    python -m dashboards.report                                   # all experiments of ./mlflow.db
    python -m dashboards.report --experiment demo demo_mup_transfer --coord-check runs/coord --out runs/report

A report that includes a sweep is also logged to the sweep's parent run (artifacts report/).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from dashboards.coord import coord_check_figure
from dashboards.curves import training_curves
from dashboards.figures import plot_curves, plot_transfer
from dashboards.html import Section, render, table_markdown
from dashboards.runs import Histories, ReportError, fetch_runs, open_store, store_uri
from dashboards.sweeps import sweep_trials
from dashboards.tables import ABLATIONS, ablation_table, reproduction_table, training_runs
from mupvit.errors import ConfigError
from mupvit.outputs import check_writable
from orchestration.sweep_results import best_lr_table

MAX_CURVES = 8  # more lines than this make the curves figure unreadable
# What a report writes besides report.html; an earlier report's copies are removed first, so nothing stale is shown
# or attached to a sweep (other files in the folder are left alone).
OUTPUTS = ("figures/mup_transfer_*.png", "figures/training_curves.png", "figures/coord_check.png",
           "tables/reproduction.*", "tables/ablations.*", "tables/mup_trials.*", "tables/mup_best_lr.*",
           "tables/coord_slopes.*")


def progress(message: str) -> None:
    print(f"report: {message}", file=sys.stderr, flush=True)


class Report:
    """Where the report's files go: tables (CSV + Markdown) in tables/, figures (PNG) in figures/."""

    def __init__(self, out: Path) -> None:
        self.out, self.tables, self.figures = out, out / "tables", out / "figures"
        self.tables.mkdir(parents=True, exist_ok=True)
        self.figures.mkdir(parents=True, exist_ok=True)
        for pattern in OUTPUTS:
            for stale in out.glob(pattern):
                stale.unlink()

    def table(self, frame: pd.DataFrame, name: str) -> None:
        frame.to_csv(self.tables / f"{name}.csv", index=False)
        (self.tables / f"{name}.md").write_text(table_markdown(frame))


def reproduction_section(report: Report, runs: pd.DataFrame, histories: Histories) -> Section:
    section = Section("reproduction", "1. Reproduction runs vs the paper",
                      "One row per training run (sweep trials are in section 3). Top-1 and top-5 are the headline "
                      "evaluator's accuracy at each N-epoch-equivalent step round(train images x N / batch), so runs "
                      "of any batch size compare at the same N. 'paper top-1' is the published ImageNet-1k number "
                      "for exactly this setting (tag mupvit.paper_acc1, blank where the paper gives none); 'diff vs "
                      "paper' is our 90-epoch top-1 minus it, in percentage points. 'departs from the paper' lists "
                      "the settings in which the run's config differs from the paper's recipe (head and epochs "
                      "aside), so a number can be read against 76.7 at a glance. 'ReaL' and 'v2' are the final "
                      "top-1 of the run's ImageNet-ReaL and ImageNet-v2 evaluators ('—': the run had none) beside "
                      "the paper's (Beyer et al. 2022, Table 2: 83.1 and 64.2 for the 90-epoch recipe with the MLP "
                      "head; blank where the paper gives none).")
    table = reproduction_table(runs, histories)
    if table.empty:
        section.note("No training runs outside sweeps were selected.")
        return section
    report.table(table, "reproduction")
    section.table(table)
    return section


def ablation_section(report: Report, runs: pd.DataFrame) -> Section:
    section = Section("ablations", "2. Ablations in the paper's layout",
                      "Rows: the recipe and each single change to it (tag 'ablation'); columns: top-1 (%) at the "
                      "run's final epoch-equivalent, one column per training budget, then the paper's numbers "
                      "(Beyer et al. 2022, Table 1). Of repeated runs of a cell the latest counts.")
    table = ablation_table(runs)
    if table.empty:
        section.note("No ablation runs (runs tagged 'ablation', e.g. " + ", ".join(ABLATIONS) + ") were selected.")
        return section
    report.table(table, "ablations")
    section.table(table)
    return section


def transfer_section(report: Report, runs: pd.DataFrame, client: MlflowClient, histories: Histories,
                     log: Callable[[str], None]) -> Section:
    section = Section("mup-transfer", "3. µP learning-rate transfer",
                      "Each sweep trial trains a model of one width at one learning rate. Under the standard "
                      "parametrization (SP) the best learning rate drifts as the model widens; under µP it should "
                      "stay put, so a small proxy model's best lr carries over to the full width. Diverged trials "
                      "have no value and are drawn as crosses.")
    trials = sweep_trials(runs, client, histories)
    if trials.empty:
        section.note("No sweep trials (child runs of a sweep parent) were selected.")
        return section
    best = best_lr_table(trials)
    report.table(trials, "mup_trials")
    report.table(best, "mup_best_lr")
    for sweep, group in trials.groupby("sweep", sort=True):
        png = report.figures / f"mup_transfer_{safe_name(sweep)}.png"
        log(f"plotting sweep {sweep}: {len(group)} trial(s), {int(group['diverged'].sum())} diverged -> {png.name}")
        plot_transfer(group, best[best["sweep"] == sweep], png)
        section.figure(png, f"Sweep '{sweep}': final metric vs log2 learning rate, one line per width; "
                            "the star marks each width's best learning rate.")
    section.table(best, "Best learning rate per (parametrization, width) (every trial: tables/mup_trials.csv)")
    return section


def curve_runs(runs: pd.DataFrame, curve_ids: list[str] | None, log: Callable[[str], None]) -> pd.DataFrame:
    """The runs named by --curves, else the most recent MAX_CURVES training runs."""
    if curve_ids:
        missing = [r for r in curve_ids if r not in set(runs["run_id"])]
        if missing:
            raise ReportError(f"--curves: run(s) {', '.join(missing)} are not among the report's runs; pick run ids "
                              "from the selected experiments (or drop --run / --experiment filters)")
        return runs[runs["run_id"].isin(curve_ids)]
    training = training_runs(runs)
    if len(training) > MAX_CURVES:
        log(f"curves: the {MAX_CURVES} most recent training runs (choose others with --curves RUN_ID ...)")
    return training.sort_values("start_time").tail(MAX_CURVES)


def curves_section(report: Report, chosen: pd.DataFrame, histories: Histories) -> Section:
    section = Section("curves", "4. Training curves",
                      "Train loss and eval top-1 against epochs = step x batch size / train images: runs of "
                      "different batch sizes share the axis.")
    curves = training_curves(chosen, histories)
    if curves.empty:
        section.note("No curves: the chosen runs logged no train/loss with a batch size and train-set size.")
        return section
    png = report.figures / "training_curves.png"
    plot_curves(curves, png)
    section.figure(png, f"{curves['run_id'].nunique()} run(s); each line's legend gives its global batch size.")
    return section


def coord_section(report: Report, folder: Path | None) -> Section:
    section = Section("coord-check", "5. Coordinate check",
                      "Mean |activation| of each layer type against width after a few training steps (python -m "
                      "mupvit.coord_check). Under µP the curves are flat in width (slope 0); under SP the logits "
                      "and the updates grow with it.")
    if folder is None:
        section.note("No coordinate check given: run `python -m mupvit.coord_check experiments/demo_digits.yaml "
                     "--out runs/coord` and pass --coord-check runs/coord.")
        return section
    png = report.figures / "coord_check.png"
    slopes = coord_check_figure(Path(folder), png)
    section.figure(png, f"Coordinate check from {folder}.")
    if not slopes.empty:
        report.table(slopes, "coord_slopes")
        section.table(slopes, "log-log slope of mean |activation| vs width at the last step (0 = width-independent)")
    return section


def safe_name(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)


def log_to_sweeps(client: MlflowClient, report: Report, runs: pd.DataFrame, log: Callable[[str], None]) -> None:
    """Attach the report (report.html, figures/, tables/) to every sweep parent whose trials it shows."""
    parents = set(runs.loc[runs["role"] == "sweep_parent", "run_id"])
    parents |= set(runs.loc[runs["role"] == "sweep_trial", "parent_run_id"].dropna())
    for parent in sorted(parents):
        client.log_artifact(parent, str(report.out / "report.html"), "report")
        client.log_artifacts(parent, str(report.figures), "report/figures")
        client.log_artifacts(parent, str(report.tables), "report/tables")
        log(f"logged the report to sweep parent run {parent} (artifacts report/)")


def build_report(uri: str, out: Path, experiments: list[str] | None = None, run_ids: list[str] | None = None,
                 curves: list[str] | None = None, coord_check: Path | None = None,
                 log: Callable[[str], None] = progress) -> Path:
    """Write out/report.html (plus tables/ and figures/) for the runs of `uri`; return the HTML file's path.
    Raises ReportError for a missing store, an unknown experiment or run, or no runs; ConfigError for an `out`
    where the report cannot be written."""
    out = Path(out).resolve()
    for folder in (out, out / "tables", out / "figures"):  # before any reading: a report is minutes of work
        check_writable(folder, "--out", "nothing was read or written")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # reading sweep files: no progress bars
    client = open_store(uri)
    report = Report(out)
    coord = coord_section(report, coord_check)  # first: a wrong --coord-check fails before any slow work
    log(f"reading runs from {uri}")
    runs = fetch_runs(client, experiments, run_ids)
    chosen_curves = curve_runs(runs, curves, log)
    roles = runs["role"].value_counts()
    log(f"{len(runs)} run(s): {roles.get('training', 0)} training, {roles.get('sweep_parent', 0)} sweep parent(s), "
        f"{roles.get('sweep_trial', 0)} sweep trial(s)")
    histories = Histories(client)
    log("tables: reproduction and ablations")
    sections = [reproduction_section(report, runs, histories), ablation_section(report, runs)]
    log("µP transfer")
    sections.append(transfer_section(report, runs, client, histories, log))
    log("training curves")
    sections.append(curves_section(report, chosen_curves, histories))
    sections.append(coord)
    meta = [f"Generated {datetime.now():%Y-%m-%d %H:%M} from {uri}",
            f"Experiments: {', '.join(sorted(runs['experiment'].unique()))}; {len(runs)} run(s)"]
    page = report.out / "report.html"
    page.write_text(render("mup-vit comparison report", meta, sections))
    log_to_sweeps(client, report, runs, log)
    return page


def summary_scope(path: Path) -> tuple[str, list[str]]:
    """(store, [experiment]) of the run whose JSON summary is at `path` (its tracking_uri and mlflow_run_id)."""
    try:
        summary = json.loads(path.read_text().strip().splitlines()[-1])
        uri, run_id = summary["tracking_uri"], summary["mlflow_run_id"]
    except (OSError, IndexError, KeyError, TypeError, json.JSONDecodeError) as err:
        raise ReportError(f"--summary {path}: not the JSON summary of a tracked run ({type(err).__name__}: {err}); "
                          "pass the --summary-json file of python -m orchestration.train") from None
    client = open_store(uri)
    try:
        experiment_id = client.get_run(run_id).info.experiment_id
    except MlflowException as err:
        raise ReportError(f"--summary {path}: run {run_id} is not in {uri}") from err
    return uri, [client.get_experiment(experiment_id).name]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dashboards.report", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tracking-uri", help="MLflow store (default: $MLFLOW_TRACKING_URI, else ./mlflow.db)")
    parser.add_argument("--experiment", nargs="+", metavar="NAME", help="experiments to include (default: all)")
    parser.add_argument("--summary", type=Path, metavar="JSON",
                        help="the summary a run command wrote (--summary-json): report that run's store and experiment")
    parser.add_argument("--run", nargs="+", metavar="RUN_ID", help="only these runs (a sweep parent brings its trials)")
    parser.add_argument("--coord-check", type=Path, metavar="DIR",
                        help="output folder of python -m mupvit.coord_check (coord.csv, coord.png)")
    parser.add_argument("--curves", nargs="+", metavar="RUN_ID",
                        help=f"runs whose training curves to draw (default: up to {MAX_CURVES} training runs)")
    parser.add_argument("--out", type=Path, default=Path("runs/report"), help="output folder (default runs/report)")
    args = parser.parse_args(argv)
    try:
        uri, experiments = store_uri(args.tracking_uri), args.experiment
        if args.summary:
            uri, experiments = summary_scope(args.summary)
        page = build_report(uri, args.out, experiments, args.run, args.curves, args.coord_check)
    except (ReportError, ConfigError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(page)
    return 0


if __name__ == "__main__":
    sys.exit(main())
