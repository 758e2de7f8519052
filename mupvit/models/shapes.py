"""ViT variants and the rules that turn a model config into concrete sizes (torch-free: the config's checks
and the dashboards read it).

To add a variant, add a line to VARIANTS.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING

from mupvit.errors import ConfigError, shown

if TYPE_CHECKING:
    from mupvit.config import ModelConfig

# big_vision `decode_variant`: name -> (width, depth, mlp_dim, num_heads).
VARIANTS: dict[str, tuple[int, int, int, int]] = {
    "Ti": (192, 12, 768, 3),
    "S": (384, 12, 1536, 6),
    "M": (512, 12, 2048, 8),
    "B": (768, 12, 3072, 12),
    "L": (1024, 24, 4096, 16),
}


@dataclass(frozen=True)
class ModelShape:
    width: int
    depth: int
    mlp_dim: int
    num_heads: int
    patch_size: int


def variant_width(variant: str | None) -> int | None:
    """The width of a variant name such as "S/16" (None for no or an unknown variant)."""
    name = (variant or "").partition("/")[0]
    return VARIANTS[name][0] if name in VARIANTS else None


def widened_mlp_dim(ref: ModelShape, width: int) -> int:
    """mlp_dim at `width` with the reference's mlp_dim / width ratio."""
    if width * ref.mlp_dim % ref.width:
        raise ConfigError(
            f"model.width: {width} keeps no integer mlp_dim at the reference ratio {ref.mlp_dim}/{ref.width}; "
            "pick a width that keeps it, or set model.mlp_dim"
        )
    return width * ref.mlp_dim // ref.width


def widened_heads(ref: ModelShape, width: int, rule: str) -> int:
    """num_heads at `width`: more heads of the reference size (fixed_head_dim) or the same heads (fixed_heads)."""
    if rule == "fixed_heads":
        return ref.num_heads
    head_dim = ref.width // ref.num_heads
    if width % head_dim:
        raise ConfigError(
            f"model.width: {width} is not a multiple of the head size {head_dim} (widening 'fixed_head_dim'); "
            f"choose a multiple of {head_dim}, or set model.widening: fixed_heads"
        )
    return width // head_dim


def widened_shape(ref: ModelShape, width: int, rule: str) -> ModelShape:
    """`ref` at a new width under the widening rule."""
    return dataclasses.replace(ref, width=width, num_heads=widened_heads(ref, width, rule),
                               mlp_dim=widened_mlp_dim(ref, width))


def _variant_sizes(m: ModelConfig) -> dict[str, int | None]:
    """The sizes `m.variant` implies, with num_heads and mlp_dim following an explicit other width."""
    sizes: dict[str, int | None] = dict.fromkeys(("width", "depth", "mlp_dim", "num_heads", "patch_size"))
    if m.variant is None:
        return sizes
    name, _, patch_text = m.variant.partition("/")
    if name not in VARIANTS:
        raise ConfigError(
            f"model.variant: got {shown(m.variant)}, expected one of {', '.join(VARIANTS)} "
            "optionally with a patch size such as 'S/16', or null with explicit sizes"
        )
    width, depth, mlp_dim, heads = VARIANTS[name]
    sizes.update(width=width, depth=depth, mlp_dim=mlp_dim, num_heads=heads)
    if patch_text:
        if not patch_text.isdigit() or int(patch_text) <= 0:
            raise ConfigError(f"model.variant: patch size in {shown(m.variant)} must be a positive integer")
        sizes["patch_size"] = int(patch_text)
    if m.width is not None and m.width > 0 and m.width != width:
        ref = ModelShape(width, depth, mlp_dim, heads, sizes["patch_size"] or 1)
        if m.num_heads is None:
            sizes["num_heads"] = widened_heads(ref, m.width, m.widening)
        if m.mlp_dim is None:
            sizes["mlp_dim"] = widened_mlp_dim(ref, m.width)
    return sizes


def model_shape(m: ModelConfig) -> ModelShape:
    """Resolve variant + explicit fields into concrete sizes (explicit values win). A width that differs from the
    variant's derives the unset num_heads and mlp_dim by the widening rule."""
    explicit = {"width": m.width, "depth": m.depth, "mlp_dim": m.mlp_dim, "num_heads": m.num_heads,
                "patch_size": m.patch_size}
    from_variant = _variant_sizes(m)
    resolved = {k: v if v is not None else from_variant[k] for k, v in explicit.items()}
    for key, value in resolved.items():
        if value is None:
            raise ConfigError(f"model.{key}: missing; set it or choose a model.variant such as 'S/16'")
        if value <= 0:
            raise ConfigError(f"model.{key}: got {value}, expected a positive integer")
    return ModelShape(**resolved)


def check_model(m: ModelConfig, image_size: int) -> ModelShape:
    """The shape rules a model config must satisfy at `image_size`; returns the resolved shape."""
    shape = model_shape(m)
    if shape.width % shape.num_heads:
        raise ConfigError(
            f"model.width: {shape.width} is not divisible by model.num_heads={shape.num_heads}; "
            "choose a width that is a multiple of the number of heads"
        )
    if m.base_width <= 0:
        raise ConfigError(f"model.base_width: got {m.base_width}, expected a positive number")
    if m.parametrization == "mup" and m.widening == "fixed_heads" and m.base_width % shape.num_heads:
        raise ConfigError(
            f"model.base_width: {m.base_width} is not divisible by model.num_heads={shape.num_heads}; "
            "with widening 'fixed_heads' the base model needs whole heads"
        )
    if m.posemb == "sincos2d" and shape.width % 4:
        raise ConfigError(f"model.width: {shape.width} must be a multiple of 4 for posemb 'sincos2d'")
    if image_size % shape.patch_size:
        raise ConfigError(f"data.image_size: {image_size} is not divisible by the patch size {shape.patch_size}")
    if m.num_classes <= 0:
        raise ConfigError(f"model.num_classes: got {m.num_classes}, expected a positive number")
    return shape
