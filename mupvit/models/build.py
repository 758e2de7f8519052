"""The one constructor of the model a config describes, used by the training loop, the optimiser's callers and
the coordinate check (so a new model family is added here once, not in each of them)."""

from __future__ import annotations

from mupvit.config import Config
from mupvit.models.vit import ViT


def build_model(cfg: Config) -> ViT:
    """The (freshly initialised) model of `cfg` at its input size, on the CPU."""
    return ViT(cfg.model, cfg.data.image_size)
