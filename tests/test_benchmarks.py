"""Every script in benchmarks/ runs in its tiny mode, so a benchmark that breaks fails CI (the figures themselves
are measured by hand, docs/PERFORMANCE.md)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from .helpers import cmdline

REPO = Path(__file__).resolve().parent.parent
BENCHMARKS = REPO / "benchmarks"
TINY_TESTED = {"data_throughput.py", "gpu_check.py", "mup_transfer.py", "ray_overhead.py", "sweep_efficiency.py",
               "train_throughput.py", "ray_data_throughput.py", "ray_data_demo.py"}


def tiny(script: str, *args: str, cwd: Path, env: dict[str, str] | None = None, timeout: float = 300) -> str:
    done = subprocess.run([sys.executable, str(BENCHMARKS / script), "--tiny", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stdout


def test_every_benchmark_script_has_a_tiny_run_here():
    assert {p.name for p in BENCHMARKS.glob("*.py")} == TINY_TESTED


def test_train_throughput_takes_the_identical_step_in_both_models(tmp_path):
    result = json.loads(tiny("train_throughput.py", cwd=tmp_path))
    assert result["third_step_loss_diff"] < 1e-5  # same weights, same data, same optimiser: same loss
    assert result["mupvit_images_per_s"] > 0 and result["timm_images_per_s"] > 0


def test_data_throughput(tmp_path):
    result = json.loads(tiny("data_throughput.py", "--moto", cwd=tmp_path))  # the bucket path: moto's S3 server
    assert {"floor_images_per_s_per_core", "mupvit_images_per_s_per_core", "floor_over_mupvit",
            "decode_tf_fast_images_per_s_per_core", "tf_fast_over_pillow_decode", "floor_over_loader_side",
            "device_half_batched_over_per_image", "list_over_manifest", "bucket_over_local"} <= set(result)
    assert result["cold_start_list_20_objects_s"] > 0 and result["loader_bucket_images_per_s_1_workers"] > 0


def test_gpu_check_on_cpu(ray_env, tmp_path):  # its ray_data input joins the session's shared head (RAY_ADDRESS)
    result = json.loads(tiny("gpu_check.py", cwd=tmp_path, env=ray_env).strip().splitlines()[-1])
    train = result["train"]
    assert train["third_step_loss_diff"] < 1e-5 and train["step_gflops_per_image"] > 0
    assert train["mfu"] is None  # no GPU, no peak to compare with
    for mode in ("loader", "device"):
        assert result["input"][f"{mode}_images_per_s"] > 0
        run = result["run"][mode]
        assert run["steps"] == 4 and 0 <= run["data_time_frac"] <= 1 and run["peak_gpu_memory_gib"] is None
    assert result["input"]["ray_data_images_per_s"] > 0 and result["input"]["ray_data_coordinator_cpu_frac"] >= 0
    # the two augmentation modes train on identical pixels, so they end on the identical model
    assert result["run"]["loader"]["val_acc1"] == result["run"]["device"]["val_acc1"]


def test_mup_transfer(tmp_path):
    out = tiny("mup_transfer.py", "--config", str(REPO / "experiments/demo_digits.yaml"), "--out", str(tmp_path),
               cwd=tmp_path)
    assert "best log2 lr per width" in out and (tmp_path / "results.csv").is_file()
    assert (tmp_path / "transfer.png").stat().st_size > 0


@pytest.mark.slow
def test_ray_overhead(ray_head, ray_env, tmp_path):  # on the session's shared head: no Ray start-up per run
    out = tiny("ray_overhead.py", "--address", ray_head.address, cwd=tmp_path, env=ray_env)
    assert "training-time ratio Ray/plain" in out


@pytest.mark.slow
def test_ray_data_throughput(ray_env, tmp_path):  # the input tasks on the session's shared head (RAY_ADDRESS)
    result = json.loads(tiny("ray_data_throughput.py", cwd=tmp_path, env=ray_env).strip().splitlines()[-1])
    assert result["local_images_per_s"] > 0 and result["ray_data_images_per_s"] > 0
    assert result["ray_data_cost_over_local"] > 0 and 0 <= result["ray_data_trainer_cpu_frac"]
    # the executor runs in Ray Data's coordinator actor (a tiny run may use less than one clock tick of it)
    assert result["ray_data_coordinator_cpu_frac"] >= 0 and result["ray_data_trainer_cpu_frac"] >= 0


@pytest.mark.slow
def test_ray_data_throughput_on_cpu_nodes(tmp_path):  # a cluster of its own: a head and 2 nodes on this machine
    result = json.loads(tiny("ray_data_throughput.py", "--nodes", "2", cwd=tmp_path).strip().splitlines()[-1])
    assert result["1_node_images_per_s"] > 0 and result["2_nodes_images_per_s"] > 0 and result["speedup"] > 0
    # its nodes (orchestration/local_node.py: temporary directories /tmp/rayn*) are gone with it
    left = [pid for pid in (int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit())
            if "/tmp/rayn" in cmdline(pid)]
    assert not left, [cmdline(pid)[:200] for pid in left]


@pytest.mark.slow
def test_ray_data_demo_matches_the_local_demo(ray_env, tmp_path):  # --tiny: both runs on the shared head
    result = json.loads(tiny("ray_data_demo.py", cwd=tmp_path, env=ray_env, timeout=600).strip().splitlines()[-1])
    assert result["parameters_identical"] and result["numbers_identical"], result
    assert result["ray_data"]["final/val/acc1"] == result["local"]["final/val/acc1"] > 0


@pytest.mark.slow
def test_sweep_efficiency(ray_env, tmp_path):  # its sweeps join the shared head through RAY_ADDRESS
    out = tiny("sweep_efficiency.py", "--workdir", str(tmp_path), cwd=tmp_path, env=ray_env, timeout=600)
    assert "trial-steps: grid" in out and "best lr within one grid step in 1/1" in out
