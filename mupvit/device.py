"""The torch device a run asks for (train.device), and how much memory it has."""

from __future__ import annotations

import os

import torch

from mupvit.errors import ConfigError


def resolve_device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("train.device: 'cuda' requested but no CUDA device is visible; use 'auto' or 'cpu'")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def device_memory(device: torch.device) -> tuple[int, str]:
    """(bytes, what has them) of `device`: a GPU's total memory, else the host's physical RAM (a CPU run's
    tensors live there)."""
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        return torch.cuda.get_device_properties(device).total_memory, f"{device} ({name}) has"
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"), "this host's RAM is"
