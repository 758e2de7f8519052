"""Standard (SP) and maximal-update (µP, Tensor Programs V) parametrizations of the ViT, for Adam.

µP here is a handful of scalars that live on the model and in the optimiser's param groups (no global state,
so torch.compile, DDP and checkpoints see ordinary modules and groups). With m = width / base_width:

  role      params                                       Adam lr   init              forward
  hidden    qkv, attn out, MLP fc1/fc2, pre_logits (MLP  x 1/m     fan-in (xavier /  -
            head) kernels                                          lecun), unchanged
  input     patch-embedding kernel                       x 1       fan-in, fixed     -
  readout   head kernel                                  x 1       zero              input x 1/m
  vector    biases, LayerNorm, class token, posemb       x 1       unchanged (*)     -

plus attention logits scaled by sqrt(base_head_dim) / head_dim (= 1/sqrt(head_dim) while head_dim is fixed).
(*) a learned position embedding starts at std 1/sqrt(base_width) instead of 1/sqrt(width), so its
coordinates stay the same size at every width. Every multiplier is exactly 1.0 at m = 1, so µP at base width
is SP bit for bit. Weight decay stays big_vision's independent decay, so it does not change with width.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

from mupvit.models.shapes import model_shape, widened_shape

if TYPE_CHECKING:
    from mupvit.config import ModelConfig

ROLES = ("hidden", "input", "readout", "vector")
# big_vision decays kernels only: every role but "vector" (biases, LayerNorm, position embedding, class token).
DECAYED_ROLES = frozenset({"hidden", "input", "readout"})


@dataclass(frozen=True)
class Parametrization:
    name: str
    width_mult: float  # m = width / base_width
    hidden_lr_mult: float  # Adam lr multiplier of hidden kernels
    readout_mult: float  # multiplier on the head's input
    attn_scale: float  # softmax logit scale
    posemb_std: float  # init std of a learned position embedding


def parametrization(cfg: ModelConfig) -> Parametrization:
    shape = model_shape(cfg)
    head_dim = shape.width // shape.num_heads
    sp_scale = 1.0 / math.sqrt(head_dim)
    if cfg.parametrization == "sp":
        return Parametrization("sp", shape.width / cfg.base_width, 1.0, 1.0, sp_scale, 1.0 / math.sqrt(shape.width))
    m = shape.width / cfg.base_width
    base_head_dim = head_dim if cfg.widening == "fixed_head_dim" else cfg.base_width // shape.num_heads
    # sqrt(base_head_dim)/head_dim written so the ratio is exactly 1.0 at base width (bit-identical to SP).
    scale = sp_scale * math.sqrt(base_head_dim / head_dim)
    return Parametrization("mup", m, 1.0 / m, 1.0 / m, scale, 1.0 / math.sqrt(cfg.base_width))


def with_width(cfg: ModelConfig, width: int) -> ModelConfig:
    """The same model at another width: num_heads and mlp_dim follow `cfg.widening`; base_width is kept."""
    shape = widened_shape(model_shape(cfg), width, cfg.widening)
    return dataclasses.replace(cfg, width=width, num_heads=shape.num_heads, mlp_dim=shape.mlp_dim)

