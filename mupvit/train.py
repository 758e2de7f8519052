"""The training loop: step-based over the deterministic stream, with periodic eval, N-epoch-equivalent
results, atomic checkpoints and exact resume. Run it with `python -m mupvit.train CONFIG [--set k=v ...]`."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from mupvit.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from mupvit.config import Config, ConfigError, load_config, steps_for_epochs, total_steps, validate
from mupvit.data import DataError, build_splits, eval_loader, train_loader
from mupvit.data.mixup import mix_images, mixup_coefficient, mixup_cross_entropy
from mupvit.evaluate import evaluate
from mupvit.logger import ConsoleLogger, RunLogger
from mupvit.model import ViT
from mupvit.optim import BigVisionAdam, build_optimizer, clip_by_global_norm, describe_param_groups, param_groups

# Keys that may change between a checkpoint and its resume without changing the optimisation.
RESUMABLE_CHANGES = {
    "data.num_workers", "data.eval_batch_size", "data.root", "train.log_every", "train.eval_every",
    "train.ckpt_every", "train.keep_ckpts", "train.out_dir", "train.resume", "train.compile", "train.device",
}
RESUMABLE_SECTIONS = ("cluster.", "tracking.")  # where and how a run is launched and recorded


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite."""


def epoch_label(epochs: float) -> str:
    return f"{epochs:g}"


def result_name(epochs: float) -> str:
    return f"acc1_at_{epoch_label(epochs)}ep"


