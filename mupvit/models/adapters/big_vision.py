"""big_vision's ViT parameters (`models/vit.py`), flattened with "/" as `utils.load_params` reads them from .npz.

flax kernels are (in, out) and convolutions (kh, kw, in, out); torch weights are (out, in) and (out, in, kh, kw).
Attention keeps q, k and v as separate (d, heads, head_dim) kernels where we hold one (3d, d) weight. Checkpoints
come in two layouts, both read: one subtree per block (`Transformer/encoderblock_<i>/...`, what this adapter
writes) or one scanned subtree with a leading depth axis (`Transformer/encoderblock/...`). A learned position
embedding for another grid is resampled as big_vision's `resample_posemb` does (scipy.ndimage.zoom, order 1).
"""

from __future__ import annotations

import math
import re

import numpy as np
import scipy.ndimage
import torch

from mupvit.config import ModelConfig
from mupvit.models.adapters.base import AdapterError, StateDictAdapter
from mupvit.models.parametrization import parametrization
from mupvit.models.shapes import model_shape

BLOCK = "Transformer/encoderblock_{i}"
SCANNED = "Transformer/encoderblock/"
ATTN = "MultiHeadDotProductAttention_0"
QKV = ("query", "key", "value")
# Prefixes under which big_vision's training checkpoints keep the parameters (published ones have none).
PARAM_PREFIXES = ("params/", "opt/target/")
_BLOCK_KEY = re.compile(r"^blocks\.(\d+)\.(.+)$")


def _dense(kernel: torch.Tensor) -> torch.Tensor:
    return kernel.T.contiguous()


