"""The digits demo (experiments/demo_digits.yaml) twice through orchestration.train: with the local loader on a
local Ray (or the cluster of RAY_ADDRESS), and with data.pipeline ray_data on a 2-node cluster on this machine: a
head of 2 CPUs labelled node-type=trainer for the worker (cluster.worker_labels) and a node of 1 CPU labelled
node-type=cpu for the input tasks (cluster.data_labels; orchestration/local_node.py), tracked by an `mlflow server`
on 127.0.0.1 (dashboards.ui.serve: a cluster of several nodes refuses a local sqlite store). One JSON line: each
run's final numbers and wall time, and whether every final number and every parameter of the two final models are
bit-identical (exit 1 if not).

    python benchmarks/ray_data_demo.py            # the whole demo: ~5 + ~8 min on 2 cores
    python benchmarks/ray_data_demo.py --tiny     # 8 steps of it: the suite's smoke run (below)

--tiny runs the ray_data half on the cluster of RAY_ADDRESS, one worker of 1 CPU, and the local half as the bare
trainer in this process with one thread: what a Ray Train worker of 1 CPU computes, bit for bit (tests/conftest.py's
reference run relies on the same), without a second orchestrated run's start-up.

Ray refuses extra nodes in its single-machine mode, so this head listens beyond loopback, with token auth on
(orchestration/loopback.py).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from mlflow.tracking import MlflowClient

from dashboards.ui import serve
from mupvit.config import load_config
from mupvit.data.digits import build_digits
from mupvit.logger import ConsoleLogger
from mupvit.train import run
from orchestration.local_head import start_head, stop_head
from orchestration.local_node import start_node, stop_node
from orchestration.ports import free_port, free_port_block
from orchestration.tracking import final_metrics

REPO = Path(__file__).resolve().parent.parent
DEMO = REPO / "experiments" / "demo_digits.yaml"
TRAINER, INPUT = {"node-type": "trainer"}, {"node-type": "cpu"}
# One CPU a worker: on the suite's head of 2 CPUs the other is the input's.
TINY = ["train.epochs=null", "train.total_steps=8", "train.eval_every=8", "train.eval_at_epochs=[]",
        "train.ckpt_every=8", "train.log_every=4", "optim.warmup_steps=2", "cluster.cpus_per_worker=1"]


def train(folder: Path, env: dict[str, str], sets: list[str]) -> dict:
    """orchestration.train of the demo in `folder`; its summary, with the run's wall time."""
    folder.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "orchestration.train", str(DEMO),
                           *(arg for s in sets for arg in ("--set", s))], cwd=folder, env=env,
                          capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"the {folder.name} run failed ({done.returncode}):\n{done.stderr[-4000:]}")
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    return {**summary, "model_file": str(Path(summary["checkpoint"]) / "checkpoint.pt"),
            "run_wall_s": time.perf_counter() - start}


def train_here(folder: Path, sets: list[str]) -> dict:
    """The demo through `mupvit.train.run` in this process with one thread (a Ray Train worker of 1 CPU): its
    final/... metrics, as orchestration.train's summary has them, its checkpoint file and wall time."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    start = time.perf_counter()
    try:
        summary = run(load_config(DEMO, [*sets, f"train.out_dir={folder}"]), ConsoleLogger())
    finally:
        torch.set_num_threads(threads)
    return {**final_metrics(summary), "model_file": summary["checkpoint"], "run_wall_s": time.perf_counter() - start}


def on_two_nodes(folder: Path, sets: list[str]) -> dict:
    """The demo with ray_data on the 2-node cluster (module docstring)."""
    print("ray_data: starting a head (the trainer's node) and a CPU node", file=sys.stderr, flush=True)
    head = start_head(num_cpus=2, num_gpus=0, ports=free_port_block(), loopback_only=False, labels=TRAINER)
    try:
        node = start_node(head, 1, free_port_block(), INPUT)
        try:
            folder.mkdir(parents=True, exist_ok=True)
            store = f"sqlite:///{folder / 'mlflow.db'}"
            MlflowClient(store).search_experiments()  # creates the store, which the UI's server opens only if it exists
            with serve(store, port=free_port()) as uri:
                labels = [f"cluster.worker_labels={json.dumps(TRAINER)}", f"cluster.data_labels={json.dumps(INPUT)}"]
                return train(folder, {**head.env(), "MLFLOW_TRACKING_URI": uri},
                             [*sets, "data.pipeline=ray_data", *labels, "tracking.run_name=ray_data"])
        finally:
            stop_node(node)
    finally:
        stop_head(head)


def final_model(summary: dict) -> dict[str, torch.Tensor]:
    return torch.load(summary["model_file"], weights_only=True)["model"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true",
                        help="8 steps of the demo: ray_data on the cluster of RAY_ADDRESS (no second node: the "
                             "2-node cluster alone takes a minute or two to start in the suite), local as the bare "
                             "trainer in this process (the test suite's smoke run)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="ray-data-demo-") as tmp:
        root = build_digits(Path(tmp) / "digits")
        sets = [f"data.root={root}", *(TINY if args.tiny else [])]
        env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
        if args.tiny:
            print("local: the demo in this process (one thread)", file=sys.stderr, flush=True)
            local = train_here(Path(tmp) / "local", sets)
        else:
            print(f"local: the demo on {env.get('RAY_ADDRESS', 'a local Ray')}", file=sys.stderr, flush=True)
            local = train(Path(tmp) / "local", env, [*sets, "tracking.run_name=local"])
        ray_data = (train(Path(tmp) / "ray_data", env, [*sets, "data.pipeline=ray_data", "tracking.run_name=ray_data"])
                    if args.tiny else on_two_nodes(Path(tmp) / "ray_data", sets))
        a, b = final_model(local), final_model(ray_data)
        identical = a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    timing = ("final/wall_s", "final/images_per_s")
    numbers = sorted(k for k in local if k.startswith("final/") and k not in timing)
    same_numbers = all(local[k] == ray_data.get(k) for k in numbers)
    print(json.dumps({"local": {k: local[k] for k in [*numbers, *timing, "run_wall_s"]},
                      "ray_data": {k: ray_data[k] for k in [*numbers, *timing, "run_wall_s"]},
                      "numbers_identical": same_numbers, "parameters_identical": identical}))
    return 0 if identical and same_numbers else 1


if __name__ == "__main__":
    sys.exit(main())
