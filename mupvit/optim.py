"""big_vision's optimiser in PyTorch: Adam + independent weight decay on kernels, global-norm clipping,
and the linear-warmup + cosine schedule evaluated at the optimiser step count."""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import nn
from torch.optim.optimizer import _get_fused_kernels_supported_devices

from mupvit.config import OptimConfig
from mupvit.models.parametrization import DECAYED_ROLES, ROLES
from mupvit.models.vit import ViT, decay_mask


def warmup_cosine(step: int, warmup_steps: int, total_steps: int) -> float:
    """Schedule multiplier at optimiser step t = 0, 1, ...: min(1, t/W) * 0.5 * (1 + cos(pi * progress)).

    Warmup starts at exactly 0, so the first update is a no-op, as in big_vision.
    """
    warm = 1.0 if warmup_steps == 0 else min(1.0, step / warmup_steps)
    progress = min(max((step - warmup_steps) / (total_steps - warmup_steps), 0.0), 1.0)
    return warm * 0.5 * (1.0 + math.cos(math.pi * progress))


def param_groups(model: nn.Module, roles: dict[str, str], hidden_lr_mult: float) -> list[dict]:
    """One group per µP role (`roles`: parameter name -> role, mupvit/models/parametrization.py), each with its
    Adam lr multiplier, whether big_vision decays it (kernels only) and the parameter names, so the whole
    parametrization is visible in the optimiser."""
    groups = {role: {"params": [], "names": [], "role": role, "decay": role in DECAYED_ROLES,
                     "lr_mult": hidden_lr_mult if role == "hidden" else 1.0} for role in ROLES}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        role = roles[name]
        if decay_mask(name, param) != groups[role]["decay"]:
            raise ValueError(f"parameter {name}: role {role!r} disagrees with the weight-decay mask")
        groups[role]["params"].append(param)
        groups[role]["names"].append(name)
    return [g for g in groups.values() if g["params"]]


def describe_param_groups(groups: list[dict], weight_decay: float) -> str:
    """A table of the optimiser's groups: role, lr multiplier, decay, number of tensors and elements, names."""
    lines = [f"{'role':8} {'lr_mult':>9} {'wd':>8} {'tensors':>7} {'params':>10}  names"]
    for g in groups:
        numel = sum(p.numel() for p in g["params"])
        wd = weight_decay if g["decay"] else 0.0
        names = ", ".join(g["names"][:4]) + (f", ... (+{len(g['names']) - 4})" if len(g["names"]) > 4 else "")
        lines.append(f"{g['role']:8} {g['lr_mult']:9.4g} {wd:8.2g} {len(g['params']):7d} {numel:10,d}  {names}")
    return "\n".join(lines)


def fused_supported(device: torch.device) -> bool:
    """Whether this torch has a fused Adam kernel for `device` (CUDA, and CPU since torch 2.4)."""
    return device.type in _get_fused_kernels_supported_devices()


class BigVisionAdam:
    """Adam whose weight decay is `param -= schedule(t) * wd * param`, independent of the learning rate.

    torch's AdamW multiplies decay by lr; here decay is applied separately (before the Adam step, on the
    pre-update parameter, as optax does), so it stays exact whatever each group's lr is. With mu_dtype bfloat16
    the first moment is rounded to bfloat16 after each update (optax scale_by_adam(mu_dtype=...): the update
    itself uses the unrounded moment); it is kept in float32 tensors holding bfloat16 values.

    The Adam update runs in torch's fused kernel where the parameters' device has one (`fused` None), else in
    its foreach kernels. Neither the decay nor the rounding is part of that kernel, so both paths do the same
    update (to float rounding). The fused path keeps Adam's step count on the device: no host read per step.
    """

    def __init__(self, groups: list[dict], cfg: OptimConfig, total_steps: int, fused: bool | None = None) -> None:
        self.cfg, self.total_steps = cfg, total_steps
        if fused is None:
            fused = fused_supported(groups[0]["params"][0].device)
        self.fused = fused
        self.optimizer = torch.optim.Adam(groups, lr=0.0, betas=(cfg.b1, cfg.b2), eps=cfg.eps, weight_decay=0.0,
                                          **self._kernel())

    def _kernel(self) -> dict[str, bool]:
        return {"fused": True, "foreach": False} if self.fused else {"fused": False, "foreach": True}

    @property
    def param_groups(self) -> list[dict]:
        return self.optimizer.param_groups

    def schedule(self, step: int) -> float:
        return warmup_cosine(step, self.cfg.warmup_steps, self.total_steps)

    @torch.no_grad()
    def step(self, step: int) -> float:
        """Apply update number `step` (0-based) to the gradients now in `.grad`; returns the lr used."""
        s = self.schedule(step)
        for group in self.optimizer.param_groups:
            group["lr"] = self.cfg.lr * group["lr_mult"] * s
            if group["decay"] and self.cfg.weight_decay and group["params"]:
                torch._foreach_mul_(group["params"], 1.0 - s * self.cfg.weight_decay)
        self.optimizer.step()
        if self.cfg.mu_dtype == "bfloat16":
            moments = [state["exp_avg"] for state in self.optimizer.state.values()]
            torch._foreach_copy_(moments, [m.to(torch.bfloat16) for m in moments])
        return self.cfg.lr * s

    def zero_grad(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)

    def state_dict(self) -> dict:
        return self.optimizer.state_dict()

    def load_state_dict(self, state: dict) -> None:
        """Restore `state`, keeping this optimiser's kernel: torch would take the checkpoint's, and place the step
        counts by it (on the device for fused), so a checkpoint from either path resumes on the other."""
        groups = [{**group, **self._kernel()} for group in state["param_groups"]]
        self.optimizer.load_state_dict({**state, "param_groups": groups})


@torch.no_grad()
def clip_by_global_norm(params: Iterable[torch.Tensor], max_norm: float | None) -> torch.Tensor:
    """optax.clip_by_global_norm: scale all gradients by max_norm / norm when norm > max_norm.

    Returns the global norm before clipping. (torch's clip_grad_norm_ adds 1e-6 to the norm.)
    """
    grads = [p.grad for p in params if p.grad is not None]
    norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))
    if max_norm is not None:
        scale = torch.clamp(max_norm / norm, max=1.0)
        torch._foreach_mul_(grads, scale)
    return norm


def model_param_groups(model: ViT) -> list[dict]:
    """The groups of a mupvit model: its own roles and its parametrization's hidden lr multiplier."""
    return param_groups(model, model.param_roles(), model.parametrization.hidden_lr_mult)


def build_optimizer(model: ViT, cfg: OptimConfig, total_steps: int) -> BigVisionAdam:
    return BigVisionAdam(model_param_groups(model), cfg, total_steps)
