"""What Ray Train + MLflow cost on top of the bare trainer: the same demo run (fixed steps) through
`python -m mupvit.train` and through `python -m orchestration.train` (one worker, local Ray), alternated.

Reports, per round and as medians: start-up (command wall time minus training wall time) and the training-time
ratio orchestrated / plain (goal <= 1.05). Run it on an otherwise idle machine:

    python benchmarks/ray_overhead.py --steps 150 --rounds 3
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from orchestration.loopback import cluster_env

REPO = Path(__file__).resolve().parent.parent


def timed(cmd: list[str], cwd: Path, env: dict[str, str]) -> tuple[float, dict]:
    t0 = time.perf_counter()
    done = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{done.stderr[-3000:]}")
    return wall, json.loads(done.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(REPO / "experiments/demo_digits.yaml"))
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--address", help="run on this Ray cluster instead of a local Ray started per run "
                                          "(start-up then excludes starting Ray)")
    parser.add_argument("--tiny", action="store_true", help="one round of 4 steps (the test suite's smoke run)")
    args = parser.parse_args()
    if args.tiny:
        args.steps, args.rounds = 4, 1
    sets = [f"train.total_steps={args.steps}", "train.epochs=null", "train.eval_at_epochs=[]",
            f"train.eval_every={args.steps}", f"train.ckpt_every={args.steps}",
            f"optim.warmup_steps={min(10, args.steps - 1)}"]
    flags = [arg for s in sets for arg in ("--set", s)]
    # A local Ray per orchestrated run (start-up included in its figure), not a cluster named in the environment,
    # unless --address names one.
    env = {k: v for k, v in cluster_env().items() if k != "RAY_ADDRESS"}
    if args.address:
        env["RAY_ADDRESS"] = args.address
    rows = []
    for r in range(args.rounds):
        with tempfile.TemporaryDirectory() as tmp:
            tmp = Path(tmp)
            plain_wall, plain = timed([sys.executable, "-m", "mupvit.train", args.config, *flags,
                                       "--set", f"train.out_dir={tmp / 'plain'}"], tmp, env)
            orch_wall, orch = timed([sys.executable, "-m", "orchestration.train", args.config, *flags,
                                     "--set", f"tracking.run_name=overhead-{r}",
                                     "--set", f"tracking.uri=sqlite:///{tmp / 'mlflow.db'}"], tmp, env)
        row = {"plain_train_s": plain["wall_s"], "orch_train_s": orch["final/wall_s"],
               "plain_startup_s": plain_wall - plain["wall_s"], "orch_startup_s": orch_wall - orch["final/wall_s"],
               "plain_img_s": plain["images_per_s"], "orch_img_s": orch["final/images_per_s"]}
        row["ratio"] = row["orch_train_s"] / row["plain_train_s"]
        rows.append(row)
        print(f"round {r + 1}: train {row['plain_train_s']:.1f} s plain vs {row['orch_train_s']:.1f} s on Ray "
              f"(ratio {row['ratio']:.3f}); start-up {row['plain_startup_s']:.1f} s vs {row['orch_startup_s']:.1f} s",
              flush=True)
    med = {k: statistics.median(r[k] for r in rows) for k in rows[0]}
    print(f"median over {args.rounds} rounds of {args.steps} steps: training-time ratio Ray/plain "
          f"{med['ratio']:.3f} ({med['plain_img_s']:.0f} vs {med['orch_img_s']:.0f} img/s); start-up "
          f"{med['plain_startup_s']:.1f} s plain, {med['orch_startup_s']:.1f} s through orchestration.train")
    return 0


if __name__ == "__main__":
    sys.exit(main())