def resolve_device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("train.device: 'cuda' requested but no CUDA device is visible; use 'auto' or 'cpu'")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def _flat(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def check_resumable(saved: dict[str, Any], cfg: Config, path: Path) -> None:
    old, new = _flat(saved), _flat(cfg.to_dict())
    changed = sorted(k for k in old.keys() | new.keys() if old.get(k) != new.get(k) and k not in RESUMABLE_CHANGES
                     and not k.startswith(RESUMABLE_SECTIONS))
    if changed:
        diffs = "; ".join(f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in changed[:6])
        raise ConfigError(
            f"{path} was written by a different config ({diffs}). Resume with the same config, "
            "choose a new train.out_dir, or set train.resume=false to start over in a new directory"
        )


def train_step(model: nn.Module, optimizer: BigVisionAdam, images: torch.Tensor, labels: torch.Tensor,
               step: int, accum_steps: int, clip_norm: float | None, precision: str,
               mixup: float | None = None) -> tuple[float, float, float]:
    """One optimiser update over a batch cut into `accum_steps` micro-batches; the summed gradients of
    loss/accum_steps equal the full batch's gradient. `mixup` is the batch's MixUp coefficient, applied to the
    whole batch before it is cut. Returns (loss, grad norm before clipping, lr)."""
    device_type = images.device.type
    rolled = labels.roll(1, dims=0)
    if mixup is not None:
        images = mix_images(images, mixup)
    loss_sum = torch.zeros((), device=images.device)
    chunks = zip(images.chunk(accum_steps), labels.chunk(accum_steps), rolled.chunk(accum_steps), strict=True)
    for x, y, y_rolled in chunks:
        with torch.autocast(device_type, dtype=torch.bfloat16, enabled=precision == "bf16"):
            logits = model(x).float()
        if mixup is None:
            loss = F.cross_entropy(logits, y) / accum_steps
        else:
            loss = mixup_cross_entropy(logits, y, y_rolled, mixup) / accum_steps
        loss.backward()
        loss_sum += loss.detach()
    grad_norm = clip_by_global_norm(model.parameters(), clip_norm)
    lr = optimizer.step(step)
    optimizer.zero_grad()
    return loss_sum.item(), grad_norm.item(), lr


def eval_points(cfg: Config, n_train: int, steps: int) -> dict[int, list[float]]:
    """Step -> epoch-equivalents measured there; periodic evals and the final step map to []."""
    points: dict[int, list[float]] = {}
    if cfg.train.eval_every:
        for s in range(cfg.train.eval_every, steps + 1, cfg.train.eval_every):
            points.setdefault(s, [])
    for ep in cfg.train.eval_at_epochs:
        points.setdefault(steps_for_epochs(ep, n_train, cfg.train.batch_size), []).append(ep)
    points.setdefault(steps, [])
    return points


def process_group() -> tuple[int, int]:
    """(rank, world size) of the initialised torch.distributed group, or (0, 1) without one."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def run(cfg: Config, logger: RunLogger | None = None, stop_at_step: int | None = None, *,
        device: torch.device | None = None, resume_from: str | Path | None = None) -> dict[str, Any]:
    """Train (or resume) the run described by `cfg`; return the summary. `stop_at_step` ends the run early
    after that many steps, with a checkpoint, as a preemption would.

    In an initialised torch.distributed group of train.devices processes (as a launcher such as Ray Train
    sets up) the model is wrapped in DDP and each rank takes its 1/world share of every global batch, so the
    optimisation is that of one process with the whole batch. Only rank 0 writes checkpoints; every rank calls
    the logger (rank != 0 gets path None from `checkpoint`). `resume_from` names the checkpoint file to resume
    from instead of the newest one in train.out_dir; `device` overrides train.device.
    """
    logger = logger or ConsoleLogger()
    t = cfg.train
    rank, world = process_group()
    if t.devices != world:
        raise ConfigError(
            f"train.devices: {t.devices}, but this process group has {world} process(es); mupvit.train runs "
            "one process (use orchestration.train, which sets train.devices, for data-parallel runs)"
        )
    device = device or resolve_device(t.device)
    splits = build_splits(cfg)
    train_split = splits[cfg.data.train_split]
    validate(cfg, num_train=len(train_split))
    steps = total_steps(cfg, len(train_split))
    points = eval_points(cfg, len(train_split), steps)
    out_dir = Path(t.out_dir).expanduser().resolve()

    torch.manual_seed(t.seed)
    model = ViT(cfg.model, cfg.data.image_size).to(device)
    optimizer = build_optimizer(model, cfg.optim, steps)
    start, results, last_eval = 0, {}, {}
    ckpt = Path(resume_from) if resume_from else latest_checkpoint(out_dir) if t.resume else None
    if ckpt is None and rank == 0 and list(out_dir.glob("ckpt_*.pt")):
        raise ConfigError(f"train.out_dir: {out_dir} already holds checkpoints and train.resume is false; "
                          "choose an empty out_dir")
    if ckpt is not None:
        state = load_checkpoint(ckpt, map_location=device)
        check_resumable(state["config"], cfg, ckpt)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        torch.set_rng_state(state["rng"])
        start, results, last_eval = state["step"], state["results"], state["eval"]
    end = steps if stop_at_step is None else min(steps, stop_at_step)
    # The position embedding buffer is a constant: no buffer broadcasts. Eval runs on the bare model, since each
    # rank evaluates its own shard and DDP's collectives would need the same number of forwards everywhere.
    wrapped = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None,
                                      broadcast_buffers=False) if world > 1 else model
    forward = torch.compile(wrapped) if t.compile else wrapped
    eval_forward = forward if world == 1 else torch.compile(model) if t.compile else model

    logger.start(cfg.to_dict(), {
        "total_steps": steps, "start_step": start, "device": str(device), "train_images": len(train_split),
        "resumed_from": str(ckpt) if ckpt else None, "out_dir": str(out_dir),
        "parametrization": model.parametrization.name, "width_mult": model.parametrization.width_mult,
    })
    pin = device.type == "cuda"
    eval_sets = {name: eval_loader(cfg, splits[name], pin, rank, world) for name in cfg.data.eval_splits}
    batches = iter(train_loader(cfg, train_split, start, end, rank, world, pin_memory=pin))
    last_ckpt = str(ckpt) if ckpt else None

    def save(step: int) -> None:
        nonlocal last_ckpt
        if rank != 0:
            logger.checkpoint(step, None)
            return
        path = save_checkpoint(out_dir, step, {
            "model": model.state_dict(), "optimizer": optimizer.state_dict(), "rng": torch.get_rng_state(),
            "stream_position": step * t.batch_size, "config": cfg.to_dict(), "results": results, "eval": last_eval,
        }, t.keep_ckpts)
        last_ckpt = str(path)
        logger.checkpoint(step, last_ckpt)

    wall0 = time.perf_counter()
    train_time = data_time = interval_time = 0.0
    interval_images = trained_images = 0
    model.train()
    for step in range(start, end):
        tick = time.perf_counter()
        images, labels = next(batches)
        images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
        fetched = time.perf_counter()
        loss, grad_norm, lr = train_step(forward, optimizer, images, labels, step, t.accum_steps, cfg.optim.clip_norm,
                                         t.precision, mixup_coefficient(t.seed, step, cfg.data.mixup_alpha))
        if world > 1:  # the global batch's loss, and the same divergence decision on every rank
            loss_t = torch.tensor(loss, dtype=torch.float64, device=device)
            dist.all_reduce(loss_t)
            loss = loss_t.item() / world
        done = step + 1
        if not torch.isfinite(torch.tensor(loss)):
            raise TrainingDiverged(
                f"loss became {loss} at step {done}; last good checkpoint: {last_ckpt or 'none'}. "
                "Lower optim.lr or raise optim.warmup_steps"
            )
        elapsed = time.perf_counter() - tick
        train_time += elapsed
        interval_time += elapsed
        data_time += fetched - tick
        interval_images += len(labels) * world
        trained_images += len(labels) * world
        if done % t.log_every == 0 or done == end:
            param_norm = torch.linalg.vector_norm(torch.stack([p.detach().norm() for p in model.parameters()]))
            logger.metrics(done, {
                "train/loss": loss, "train/lr": lr, "train/grad_norm": grad_norm,
                "train/param_norm": param_norm.item(), "train/images_per_s": interval_images / interval_time,
                "train/data_time_frac": data_time / interval_time,
            })
            interval_images, interval_time, data_time = 0, 0.0, 0.0
        if done in points:
            values = {}
            for name, loader in eval_sets.items():
                last_eval[name] = evaluate(eval_forward, loader, device, t.precision)
                values.update({f"{name}/{k}": v for k, v in last_eval[name].items()})
            primary = last_eval[cfg.data.eval_splits[0]]["acc1"] if eval_sets else None
            for ep in points[done]:
                results[result_name(ep)] = primary
                values[result_name(ep)] = primary
            logger.metrics(done, values)
        if (t.ckpt_every and done % t.ckpt_every == 0) or done == end:
            save(done)

    wall = time.perf_counter() - wall0
    summary: dict[str, Any] = {
        "steps": end, "total_steps": steps, "finished": end == steps, "wall_s": wall,
        "images_per_s": trained_images / train_time if train_time else 0.0,
        "eval": last_eval, **last_eval, **results, "checkpoint": last_ckpt, "out_dir": str(out_dir),
    }
    logger.end(summary)
    return summary


def emit_summary(summary: dict[str, Any], path: str | None = None) -> None:
    """The summary as one JSON line: the last line of stdout, and the whole of `path` when given."""
    line = json.dumps(summary, default=str)
    if path:
        Path(path).write_text(line + "\n")
    print(line)


def param_groups_report(cfg: Config) -> str:
    """The model's parametrization and its optimiser groups, as --print-param-groups shows them."""
    model = ViT(cfg.model, cfg.data.image_size)
    p = model.parametrization
    head = (f"parametrization {p.name}: width_mult {p.width_mult:g}, hidden lr x {p.hidden_lr_mult:g}, "
            f"readout input x {p.readout_mult:g}, attention scale {p.attn_scale:.6g}")
    return head + "\n" + describe_param_groups(param_groups(model), cfg.optim.weight_decay)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mupvit.train", description=__doc__)
    parser.add_argument("config", help="experiment YAML, e.g. experiments/demo_digits.yaml")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value, e.g. --set optim.lr=3e-3 (repeatable)")
    parser.add_argument("--summary-json", metavar="PATH", help="also write the final JSON summary to PATH")
    parser.add_argument("--print-config", action="store_true", help="print the resolved config as YAML and exit")
    parser.add_argument("--print-param-groups", action="store_true",
                        help="print the optimiser's parameter groups (µP role, lr multiplier, weight decay) and exit")
    args = parser.parse_args(argv)
    try:
        cfg = load_config(args.config, args.overrides)
        if args.print_config:
            print(cfg.to_yaml(), end="")
            return 0
        if args.print_param_groups:
            print(param_groups_report(cfg))
            return 0
        summary = run(cfg)
    except (ConfigError, DataError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except TrainingDiverged as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    emit_summary({k: v for k, v in summary.items() if k != "eval"}, args.summary_json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