class BigVisionAdapter(StateDictAdapter):
    name = "big_vision"

    def __init__(self, cfg: ModelConfig, image_size: int) -> None:
        if parametrization(cfg).readout_mult != 1.0:
            raise AdapterError("model.parametrization: a µP model away from its base width multiplies the head's "
                               "input, which big_vision's ViT cannot; map an SP model (or µP at base width)")
        shape = model_shape(cfg)
        self.width, self.heads, self.grid = shape.width, shape.num_heads, image_size // shape.patch_size
        self.learned_posemb = cfg.posemb == "learn"

    # ------------------------------------------------------------ ours -> big_vision

    def _block_to_foreign(self, i: int, rest: str, tensor: torch.Tensor) -> dict[str, torch.Tensor]:
        d, h = self.width, self.heads
        prefix = BLOCK.format(i=i)
        simple = {"norm1.weight": "LayerNorm_0/scale", "norm1.bias": "LayerNorm_0/bias",
                  "norm2.weight": "LayerNorm_1/scale", "norm2.bias": "LayerNorm_1/bias",
                  "mlp.fc1.bias": "MlpBlock_0/Dense_0/bias", "mlp.fc2.bias": "MlpBlock_0/Dense_1/bias",
                  "attn.out.bias": f"{ATTN}/out/bias"}
        if rest in simple:
            return {f"{prefix}/{simple[rest]}": tensor}
        if rest in ("mlp.fc1.weight", "mlp.fc2.weight"):
            return {f"{prefix}/MlpBlock_0/Dense_{int(rest[6]) - 1}/kernel": _dense(tensor)}
        if rest == "attn.out.weight":
            return {f"{prefix}/{ATTN}/out/kernel": _dense(tensor).reshape(h, d // h, d)}
        if rest == "attn.qkv.weight":
            return {f"{prefix}/{ATTN}/{n}/kernel": _dense(w).reshape(d, h, d // h)
                    for n, w in zip(QKV, tensor.chunk(3), strict=True)}
        if rest == "attn.qkv.bias":
            return {f"{prefix}/{ATTN}/{n}/bias": b.reshape(h, d // h)
                    for n, b in zip(QKV, tensor.chunk(3), strict=True)}
        raise AdapterError(f"blocks.{i}.{rest}: no big_vision counterpart")

    def to_foreign(self, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        out: dict[str, torch.Tensor] = {}
        for key, tensor in state.items():
            block = _BLOCK_KEY.match(key)
            if block:
                out.update(self._block_to_foreign(int(block.group(1)), block.group(2), tensor))
            elif key == "patch_embed.weight":
                out["embedding/kernel"] = tensor.permute(2, 3, 1, 0).contiguous()
            elif key in ("pre_logits.weight", "head.weight"):
                out[f"{key.split('.')[0]}/kernel"] = _dense(tensor)
            elif key == "pos_embedding" and not self.learned_posemb:
                continue  # the fixed sincos2d table: computed, not stored, in both code bases
            else:
                names = {"patch_embed.bias": "embedding/bias", "pos_embedding": "pos_embedding", "cls": "cls",
                         "encoder_norm.weight": "Transformer/encoder_norm/scale",
                         "encoder_norm.bias": "Transformer/encoder_norm/bias",
                         "pre_logits.bias": "pre_logits/bias", "head.bias": "head/bias"}
                if key not in names:
                    raise AdapterError(f"{key}: no big_vision counterpart")
                out[names[key]] = tensor
        return out

    # ------------------------------------------------------------ big_vision -> ours

    def normalise(self, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Parameters out of a training checkpoint's prefix, scanned blocks unstacked, a learned position
        embedding resampled to this model's grid."""
        for prefix in PARAM_PREFIXES:
            if tensors and all(k.startswith(prefix) for k in tensors):
                tensors = {k.removeprefix(prefix): v for k, v in tensors.items()}
        out = {}
        for key, value in tensors.items():
            if key.startswith(SCANNED):
                rest = key.removeprefix(SCANNED)
                out.update({f"{BLOCK.format(i=i)}/{rest}": value[i] for i in range(value.shape[0])})
            else:
                out[key] = value
        posemb = out.get("pos_embedding")
        if self.learned_posemb and posemb is not None and posemb.ndim == 3 and posemb.shape[1] != self.grid ** 2:
            out["pos_embedding"] = resample_posemb(posemb, self.grid)
        return out

    def from_foreign(self, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        d = self.width
        state: dict[str, torch.Tensor] = {}
        rest = dict(tensors)

        def take(key: str) -> torch.Tensor:
            if key not in rest:
                raise AdapterError(f"big_vision checkpoint: missing: {key}")
            return rest.pop(key)

        blocks = sorted({int(m.group(1)) for k in tensors if (m := re.match(r"^Transformer/encoderblock_(\d+)/", k))})
        for i in blocks:
            p, a = BLOCK.format(i=i), f"blocks.{i}"
            state[f"{a}.norm1.weight"], state[f"{a}.norm1.bias"] = take(f"{p}/LayerNorm_0/scale"), take(
                f"{p}/LayerNorm_0/bias")
            state[f"{a}.attn.qkv.weight"] = torch.cat([_dense(take(f"{p}/{ATTN}/{n}/kernel").reshape(d, d))
                                                       for n in QKV])
            state[f"{a}.attn.qkv.bias"] = torch.cat([take(f"{p}/{ATTN}/{n}/bias").reshape(d) for n in QKV])
            state[f"{a}.attn.out.weight"] = _dense(take(f"{p}/{ATTN}/out/kernel").reshape(d, d))
            state[f"{a}.attn.out.bias"] = take(f"{p}/{ATTN}/out/bias")
            state[f"{a}.norm2.weight"], state[f"{a}.norm2.bias"] = take(f"{p}/LayerNorm_1/scale"), take(
                f"{p}/LayerNorm_1/bias")
            for j in (1, 2):
                state[f"{a}.mlp.fc{j}.weight"] = _dense(take(f"{p}/MlpBlock_0/Dense_{j - 1}/kernel"))
                state[f"{a}.mlp.fc{j}.bias"] = take(f"{p}/MlpBlock_0/Dense_{j - 1}/bias")
        state["patch_embed.weight"] = take("embedding/kernel").permute(3, 2, 0, 1).contiguous()
        state["patch_embed.bias"] = take("embedding/bias")
        state["encoder_norm.weight"] = take("Transformer/encoder_norm/scale")
        state["encoder_norm.bias"] = take("Transformer/encoder_norm/bias")
        for name in ("pre_logits", "head"):
            if f"{name}/kernel" in rest:
                state[f"{name}.weight"], state[f"{name}.bias"] = _dense(take(f"{name}/kernel")), take(f"{name}/bias")
        for name in ("pos_embedding", "cls"):
            if name in rest:
                state[name] = take(name)
        if rest:
            raise AdapterError(f"big_vision checkpoint: unexpected: {', '.join(sorted(rest)[:8])}")
        return state


def resample_posemb(posemb: torch.Tensor, grid: int) -> torch.Tensor:
    """big_vision's resample_posemb: the (1, g*g, d) table as a g x g grid, zoomed bilinearly (scipy order 1)
    to grid x grid."""
    old = math.isqrt(posemb.shape[1])
    if old * old != posemb.shape[1]:
        raise AdapterError(f"pos_embedding: {posemb.shape[1]} positions are not a square grid; cannot resample")
    table = posemb.float().numpy().reshape(old, old, -1)
    zoomed = scipy.ndimage.zoom(table, (grid / old, grid / old, 1), order=1)
    return torch.from_numpy(np.ascontiguousarray(zoomed.reshape(1, grid * grid, -1)))
