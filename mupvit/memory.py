"""A run's memory per device, estimated from the config's shapes before anything is allocated, so that a typo such as
`model.width=1000000` (petabytes) is refused with one line naming the key instead of the allocator's traceback.
torch-free: the config's checks call it, for every launcher, before any data, cluster or MLflow work.

The estimate, per device:
- parameters: counted exactly from the shapes (the modules of mupvit/models/vit.py; tests/test_memory.py compares
  the count with the built model's);
- model state: 4 bytes per parameter for the weights, 4 for their gradients, 4 for Adam's second moment and 4 or 2
  for its first (`optim.mu_dtype`);
- activations of one step, upper-ish: what backward keeps of each block, per token: in fp32, 9 x width (LayerNorm
  inputs and outputs, q, k, v, the attention output and its reshaped copy) + 2 x mlp_dim (fc1 and GELU outputs) +
  num_heads x tokens (one attention score matrix, which the unfused attention keeps and fused kernels do not), 4
  bytes each; in bf16 the LayerNorms' inputs and outputs (4 x width) stay fp32, and the rest, with the bf16 copies
  of the two LayerNorm outputs the matmuls take (7 x width in all), is 2 bytes. Times tokens x depth x the
  micro-batch (train.batch_size / train.devices / train.accum_steps), plus the input images. The loss, the head,
  the eval (no gradients) and the allocator's slack are left out: they are small beside the blocks at any size
  this check exists for.

Two comparisons: `validate` against MAX_DEVICE_BYTES, what no single device holds (so a launcher refuses before it
reserves a cluster), and `mupvit.train`'s setup against the memory of the device it trains on (CUDA: the GPU's total
memory; CPU: the host's RAM).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from mupvit.errors import ConfigError
from mupvit.models.shapes import model_shape

if TYPE_CHECKING:
    from mupvit.config import Config

# More than any single device: the largest accelerators hold 288 GB, and a machine that trains on its CPUs with more
# than 4 TiB of RAM is no target of this project. A run estimated above this fits nowhere.
MAX_DEVICE_BYTES = 4 * 2**40
LONG_SEQUENCE = 4096  # tokens per image beyond which the image size, not the batch, is named as the cause


def param_count(cfg: Config) -> int:
    """The model's number of parameters, exactly, from the config's shapes."""
    m, s = cfg.model, model_shape(cfg.model)
    w, mlp, tokens = s.width, s.mlp_dim, (cfg.data.image_size // s.patch_size) ** 2
    block = 4 * w * w + 2 * w * mlp + 9 * w + mlp  # qkv, out, fc1, fc2 (+ biases) and two LayerNorms
    count = 3 * s.patch_size**2 * w + w + s.depth * block + 2 * w + w * m.num_classes + m.num_classes
    count += tokens * w if m.posemb == "learn" else 0
    count += w if m.pool == "tok" else 0
    count += w * w + w if m.head == "mlp" else 0
    return count


def state_bytes(cfg: Config) -> int:
    """Weights, gradients and Adam's two moments."""
    return param_count(cfg) * (12 + (2 if cfg.optim.mu_dtype == "bfloat16" else 4))


def micro_batch(cfg: Config) -> int:
    """Images per device per forward/backward."""
    t = cfg.train
    return max(1, t.batch_size // (t.devices * t.accum_steps))


def step_bytes(cfg: Config) -> int:
    """The activations of one micro-batch's forward and backward (the module docstring's upper-ish estimate)."""
    s = model_shape(cfg.model)
    tokens = (cfg.data.image_size // s.patch_size) ** 2 + (cfg.model.pool == "tok")
    if cfg.train.precision == "bf16":
        per_token = 4 * 4 * s.width + 2 * (7 * s.width + 2 * s.mlp_dim + s.num_heads * tokens)
    else:
        per_token = 4 * (9 * s.width + 2 * s.mlp_dim + s.num_heads * tokens)
    images = 3 * cfg.data.image_size**2 * 4
    return micro_batch(cfg) * (tokens * s.depth * per_token + images)


def size(n: int) -> str:
    """Bytes in decimal units: 12.3 TB."""
    value, units = float(n), ["B", "KB", "MB", "GB", "TB", "PB", "EB", "ZB", "YB"]
    for unit in units[:-1]:
        if value < 1000:
            return f"{value:.3g} {unit}"
        value /= 1000
    return f"{value:.3g} {units[-1]}"


def check_memory(cfg: Config, available: int, where: str) -> None:
    """A ConfigError naming the key behind the size when the estimate exceeds `available` bytes; `where` introduces
    them in the message ("this host's RAM is", "cuda:0 (NVIDIA H100 80GB HBM3) has")."""
    state, step = state_bytes(cfg), step_bytes(cfg)
    if state + step <= available:
        return
    s, t = model_shape(cfg.model), cfg.train
    tokens = (cfg.data.image_size // s.patch_size) ** 2
    if state >= step:
        key = f"model.width={s.width} (depth {s.depth}, mlp_dim {s.mlp_dim})"
    elif tokens > LONG_SEQUENCE:
        key = f"data.image_size={cfg.data.image_size} ({tokens} tokens of patch {s.patch_size})"
    else:
        key = f"train.batch_size={t.batch_size}"
    raise ConfigError(
        f"{key}: the model needs ~{size(state)} for its {param_count(cfg):,} parameters and their gradients and "
        f"Adam state, a step ~{size(step)} of activations at {micro_batch(cfg)} images per device "
        f"(train.batch_size {t.batch_size} / {t.devices} devices / {t.accum_steps} accum_steps, {t.precision}); "
        f"{where} {size(available)}. Shrink the model or image, or raise train.accum_steps or train.devices"
    )
