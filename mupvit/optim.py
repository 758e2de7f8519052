"""big_vision's optimiser in PyTorch: Adam + independent weight decay on kernels, global-norm clipping,
and the linear-warmup + cosine schedule evaluated at the optimiser step count."""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import nn

from mupvit.config import OptimConfig
from mupvit.models.parametrization import DECAYED_ROLES, ROLES
from mupvit.models.vit import ViT, decay_mask
from mupvit.optax_adam import OptaxAdam


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


class BigVisionAdam:
    """big_vision's optimiser over the role groups: optax's Adam in float32 (mupvit/optax_adam.py) at lr x the
    group's µP multiplier, weight decay `param -= schedule(t) * wd * param` on kernels (independent of the learning
    rate: torch's AdamW would multiply it by lr), all scaled by the warmup + cosine schedule at step t."""

    def __init__(self, groups: list[dict], cfg: OptimConfig, total_steps: int) -> None:
        self.cfg, self.total_steps = cfg, total_steps
        self.optimizer = OptaxAdam([{**g, "lr": cfg.lr * g["lr_mult"]} for g in groups], cfg.b1, cfg.b2, cfg.eps,
                                   cfg.weight_decay, cfg.mu_dtype)

    @property
    def param_groups(self) -> list[dict]:
        return self.optimizer.param_groups

    def schedule(self, step: int) -> float:
        return warmup_cosine(step, self.cfg.warmup_steps, self.total_steps)

    def step(self, step: int) -> float:
        """Apply update number `step` (0-based) to the gradients now in `.grad`; returns the lr used."""
        s = self.schedule(step)
        self.optimizer.step(s)
        return self.cfg.lr * s

    def zero_grad(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)

    def state_dict(self) -> dict:
        return self.optimizer.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.optimizer.load_state_dict(state)


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
