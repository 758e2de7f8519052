"""The "simple ViT" of big_vision (models/vit.py) in PyTorch, initialised with JAX/flax semantics.

Parameter names follow big_vision's module tree so its checkpoints map one-to-one (docs/MODEL.md has the table).
Each parameter's µP role (and so its Adam lr multiplier and weight decay) is decided here, by the module that owns it.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from mupvit.config import ModelConfig
from mupvit.models.parametrization import parametrization
from mupvit.models.shapes import model_shape

LN_EPS = 1e-6
# JAX's truncated_normal(-2, 2) has std 0.8796 of the untruncated one; lecun_normal divides it out.
TRUNC_STD_CORRECTION = 0.87962566103423978


def xavier_uniform_(weight: torch.Tensor) -> torch.Tensor:
    """flax xavier_uniform on a (fan_out, fan_in) kernel: U(-a, a), a = sqrt(6 / (fan_in + fan_out))."""
    fan_out, fan_in = weight.shape
    bound = math.sqrt(6.0 / (fan_in + fan_out))
    with torch.no_grad():
        return weight.uniform_(-bound, bound)


def lecun_normal_(weight: torch.Tensor) -> torch.Tensor:
    """JAX lecun_normal: truncated normal on (-2, 2) std units whose *actual* std is sqrt(1 / fan_in)."""
    fan_in = weight[0].numel()
    std = math.sqrt(1.0 / fan_in) / TRUNC_STD_CORRECTION
    with torch.no_grad():
        return nn.init.trunc_normal_(weight, mean=0.0, std=std, a=-2.0 * std, b=2.0 * std)


def posemb_sincos_2d(h: int, w: int, width: int, temperature: float = 10_000.0) -> torch.Tensor:
    """MoCo v3 fixed position embedding, (1, h*w, width): [sin(x), cos(x), sin(y), cos(y)]."""
    if width % 4:
        raise ValueError(f"width {width} must be a multiple of 4 for sincos2d")
    y, x = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    omega = torch.arange(width // 4, dtype=torch.float64) / (width // 4 - 1)
    omega = 1.0 / temperature**omega
    y = y.flatten()[:, None].double() * omega[None, :]
    x = x.flatten()[:, None].double() * omega[None, :]
    pe = torch.cat([torch.sin(x), torch.cos(x), torch.sin(y), torch.cos(y)], dim=1)
    return pe.float()[None]


class Attention(nn.Module):
    """Multi-head self-attention. q, k, v live in one (3d, d) weight for one matmul, but each (d, d)
    block is initialised on its own like flax's separate query/key/value kernels."""

    def __init__(self, width: int, num_heads: int, scale: float, zero_init_query: bool = False) -> None:
        super().__init__()
        self.num_heads, self.scale, self.zero_init_query = num_heads, scale, zero_init_query
        self.qkv = nn.Linear(width, 3 * width)
        self.out = nn.Linear(width, width)

    def reset_parameters(self) -> None:
        for block in self.qkv.weight.chunk(3, dim=0):
            xavier_uniform_(block)
        if self.zero_init_query:
            nn.init.zeros_(self.qkv.weight[: self.out.in_features])
        xavier_uniform_(self.out.weight)
        nn.init.zeros_(self.qkv.bias)
        nn.init.zeros_(self.out.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, length, d = x.shape
        qkv = self.qkv(x).view(n, length, 3, self.num_heads, d // self.num_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each (n, heads, length, head_dim)
        y = F.scaled_dot_product_attention(q, k, v, scale=self.scale)
        return self.out(y.transpose(1, 2).reshape(n, length, d))


class MlpBlock(nn.Module):
    """Dense, GELU, Dense. `gelu`: "tanh" (flax nn.gelu's default, big_vision) or "exact" (erf)."""

    def __init__(self, width: int, mlp_dim: int, gelu: str = "tanh") -> None:
        super().__init__()
        self.fc1 = nn.Linear(width, mlp_dim)
        self.fc2 = nn.Linear(mlp_dim, width)
        self.approximate = "tanh" if gelu == "tanh" else "none"

    def reset_parameters(self) -> None:
        for layer in (self.fc1, self.fc2):
            xavier_uniform_(layer.weight)
            nn.init.normal_(layer.bias, std=1e-6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x), approximate=self.approximate))


class Readout(nn.Linear):
    """The classifier head; µP multiplies its input by 1/m (`mult`), SP leaves it alone (mult 1.0 skips the op)."""

    def __init__(self, width: int, num_classes: int, mult: float) -> None:
        super().__init__(width, num_classes)
        self.mult = mult

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x * self.mult if self.mult != 1.0 else x)


