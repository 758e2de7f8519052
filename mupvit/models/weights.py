"""Load weights of any supported layout into a model: our training checkpoints (`.pt`), big_vision parameters
(`.npz`) and timm-layout exports (`.safetensors`), each strictly (every tensor used, every shape checked)."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from mupvit.checkpoint import UNREADABLE, load_checkpoint
from mupvit.config import Config
from mupvit.models.adapters import adapter_for
from mupvit.models.adapters.base import AdapterError, check_state, load_foreign
from mupvit.models.adapters.files import layout_of, read_npz, read_safetensors
from mupvit.models.vit import ViT
from mupvit.urls import fetch, is_remote

# Model settings that change the computation without changing any tensor's shape: an export records them.
SEMANTIC_KEYS = ("gelu", "posemb", "pool", "head")


def read_training_checkpoint(path: Path) -> dict[str, Any]:
    """A mupvit.train checkpoint; anything else (not a torch file, cut short, another format) is an AdapterError."""
    try:
        return load_checkpoint(path)
    except UNREADABLE as err:
        raise AdapterError(f"{err}; give a mupvit .pt, a big_vision .npz or a timm-layout .safetensors") from None


def check_semantics(path: Path, recorded: dict[str, Any], cfg: Config) -> None:
    """The file's model settings that no shape reveals (GELU, posemb, pooling, head) must be the config's."""
    differ = {k: recorded[k] for k in SEMANTIC_KEYS if k in recorded and recorded[k] != getattr(cfg.model, k)}
    if differ:
        shown = "; ".join(f"model.{k}: {v!r} in the file, {getattr(cfg.model, k)!r} in the config"
                          for k, v in differ.items())
        fix = " ".join(f"--set model.{k}={v}" for k, v in differ.items())
        raise AdapterError(f"{path} holds another model ({shown}); load it with {fix}")


def load_weights(model: ViT, cfg: Config, path: str | Path, keep_head: bool = False) -> str:
    """Load the checkpoint at `path` into `model` (built from `cfg`); returns its layout. `keep_head`: the
    file's classifier is dropped and the model keeps its own (e.g. another num_classes). `path` may also be a
    URL (s3://...) or an MLflow artifact URI (runs:/<run_id>/weights/model.safetensors): read from a local copy."""
    if is_remote(path):
        with tempfile.TemporaryDirectory(prefix="mupvit-weights-") as folder:
            try:
                local = fetch(str(path), Path(folder))
            except ValueError as err:
                raise AdapterError(str(err)) from None
            return load_weights(model, cfg, local, keep_head)
    path = Path(path)
    layout = layout_of(path)
    if not path.is_file():
        raise AdapterError(f"checkpoint not found: {path}")
    if layout == "mupvit":
        state = read_training_checkpoint(path)
        check_semantics(path, state["config"].get("model", {}), cfg)
        weights = {k: v for k, v in state["model"].items() if not (keep_head and k.startswith("head."))}
        expected = {k: v for k, v in model.state_dict().items() if not (keep_head and k.startswith("head."))}
        check_state(weights, expected, f"{path} (mupvit layout)")
        model.load_state_dict(weights, strict=not keep_head)
        return layout
    if layout == "big_vision":
        tensors = read_npz(path)
    else:
        tensors, recorded = read_safetensors(path)
        if recorded is not None:
            check_semantics(path, recorded, cfg)
    load_foreign(model, tensors, adapter_for(layout, cfg.model, cfg.data.image_size), str(path), keep_head)
    return layout

