"""Training images/s of mupvit's ViT and train step, side by side with timm's VisionTransformer of the
same shape, on synthetic data. timm's model starts from our weights (moved by the timm checkpoint adapter, its
position embedding frozen like our fixed sincos2d buffer) and its parameters get our µP roles through the same
adapter, so both take the identical step (loss, backward, global-norm clip, big_vision Adam) from the same point,
and the ratio measures the model implementations. The third step's losses are compared to prove it. Rounds
alternate between the two to share the machine's noise; the reported ratio is the median of per-round ratios.

    python benchmarks/train_throughput.py                  # CPU, small ViT (docs/PERFORMANCE.md)
    python benchmarks/train_throughput.py --gpu-s16        # CUDA: ViT-S/16, bf16 + torch.compile
    python benchmarks/train_throughput.py --tiny           # seconds: the test suite's smoke run
"""

from __future__ import annotations

import argparse
import functools
import json
import platform
import statistics
import time

import timm
import torch

from mupvit.config import ModelConfig, OptimConfig
from mupvit.models.adapters import adapter_for
from mupvit.models.adapters.base import full_state
from mupvit.models.adapters.timm_vit import NAMES
from mupvit.models.vit import ViT
from mupvit.optim import BigVisionAdam, build_optimizer, param_groups
from mupvit.train import train_step

OPTIM = OptimConfig(warmup_steps=1)
TOTAL_STEPS = 10**6


def timm_twin(ours: ViT, cfg: ModelConfig, image: int) -> torch.nn.Module:
    """timm's ViT in the simple-ViT shape (no class token, GAP, LayerNorm eps 1e-6, exact GELU) holding our weights."""
    theirs = timm.models.vision_transformer.VisionTransformer(
        img_size=image, patch_size=cfg.patch_size, num_classes=cfg.num_classes, embed_dim=cfg.width,
        depth=cfg.depth, num_heads=cfg.num_heads, mlp_ratio=cfg.mlp_dim / cfg.width, class_token=False,
        global_pool="avg", fc_norm=False, qkv_bias=True, norm_layer=functools.partial(torch.nn.LayerNorm, eps=1e-6),
    )
    theirs.load_state_dict(adapter_for("timm", cfg, image).to_foreign(full_state(ours)))
    theirs.pos_embed.requires_grad_(False)  # our sincos2d table is a constant buffer
    return theirs


def timm_optimizer(theirs: torch.nn.Module, ours: ViT) -> BigVisionAdam:
    roles = {NAMES.to_foreign(name): role for name, role in ours.param_roles().items()}
    return BigVisionAdam(param_groups(theirs, roles, ours.parametrization.hidden_lr_mult), OPTIM, TOTAL_STEPS)


def images_per_s(step, batch: int, steps: int) -> float:
    start = time.perf_counter()
    for _ in range(steps):
        step()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return batch * steps / (time.perf_counter() - start)


def compare_train_steps(cfg: ModelConfig, image: int, batch: int, steps: int, rounds: int, precision: str,
                        compile: bool, device: torch.device) -> dict:
    """Both models' train step on the same synthetic batch, timed in alternating rounds; their medians, the
    median per-round ratio and the third warm-up step's loss difference (0 when both take the identical step)."""
    torch.manual_seed(0)
    ours = ViT(cfg, image)
    theirs = timm_twin(ours, cfg, image)
    images = torch.randn(batch, 3, image, image, device=device)
    labels = torch.randint(0, cfg.num_classes, (batch,), device=device)

    step_fns, warm_loss = {}, {}
    optimizers = {"mupvit": lambda: build_optimizer(ours, OPTIM, TOTAL_STEPS),
                  "timm": lambda: timm_optimizer(theirs, ours)}
    for name, model in (("mupvit", ours), ("timm", theirs)):
        model = model.to(device).train()
        optimizer = optimizers[name]()
        forward = torch.compile(model) if compile else model
        counter = iter(range(1, 10**9))
        step_fns[name] = lambda f=forward, o=optimizer, c=counter: train_step(
            f, o, images, labels, next(c), 1, 1.0, precision)
        for _ in range(3):  # warm-up (and compilation); the third step's loss follows two identical updates
            warm_loss[name] = step_fns[name]()[0].item()

    rates: dict[str, list[float]] = {"mupvit": [], "timm": []}
    for round_index in range(rounds):
        order = ("mupvit", "timm") if round_index % 2 == 0 else ("timm", "mupvit")  # cancel order effects
        for name in order:
            rates[name].append(images_per_s(step_fns[name], batch, steps))
    ratios = [a / b for a, b in zip(rates["mupvit"], rates["timm"], strict=True)]
    return {
        "threads": torch.get_num_threads(), "precision": precision, "compile": compile,
        "shape": dict(width=cfg.width, depth=cfg.depth, heads=cfg.num_heads, mlp_dim=cfg.mlp_dim,
                      patch=cfg.patch_size, image=image, classes=cfg.num_classes),
        "batch": batch, "third_step_loss_diff": abs(warm_loss["mupvit"] - warm_loss["timm"]),
        "mupvit_images_per_s": statistics.median(rates["mupvit"]),
        "timm_images_per_s": statistics.median(rates["timm"]),
        "ratio_median": statistics.median(ratios), "ratio_min": min(ratios), "ratio_max": max(ratios),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--width", type=int, default=192)
    parser.add_argument("--depth", type=int, default=4)
    parser.add_argument("--heads", type=int, default=3)
    parser.add_argument("--patch", type=int, default=8)
    parser.add_argument("--image", type=int, default=64)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=5, help="timed steps per round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--gpu-s16", action="store_true", help="ViT-S/16 at 224, batch 256, bf16 + compile on CUDA")
    parser.add_argument("--tiny", action="store_true", help="a 1-block ViT on 16x16 images, 1 round (smoke run)")
    args = parser.parse_args()
    if args.tiny:
        args.width, args.depth, args.heads, args.patch, args.image = 32, 1, 2, 8, 16
        args.batch, args.steps, args.rounds = 8, 1, 1

    precision, compile_models, device = "fp32", False, torch.device("cpu")
    if args.gpu_s16:
        if not torch.cuda.is_available():
            parser.error("--gpu-s16 needs a CUDA device")
        args.width, args.depth, args.heads, args.patch, args.image = 384, 12, 6, 16, 224
        args.batch = 256 if args.batch == 64 else args.batch
        precision, compile_models, device = "bf16", True, torch.device("cuda")
    cfg = ModelConfig(variant=None, width=args.width, depth=args.depth, num_heads=args.heads, mlp_dim=4 * args.width,
                      patch_size=args.patch, num_classes=1000)
    result = compare_train_steps(cfg, args.image, args.batch, args.steps, args.rounds, precision, compile_models,
                                 device)
    device_name = torch.cuda.get_device_name() if device.type == "cuda" else platform.processor() or "cpu"
    print(json.dumps({"device": device_name, **result}, indent=2))


if __name__ == "__main__":
    main()