class EncoderBlock(nn.Module):
    """Pre-LN block: x + attn(LN(x)), then x + mlp(LN(x)); no dropout, no layer scale."""

    def __init__(self, width: int, num_heads: int, mlp_dim: int, attn_scale: float, zero_init_query: bool,
                 gelu: str = "tanh") -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(width, eps=LN_EPS)
        self.attn = Attention(width, num_heads, attn_scale, zero_init_query)
        self.norm2 = nn.LayerNorm(width, eps=LN_EPS)
        self.mlp = MlpBlock(width, mlp_dim, gelu)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class ViT(nn.Module):
    def __init__(self, cfg: ModelConfig, image_size: int) -> None:
        super().__init__()
        shape = model_shape(cfg)
        self.parametrization = parametrization(cfg)
        self.width, self.pool = shape.width, cfg.pool
        self.grid = image_size // shape.patch_size
        self.patch_embed = nn.Conv2d(3, shape.width, shape.patch_size, stride=shape.patch_size)
        num_patches = self.grid * self.grid
        if cfg.posemb == "sincos2d":
            self.register_buffer("pos_embedding", posemb_sincos_2d(self.grid, self.grid, shape.width), persistent=False)
        elif cfg.posemb == "learn":
            self.pos_embedding = nn.Parameter(torch.empty(1, num_patches, shape.width))
        else:
            self.pos_embedding = None
        self.cls = nn.Parameter(torch.zeros(1, 1, shape.width)) if cfg.pool == "tok" else None
        self.blocks = nn.ModuleList(
            EncoderBlock(shape.width, shape.num_heads, shape.mlp_dim, self.parametrization.attn_scale,
                         cfg.zero_init_query, cfg.gelu)
            for _ in range(shape.depth)
        )
        self.encoder_norm = nn.LayerNorm(shape.width, eps=LN_EPS)
        self.pre_logits = nn.Linear(shape.width, shape.width) if cfg.head == "mlp" else None
        self.head = Readout(shape.width, cfg.num_classes, self.parametrization.readout_mult)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        lecun_normal_(self.patch_embed.weight)
        nn.init.zeros_(self.patch_embed.bias)
        if isinstance(self.pos_embedding, nn.Parameter):
            nn.init.normal_(self.pos_embedding, std=self.parametrization.posemb_std)
        if self.cls is not None:
            nn.init.zeros_(self.cls)
        for block in self.blocks:
            block.attn.reset_parameters()
            block.mlp.reset_parameters()
            for norm in (block.norm1, block.norm2):
                norm.reset_parameters()
        self.encoder_norm.reset_parameters()
        if self.pre_logits is not None:
            lecun_normal_(self.pre_logits.weight)
            nn.init.zeros_(self.pre_logits.bias)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """Pooled, normalised encoder output (before pre_logits/head), shape (n, width)."""
        x = self.patch_embed(images).flatten(2).transpose(1, 2)  # (n, patches, width)
        if self.pos_embedding is not None:
            x = x + self.pos_embedding  # before any extra token, as big_vision
        if self.cls is not None:
            x = torch.cat([self.cls.expand(x.shape[0], -1, -1), x], dim=1)
        for block in self.blocks:
            x = block(x)
        x = self.encoder_norm(x)
        return x[:, 0] if self.pool == "tok" else x.mean(dim=1)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = self.features(images)
        if self.pre_logits is not None:
            x = torch.tanh(self.pre_logits(x))
        return self.head(x)

    def param_roles(self) -> dict[str, str]:
        """The µP role (mupvit/models/parametrization.py) of every parameter, by the module that owns it."""
        hidden = [layer.weight for block in self.blocks
                  for layer in (block.attn.qkv, block.attn.out, block.mlp.fc1, block.mlp.fc2)]
        if self.pre_logits is not None:
            hidden.append(self.pre_logits.weight)
        roles = {id(p): "hidden" for p in hidden}
        roles |= {id(self.patch_embed.weight): "input", id(self.head.weight): "readout"}
        return {name: roles.get(id(p), "vector") for name, p in self.named_parameters()}


def decay_mask(name: str, param: torch.Tensor) -> bool:
    """big_vision decays kernels only: conv/attention/MLP/pre_logits/head weights, not biases,
    LayerNorm, position embedding or the class token."""
    return name.endswith(".weight") and param.ndim >= 2
