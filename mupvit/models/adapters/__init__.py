"""Foreign checkpoint layouts for the ViT (base.py: the adapter protocol and strict loading). To add a layout,
write a StateDictAdapter next to timm_vit.py and name it in ADAPTERS."""

from __future__ import annotations

from mupvit.config import ModelConfig
from mupvit.models.adapters.base import AdapterError, StateDictAdapter
from mupvit.models.adapters.big_vision import BigVisionAdapter
from mupvit.models.adapters.timm_vit import TimmAdapter

ADAPTERS: dict[str, type[StateDictAdapter]] = {"big_vision": BigVisionAdapter, "timm": TimmAdapter}


def adapter_for(layout: str, cfg: ModelConfig, image_size: int) -> StateDictAdapter:
    """The adapter of `layout` for a model config at an input size."""
    if layout not in ADAPTERS:
        raise AdapterError(f"unknown checkpoint layout {layout!r}; known: {', '.join(ADAPTERS)}")
    return ADAPTERS[layout](cfg, image_size)
