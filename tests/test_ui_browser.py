"""The MLflow UI of dashboards.ui in a real headless Chromium: a store with a tiny real run and a tiny sweep (parent +
two trials), the experiment page lists the runs (trials under their sweep), the tiny run's page shows its
acc1_at_<N>ep result and its config.yaml artifact. Screenshots are kept under runs/test-artifacts/ui_browser/."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import requests
from mlflow.tracking import MlflowClient

from dashboards.ui import TRAINING_VIEW, free_port, serve
from mupvit.train import run
from orchestration.tracking import MlflowLogger, open_run

from .helpers import tiny_launch

REPO = Path(__file__).resolve().parent.parent
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
EXPERIMENT = "ui-test"
RESULT_EPOCHS = 0.1  # digits: 1438 train images, batch 32 -> step 4 of 8
RESULT_METRIC = "acc1_at_0.1ep"
UI_WAIT_MS = 60_000  # a cold React bundle on a busy 2-core machine

pytestmark = pytest.mark.slow


def train(uri: str, launch, run_key: str, **open_args) -> str:
    """A real training run recorded the way orchestration does it (see orchestration/sweep_trial.py)."""
    client = MlflowClient(uri)
    run_id, _ = open_run(client, launch, run_key, REPO, **open_args)
    run(launch.run, MlflowLogger(uri, run_id, launch=launch.sections()))
    client.set_terminated(run_id, "FINISHED")
    return run_id


def build_store(folder: Path, digits_root: Path) -> dict[str, str]:
    """The tiny run and the tiny sweep; returns run names and ids."""
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    client = MlflowClient(uri)

    def config(name: str, **overrides):
        return tiny_launch(digits_root, folder / "runs" / name, **{"tracking.experiment": EXPERIMENT, **overrides})

    ids = {"uri": uri, "tiny_run": train(uri, config("tiny", **{"train.eval_at_epochs": [RESULT_EPOCHS]}), "tiny-run")}
    sweep = config("sweep")
    ids["parent"], _ = open_run(client, sweep, "sweep:tiny", REPO, extra_tags={"sweep": "tiny", "sweep_role": "parent"})
    for trial, lr in (("trial_a", 1e-3), ("trial_b", 3e-3)):
        trial_cfg = config(trial, **{"optim.lr": lr, "train.total_steps": 4, "train.eval_every": 4})
        ids[trial] = train(uri, trial_cfg, f"tiny/{trial}", parent_run_id=ids["parent"],
                           extra_tags={"sweep": "tiny", "trial_id": trial})
    client.set_terminated(ids["parent"], "FINISHED")
    ids["experiment"] = client.get_experiment_by_name(EXPERIMENT).experiment_id
    return ids


def test_ui_shows_runs_and_results(tmp_path: Path, digits_root: Path) -> None:
    # Fail, not skip: a UI nobody looked at is the regression this test exists for.
    if not CHROMIUM.is_file():
        pytest.fail(f"Chromium is not installed at {CHROMIUM}: install it with "
                    "`sudo apt-get install -y chromium` (Debian/Ubuntu), then rerun")
    try:
        from playwright.sync_api import expect, sync_playwright
    except ImportError:
        pytest.fail("the playwright package is missing: `.venv/bin/pip install playwright==1.65.2` "
                    "(never `playwright install`: the test uses the system Chromium)")
    ids = build_store(tmp_path, digits_root)
    shots = tmp_path / "screenshots"
    shots.mkdir()
    experiment_page = f"#/experiments/{ids['experiment']}"
    with serve(ids["uri"], port=free_port()) as url, sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1600, "height": 1000})
        try:
            page.goto(f"{url}/{experiment_page}?{TRAINING_VIEW}")  # redirects to the experiment's runs table
            for name in ("tiny-run", "sweep:tiny"):
                expect(page.get_by_text(name, exact=True).first).to_be_visible(timeout=UI_WAIT_MS)
            # Trials are nested under their sweep's row: expand it.
            parent_row = page.get_by_role("row").filter(has_text="sweep:tiny")
            parent_row.locator("[col-id='attributes.`Run Name`'] button").click()
            for name in ("tiny/trial_a", "tiny/trial_b"):
                expect(page.get_by_text(name, exact=True).first).to_be_visible(timeout=UI_WAIT_MS)
            page.screenshot(path=shots / "experiment.png", full_page=True)

            run_page = f"{url}/{experiment_page}/runs/{ids['tiny_run']}"
            page.goto(f"{run_page}?{TRAINING_VIEW}")
            result_row = page.get_by_role("row").filter(has_text=RESULT_METRIC)  # a row of the metrics table
            expect(result_row).to_be_visible(timeout=UI_WAIT_MS)
            result_row.scroll_into_view_if_needed()
            page.screenshot(path=shots / "tiny_run.png")

            page.goto(f"{run_page}/artifacts?{TRAINING_VIEW}")
            expect(page.get_by_text("config.yaml", exact=True).first).to_be_visible(timeout=UI_WAIT_MS)
            page.screenshot(path=shots / "tiny_run_artifacts.png", full_page=True)
        except Exception:
            page.screenshot(path=shots / "failure.png", full_page=True)  # what the page showed instead
            raise
        finally:
            browser.close()
            kept = REPO / "runs" / "test-artifacts" / "ui_browser"
            shutil.rmtree(kept, ignore_errors=True)
            shutil.copytree(shots, kept)
            print(f"screenshots: {shots} (copied to {kept})")
    with pytest.raises(requests.ConnectionError):  # the server is gone with the context
        requests.get(f"{url}/health", timeout=5)
