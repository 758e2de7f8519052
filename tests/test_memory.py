"""The memory estimate (mupvit/memory.py): the parameter count is exact, the real recipes fit their devices, and a
run that fits nowhere (or not on this host) exits 2 with one line naming the key, before anything is allocated,
from `mupvit.train` and from `orchestration.train` (before any cluster work)."""

from __future__ import annotations

from pathlib import Path

import pytest

from mupvit.config import ConfigError, load_config
from mupvit.memory import check_memory, param_count, state_bytes, step_bytes
from mupvit.models.build import build_model
from mupvit.train import main

from .helpers import tiny_config

REPO = Path(__file__).resolve().parent.parent
GPU_80GB = 80 * 10**9


@pytest.mark.parametrize("overrides", [
    {}, {"model.posemb": "learn", "model.pool": "tok", "model.head": "mlp"},
    {"model.posemb": "none", "model.num_classes": 7, "model.depth": 3, "model.patch_size": 8},
    {"model.variant": "S/16", "data.image_size": 224, "data.eval_resize": 256, "model.num_classes": 1000,
     **dict.fromkeys(["model.width", "model.depth", "model.mlp_dim", "model.num_heads", "model.patch_size"])},
])
def test_the_parameter_count_is_the_models(digits_root, tmp_path, overrides):
    cfg = tiny_config(digits_root, tmp_path, **overrides)
    assert param_count(cfg) == sum(p.numel() for p in build_model(cfg).parameters())


@pytest.mark.parametrize("variant", ["S/16", "B/16", "L/16"])
@pytest.mark.parametrize("precision", ["bf16", "fp32"])
def test_the_recipe_at_batch_1024_fits_80gb_gpus_with_its_per_device_batch(variant, precision):
    """Batch 1024 over 8 GPUs (128 each), as big_vision splits it over 8 devices; S/16 also on one GPU in bf16,
    the shipped config."""
    cfg = load_config(REPO / "experiments/vit_s16_i1k_90ep.yaml",
                      [f"model.variant={variant}", f"train.precision={precision}", "train.devices=8"])
    check_memory(cfg, GPU_80GB, "an 80 GB GPU has")
    check_memory(load_config(REPO / "experiments/vit_s16_i1k_90ep.yaml"), GPU_80GB, "an 80 GB GPU has")
    assert state_bytes(cfg) + step_bytes(cfg) > 10**9  # not vacuous: gigabytes, compared


def test_b16_at_batch_1024_on_one_80gb_gpu_in_fp32_is_refused_naming_the_batch():
    cfg = load_config(REPO / "experiments/vit_s16_i1k_90ep.yaml", ["model.variant=B/16", "train.precision=fp32"])
    with pytest.raises(ConfigError, match=r"^train.batch_size=1024: .* at 1024 images per device .* has 80 GB\."):
        check_memory(cfg, GPU_80GB, "an 80 GB GPU has")


@pytest.mark.parametrize("overrides, key", [
    (["model.width=1000000"], "model.width=1000000 (depth 1, mlp_dim 64)"),
    (["data.image_size=1000000", "data.eval_resize=1000000"], "data.image_size=1000000 (62500000000 tokens"),
    (["train.batch_size=1000000000"], "train.batch_size=1000000000"),
])
def test_a_run_that_fits_no_device_is_refused_before_anything_naming_the_key(digits_root, tmp_path, capsys,
                                                                              overrides, key):
    config = tmp_path / "run.yaml"
    config.write_text(tiny_config(digits_root, tmp_path / "run").to_yaml())
    assert main([str(config), *(arg for o in overrides for arg in ("--set", o))]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {config}: {key}") and err.count("\n") == 1
    assert "no single device has more than 4.4 TB" in err and not (tmp_path / "run").exists()


def test_a_run_larger_than_this_host_is_refused_at_setup(digits_root, tmp_path, capsys):
    """Fits some machine (~3 TB, under 4 TiB), not this one: refused against the host's RAM before the data is
    read."""
    config = tmp_path / "run.yaml"
    config.write_text(tiny_config(digits_root, tmp_path / "run", **{"train.batch_size": 100_000_000}).to_yaml())
    assert main([str(config)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: train.batch_size=100000000: ") and "this host's RAM is" in err
    assert err.count("\n") == 1 and not (tmp_path / "run").exists()


def test_orchestration_refuses_it_before_any_cluster_work(digits_root, tmp_path, capsys):
    from orchestration.train import main as orchestration_main

    config = tmp_path / "run.yaml"
    config.write_text(tiny_config(digits_root, tmp_path / "run").to_yaml())
    assert orchestration_main([str(config), "--set", "model.width=1000000",
                               "--set", f"cluster.storage_path={tmp_path / 'ray_results'}"]) == 2
    err = capsys.readouterr().err
    assert "model.width=1000000" in err and err.count("\n") == 1 and not (tmp_path / "ray_results").exists()
