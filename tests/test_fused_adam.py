"""The fused Adam kernel takes the same big_vision update as the foreach one: independent weight decay, the
bfloat16 first moment, µP lr multipliers; it is the default where torch has it, and checkpoints cross paths."""

from __future__ import annotations

import pytest
import torch

from mupvit.config import ModelConfig, OptimConfig
from mupvit.models.vit import ViT
from mupvit.optim import BigVisionAdam, clip_by_global_norm, fused_supported, model_param_groups

STEPS = 20
MODEL = ModelConfig(variant=None, width=32, depth=1, num_heads=2, mlp_dim=64, patch_size=4, num_classes=10,
                    parametrization="mup", base_width=16)  # a hidden lr multiplier of 0.5 beside 1.0


def trained(fused: bool, cfg: OptimConfig, steps: int = STEPS) -> tuple[ViT, BigVisionAdam]:
    """A small ViT after `steps` clipped Adam updates with the same random gradients on either path. (Real
    gradients would not test the kernel: Adam scales the float noise of a zero gradient, such as the attention key
    bias's, to a full step, so an ulp between the paths becomes lr after a few steps.)"""
    torch.manual_seed(0)
    model = ViT(MODEL, 16)
    optimizer = BigVisionAdam(model_param_groups(model), cfg, total_steps=100, fused=fused)
    gen = torch.Generator().manual_seed(1)
    for step in range(steps):
        for p in model.parameters():
            p.grad = torch.randn(p.shape, generator=gen)
        clip_by_global_norm(model.parameters(), cfg.clip_norm)
        optimizer.step(step)
        optimizer.zero_grad()
    return model, optimizer


def moments(optimizer: BigVisionAdam) -> list[torch.Tensor]:
    return [t for state in optimizer.optimizer.state.values() for t in (state["exp_avg"], state["exp_avg_sq"])]


@pytest.mark.parametrize(("weight_decay", "mu_dtype"), [(0.0, "float32"), (0.1, "float32"), (0.1, "bfloat16")])
def test_fused_and_foreach_take_the_same_steps(weight_decay, mu_dtype):
    cfg = OptimConfig(lr=1e-2, weight_decay=weight_decay, warmup_steps=2, mu_dtype=mu_dtype)
    (fused, fused_opt), (foreach, foreach_opt) = trained(True, cfg), trained(False, cfg)
    assert fused_opt.optimizer.param_groups[0]["fused"] and foreach_opt.optimizer.param_groups[0]["foreach"]
    # float32 kernels that round in a different order: an ulp or so apart after 20 steps
    for name, p in fused.named_parameters():
        torch.testing.assert_close(p, dict(foreach.named_parameters())[name], rtol=1e-6, atol=1e-6, msg=name)
    for a, b in zip(moments(fused_opt), moments(foreach_opt), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-9)
    if mu_dtype == "bfloat16":  # the fused path keeps the first moment at bfloat16 values too
        assert all(torch.equal(s["exp_avg"], s["exp_avg"].bfloat16().float())
                   for s in fused_opt.optimizer.state.values())
    torch.manual_seed(0)
    start = ViT(MODEL, 16)
    assert all(not torch.equal(p, q) for p, q in zip(fused.parameters(), start.parameters(), strict=True))


def test_fused_is_the_default_where_torch_has_it():
    model = ViT(MODEL, 16)
    optimizer = BigVisionAdam(model_param_groups(model), OptimConfig(), total_steps=100)
    assert fused_supported(torch.device("cpu")) and fused_supported(torch.device("cuda"))  # torch 2.14
    assert optimizer.fused and all(g["fused"] for g in optimizer.param_groups)


@pytest.mark.parametrize("saved_fused", [True, False])
def test_a_checkpoint_resumes_on_the_other_path(saved_fused):
    cfg = OptimConfig(lr=1e-2, weight_decay=0.1, warmup_steps=2)
    model, saved = trained(saved_fused, cfg, steps=3)
    resumed = BigVisionAdam(model_param_groups(model), cfg, total_steps=100, fused=not saved_fused)
    resumed.load_state_dict(saved.state_dict())
    assert all(g["fused"] == (not saved_fused) for g in resumed.param_groups)  # this machine's kernel, not the file's
    for a, b in zip(moments(resumed), moments(saved), strict=True):
        assert torch.equal(a, b)
    for p in model.parameters():
        p.grad = torch.ones_like(p)
    resumed.step(3)  # runs, with the step counts where this path keeps them
    assert all(s["step"].item() == 4 for s in resumed.optimizer.state.values())
