"""big_vision's update against optax's arithmetic transcribed to numpy float32: scale_by_adam (moments, the float32
bias corrections 1 - b**count, mu / bc1 / (sqrt(nu / bc2) + eps)), scale(lr), add_decayed_weights on kernels,
scale_by_schedule, scale(-1) and apply_updates, each one float32 rounding, in optax's order. On the CPU the
parameters and both moments must come out bit for bit; a bias correction computed in float64 (torch's Adam) is
off by ~1e-5 relative in the first steps and fails."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mupvit.config import OptimConfig
from mupvit.optax_adam import OptaxAdam, bias_correction
from mupvit.optim import BigVisionAdam, warmup_cosine

F32 = np.float32
STEPS = 6
WARMUP, TOTAL = 2, 50


def to_bfloat16(x: np.ndarray) -> np.ndarray:
    """float32 -> the nearest bfloat16 (ties to even), kept as float32; bit arithmetic, no torch."""
    bits = np.ascontiguousarray(x, dtype=F32).view(np.uint32)
    rounded = (bits + np.uint32(0x7FFF) + ((bits >> np.uint32(16)) & np.uint32(1))) & np.uint32(0xFFFF0000)
    return rounded.view(F32)


class OptaxReference:
    """big_vision's optax chain after clipping, for float32 parameters, written from optax's source: a Python float
    meets a float32 array as float32, and a bfloat16 one (mu_dtype) as bfloat16."""

    def __init__(self, params: dict[str, np.ndarray], decayed: set[str], cfg: OptimConfig) -> None:
        self.p = {k: v.copy() for k, v in params.items()}
        self.mu = {k: np.zeros_like(v) for k, v in params.items()}
        self.nu = {k: np.zeros_like(v) for k, v in params.items()}
        self.decayed, self.cfg, self.count = decayed, cfg, np.int32(0)

    def step(self, grads: dict[str, np.ndarray], schedule: float) -> None:
        c = self.cfg
        self.count += np.int32(1)
        bc1 = F32(1) - F32(c.b1) ** F32(self.count)  # tree_bias_correction: 1 - decay**count, in float32
        bc2 = F32(1) - F32(c.b2) ** F32(self.count)
        for k, g in grads.items():
            if c.mu_dtype == "bfloat16":  # decay * t with t bfloat16: both bfloat16, the product rounded to it
                decayed_mu = to_bfloat16(to_bfloat16(np.array([c.b1], F32))[0] * self.mu[k])
            else:
                decayed_mu = F32(c.b1) * self.mu[k]
            mu = F32(1 - c.b1) * g + decayed_mu
            self.nu[k] = F32(1 - c.b2) * (g * g) + F32(c.b2) * self.nu[k]
            update = (mu / bc1) / (np.sqrt(self.nu[k] / bc2 + F32(0)) + F32(c.eps))
            update = F32(c.lr) * update
            if k in self.decayed:
                update = update + F32(c.weight_decay) * self.p[k]
            update = F32(-1) * (F32(schedule) * update)
            self.p[k] = self.p[k] + update
            self.mu[k] = to_bfloat16(mu) if c.mu_dtype == "bfloat16" else mu


def run_both(cfg: OptimConfig) -> tuple[dict[str, torch.Tensor], BigVisionAdam, OptaxReference]:
    rng = np.random.default_rng(0)
    shapes = {"kernel": (16, 8), "bias": (8,), "scale": (8,)}
    params = {k: rng.standard_normal(s).astype(F32) for k, s in shapes.items()}
    ours = {k: torch.tensor(v) for k, v in params.items()}
    groups = [{"params": [ours["kernel"]], "lr_mult": 1.0, "decay": True},
              {"params": [ours["bias"], ours["scale"]], "lr_mult": 1.0, "decay": False}]
    optimizer = BigVisionAdam(groups, cfg, TOTAL)
    reference = OptaxReference(params, {"kernel"}, cfg)
    for step in range(STEPS):
        # gradients over several orders of magnitude, some near eps's reach
        grads = {k: (rng.standard_normal(s) * 10.0 ** rng.integers(-6, 1, s)).astype(F32) for k, s in shapes.items()}
        for k, p in ours.items():
            p.grad = torch.tensor(grads[k])
        optimizer.step(step)
        reference.step(grads, warmup_cosine(step, WARMUP, TOTAL))
    return ours, optimizer, reference


@pytest.mark.parametrize(("weight_decay", "mu_dtype"), [(0.0, "float32"), (0.1, "float32"), (0.1, "bfloat16")])
def test_update_is_optax_float32_bit_for_bit(weight_decay, mu_dtype):
    cfg = OptimConfig(lr=1e-2, weight_decay=weight_decay, warmup_steps=WARMUP, mu_dtype=mu_dtype)
    ours, optimizer, reference = run_both(cfg)
    for k, p in ours.items():
        assert np.array_equal(p.numpy(), reference.p[k]), k
        state = optimizer.optimizer.state[p]
        assert np.array_equal(state["exp_avg"].numpy(), reference.mu[k]), k
        assert np.array_equal(state["exp_avg_sq"].numpy(), reference.nu[k]), k
    assert {g["count"] for g in optimizer.param_groups} == {STEPS}


def test_bias_correction_is_float32():
    # 1 - float32(0.999) is exact in float32 (Sterbenz) and 1.3e-5 below the float64 correction 0.001.
    assert bias_correction(0.999, 1) == 0.000999987125396728515625
    assert bias_correction(0.9, 1) == 0.10000002384185791015625
    assert bias_correction(0.999, 3) == float(F32(1) - F32(0.999) ** F32(3)) != 1 - 0.999**3
    assert bias_correction(0.9, 10**6) == 1.0


def test_a_torch_adam_checkpoint_is_refused():
    param = torch.nn.Parameter(torch.ones(3))
    old = torch.optim.Adam([param])
    param.grad = torch.ones(3)
    old.step()
    with pytest.raises(ValueError, match="torch.optim.Adam"):
        OptaxAdam([{"params": [param]}]).load_state_dict(old.state_dict())
