"""timm's `VisionTransformer` in the simple-ViT shape (class_token=False, global_pool="avg", fc_norm=False,
qkv_bias=True, LayerNorm eps 1e-6): the same computation as ours with other parameter names. timm stores the
position embedding as a parameter (`pos_embed`), so a fixed sincos2d table travels as one and must come back
unchanged. timm has no tanh pre_logits layer and no µP readout multiplier: those models cannot travel.
"""

from __future__ import annotations

import torch

from mupvit.config import ModelConfig
from mupvit.models.adapters.base import AdapterError, KeyMap, StateDictAdapter
from mupvit.models.parametrization import parametrization
from mupvit.models.shapes import model_shape
from mupvit.models.vit import posemb_sincos_2d

NAMES = KeyMap([
    ("patch_embed.{p}", "patch_embed.proj.{p}"),
    ("pos_embedding", "pos_embed"),
    ("cls", "cls_token"),
    ("blocks.{i}.attn.out.{p}", "blocks.{i}.attn.proj.{p}"),
    ("blocks.{i}.{layer}.{p}", "blocks.{i}.{layer}.{p}"),
    ("blocks.{i}.{module}.{layer}.{p}", "blocks.{i}.{module}.{layer}.{p}"),
    ("encoder_norm.{p}", "norm.{p}"),
    ("head.{p}", "head.{p}"),
])
SINCOS_TOLERANCE = 1e-6  # a fixed table comes back as it went (float32 round trip)


class TimmAdapter(StateDictAdapter):
    name = "timm"

    def __init__(self, cfg: ModelConfig, image_size: int) -> None:
        if cfg.head == "mlp":
            raise AdapterError("model.head: 'mlp' has a tanh pre_logits layer that timm's VisionTransformer lacks; "
                               "only head 'linear' models map onto timm")
        if parametrization(cfg).readout_mult != 1.0:
            raise AdapterError("model.parametrization: a µP model away from its base width multiplies the head's "
                               "input, which timm's VisionTransformer cannot; map an SP model (or µP at base width)")
        self.cfg, self.image_size = cfg, image_size
        shape = model_shape(cfg)
        grid = image_size // shape.patch_size
        self.sincos = posemb_sincos_2d(grid, grid, shape.width) if cfg.posemb == "sincos2d" else None

    def to_foreign(self, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        out = {}
        for key, tensor in state.items():
            foreign = NAMES.to_foreign(key)
            if foreign is None:
                raise AdapterError(f"{key}: no timm counterpart (parameter of an unsupported model option)")
            out[foreign] = tensor
        return out

    def from_foreign(self, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        unplaced = sorted(k for k in tensors if NAMES.to_ours(k) is None)
        if unplaced:
            raise AdapterError(f"timm checkpoint: unexpected: {', '.join(unplaced[:8])} (not the simple-ViT shape)")
        state = {NAMES.to_ours(k): v for k, v in tensors.items()}
        if self.sincos is not None:
            table = state.pop("pos_embedding", None)
            if table is None:
                raise AdapterError("timm checkpoint: missing: pos_embed")
            if table.shape != self.sincos.shape or (table.float() - self.sincos).abs().max() > SINCOS_TOLERANCE:
                raise AdapterError("timm checkpoint: pos_embed is not the fixed sincos2d table of this model "
                                   f"({'x'.join(map(str, table.shape))}); for a learned one set model.posemb: learn")
        return state
