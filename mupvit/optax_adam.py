"""big_vision's update step in optax's float32 arithmetic, on torch tensors.

big_vision (big_vision/optax.py:make) chains clip_by_global_norm, scale_by_adam(b1, b2, eps, mu_dtype), scale(lr),
add_decayed_weights(wd, kernels), scale_by_schedule and scale(-1), then adds the result to the parameters. torch's
Adam computes its bias corrections in float64 and orders the arithmetic its own way. Here each operation is
optax's, in optax's order, rounded to float32 once (no fused multiply-add), so a numpy float32 transcription of
optax gives the same bits on the CPU (tests/test_optax_adam.py). Clipping is the caller's
(mupvit/optim.py:clip_by_global_norm).
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import torch


def bias_correction(decay: float, count: int) -> float:
    """optax's `1 - decay**count` (optax tree_bias_correction): JAX makes the int32 count and the Python float decay
    float32 for the power, and subtracts in float32. The float32 result, exactly, as a Python float. (In float64 it
    would be 0.001 for b2 = 0.999 at count 1, not 1 - float32(0.999) = 0.00099998713.)"""
    return float(np.float32(1.0) - np.float32(decay) ** np.float32(count))


def bfloat16_value(x: float) -> float:
    """x rounded to bfloat16 (through float32, ties to even), what a Python float becomes next to a bfloat16 array
    in JAX; on the host, with no tensor to read."""
    bits = int(np.float32(x).view(np.uint32))
    return float(np.uint32((bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000).view(np.float32))


class OptaxAdam(torch.optim.Optimizer):
    """The chain after clipping, for parameter groups that each hold `lr` (scale), `decay` (add_decayed_weights
    applies: kernels) and `count`, the number of updates so far (optax keeps one count, not one per parameter).
    Each parameter's state holds the moments under torch Adam's names: exp_avg (mu) and exp_avg_sq (nu).

    mu_dtype "bfloat16": optax stores mu as bfloat16, so `b1 * mu` is a bfloat16 product (b1 itself rounded to
    bfloat16: 0.8984375), added in float32 to `(1 - b1) * g`; that float32 mu makes the update, then is stored
    rounded to bfloat16. Here it is kept in a float32 tensor holding bfloat16 values."""

    def __init__(self, params: Iterable[dict], b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8,
                 weight_decay: float = 0.0, mu_dtype: str = "float32") -> None:
        defaults = {"lr": 0.0, "betas": (b1, b2), "eps": eps, "weight_decay": weight_decay, "decay": False,
                    "mu_dtype": mu_dtype, "count": 0}
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, schedule: float) -> None:  # type: ignore[override]
        """One update of every parameter that has a gradient, scaled by the schedule's value `schedule`."""
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if params:
                group["count"] += 1
                self._update(group, params, schedule)

    def _update(self, group: dict, params: list[torch.Tensor], schedule: float) -> None:
        b1, b2 = group["betas"]
        grads = [p.grad for p in params]
        states = [self.state[p] for p in params]
        for p, state in zip(params, states, strict=True):
            if not state:
                state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        mus, nus = [s["exp_avg"] for s in states], [s["exp_avg_sq"] for s in states]
        bf16_mu = group["mu_dtype"] == "bfloat16"
        # mu = (1 - b1) * g + b1 * mu;  nu = (1 - b2) * g**2 + b2 * nu   (optax tree_update_moment)
        torch._foreach_mul_(mus, bfloat16_value(b1) if bf16_mu else b1)
        if bf16_mu:  # the bfloat16 product (exact in float32: two 8-bit significands), rounded to bfloat16
            torch._foreach_copy_(mus, [m.bfloat16() for m in mus])
        torch._foreach_add_(mus, torch._foreach_mul(grads, 1.0 - b1))
        torch._foreach_mul_(nus, b2)
        torch._foreach_add_(nus, torch._foreach_mul(torch._foreach_mul(grads, grads), 1.0 - b2))
        # mu / bc1 / (sqrt(nu / bc2) + eps). The corrections as device tensors: CUDA divides by a Python number as
        # a multiply by its reciprocal, which is not the division optax does.
        device = params[0].device
        bc1 = torch.full((), bias_correction(b1, group["count"]), dtype=torch.float32, device=device)
        bc2 = torch.full((), bias_correction(b2, group["count"]), dtype=torch.float32, device=device)
        updates = torch._foreach_div(mus, bc1)
        denominators = [d.double() for d in torch._foreach_div(nus, bc2)]
        # XLA's float32 square root is correctly rounded, torch's on the CPU is not (1 ulp off for ~1 value in 6,
        # torch 2.14); the float64 root of a float32, rounded to float32, is the correctly rounded one.
        torch._foreach_sqrt_(denominators)
        denominators = [d.float() for d in denominators]
        torch._foreach_add_(denominators, group["eps"])
        torch._foreach_div_(updates, denominators)
        torch._foreach_mul_(updates, group["lr"])
        if group["decay"] and group["weight_decay"]:
            torch._foreach_add_(updates, torch._foreach_mul(params, group["weight_decay"]))
        torch._foreach_mul_(updates, schedule)
        torch._foreach_sub_(params, updates)  # scale(-1), then apply_updates: p + (-u) is p - u exactly
        if bf16_mu:
            torch._foreach_copy_(mus, [m.bfloat16() for m in mus])

    def load_state_dict(self, state_dict: dict) -> None:
        """Refuses the torch.optim.Adam state of checkpoints from before this class: its run took other roundings,
        so resuming it here would make a run that is neither."""
        if any("count" not in group for group in state_dict["param_groups"]):
            raise ValueError("this checkpoint's optimizer state is torch.optim.Adam's (before the float32 optax "
                             "update): resume it with the version that wrote it, or start the run afresh")
        super().load_state_dict(state_dict)
