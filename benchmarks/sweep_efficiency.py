"""Optuna + ASHA vs the full grid on the demo µP sweep: compute used (trial-steps) and whether the cheaper search
finds the grid's best learning rate (within one log2 grid step) for each (parametrization, width).

Runs the grid sweep (a finished one is restored, not rerun) and an Optuna TPE + ASHA variant of it with half the
trials, both through `python -m orchestration.sweep`, then compares their MLflow results:

    python benchmarks/sweep_efficiency.py                       # ~35 min on 2 CPU cores
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent


def run_sweep(path: Path, workdir: Path) -> dict:
    """`python -m orchestration.sweep` in `workdir` (its ray_results/ and mlflow.db); the summary it prints."""
    done = subprocess.run([sys.executable, "-m", "orchestration.sweep", str(path)], cwd=workdir, text=True,
                          stdout=subprocess.PIPE)
    if done.returncode != 0:
        raise SystemExit(f"sweep {path} failed (exit {done.returncode})")
    return json.loads(done.stdout.strip().splitlines()[-1])


def best_log2(summary: dict) -> dict[tuple[str, int], float]:
    """(parametrization, width) -> log2 of the best lr, from the sweep summary (orchestration.sweep_results)."""
    return {(b["parametrization"], b["width"]): b["log2 lr"] for b in summary["best"] if b["best lr"] is not None}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sweep", default=str(REPO / "experiments/sweeps/demo_mup_transfer.yaml"))
    parser.add_argument("--samples", type=int, default=15, help="Optuna trials (the grid has 30)")
    parser.add_argument("--grace", type=int, default=30, help="ASHA grace period in steps")
    parser.add_argument("--reduction", type=float, default=2.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workdir", type=Path, default=REPO, help="where the sweeps keep ray_results/ and mlflow.db")
    parser.add_argument("--tiny", action="store_true",
                        help="a 1-trial grid of 6 steps and 1 Optuna trial (the test suite's smoke run: every "
                             "line of this script, at the least trial start-ups)")
    args = parser.parse_args()

    grid_spec = yaml.safe_load(Path(args.sweep).read_text())
    grid_spec["base"] = str((REPO / grid_spec["base"]).resolve())
    if args.tiny:
        grid_spec.update(name=f"tiny_{grid_spec['name']}", space={
            "model.parametrization": {"grid": ["mup"]}, "model.width": {"grid": [32]},
            "optim.lr": {"log2_grid": [-8]}})
        grid_spec["overrides"].update({"train.total_steps": 6, "optim.warmup_steps": 2, "train.ckpt_every": 3})
        args.samples, args.grace = 1, 2
    spec = {**grid_spec, "name": f"{grid_spec['name']}_optuna_asha_s{args.seed}", "num_samples": args.samples,
            "search": {"algorithm": "optuna", "seed": args.seed},
            "scheduler": {"type": "asha", "grace_period": args.grace, "reduction_factor": args.reduction}}
    with tempfile.TemporaryDirectory() as tmp:
        paths = Path(tmp) / "grid.yaml", Path(tmp) / "optuna_asha.yaml"
        for path, content in zip(paths, (grid_spec, spec), strict=True):
            path.write_text(yaml.safe_dump(content, sort_keys=False))
        grid = run_sweep(paths[0], args.workdir)
        cheap = run_sweep(paths[1], args.workdir)

    grid_best, cheap_best = best_log2(grid), best_log2(cheap)
    print(f"\n{'group':>12} {'grid best':>10} {'optuna+asha':>12}  within 1 step")
    hits = 0
    for key in sorted(grid_best):
        found = cheap_best.get(key)
        ok = found is not None and abs(found - grid_best[key]) <= 1
        hits += ok
        shown = "not tried" if found is None else f"{found:g}"
        print(f"{key[0]:>4} w{key[1]:<6} {grid_best[key]:>10g} {shown:>12}  {'yes' if ok else 'no'}")
    ratio = cheap["trial_steps"] / grid["trial_steps"]
    print(f"\ntrial-steps: grid {grid['trial_steps']} ({grid['trials']} trials), Optuna+ASHA {cheap['trial_steps']} "
          f"({cheap['trials']} trials): ratio {ratio:.2f}; best lr within one grid step in {hits}/{len(grid_best)} "
          "(parametrization, width) groups")
    return 0


if __name__ == "__main__":
    sys.exit(main())
