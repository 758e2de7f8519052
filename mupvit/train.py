"""The training loop: step-based over the deterministic stream, with periodic eval, N-epoch-equivalent
results, atomic checkpoints and exact resume. Run it with `python -m mupvit.train CONFIG [--set k=v ...]`.

Read top to bottom: setup (model, optimiser, resume), the step, eval at the scheduled steps, checkpoints, and
`run`, which strings them together.
"""

from __future__ import annotations

import argparse
import dataclasses
import signal
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from mupvit.checkpoint import checkpoint_path, load_checkpoint, load_latest_valid, save_checkpoint
from mupvit.config import (
    Config,
    ConfigError,
    accum_steps_at,
    add_set_argument,
    changed_settings,
    check_budget,
    load_config,
    steps_for_epochs,
    total_steps,
)
from mupvit.data import DataError, EvalSet, build_splits, device_augment, eval_loader, eval_sets, train_loader
from mupvit.data.datasets import worker_message
from mupvit.data.mixup import mix_images, mixup_coefficient, mixup_cross_entropy, rolled_within
from mupvit.data.prefetch import DevicePrefetcher
from mupvit.data.stream import RecoveredImages, TrainSample
from mupvit.device import device_memory, resolve_device
from mupvit.errors import OutputError
from mupvit.evaluate import evaluate
from mupvit.logger import ConsoleLogger, RunLogger
from mupvit.memory import check_memory
from mupvit.models.build import build_model
from mupvit.models.shapes import model_shape
from mupvit.models.vit import ViT
from mupvit.models.weights import load_weights
from mupvit.optim import BigVisionAdam, build_optimizer, clip_by_global_norm, describe_param_groups, model_param_groups
from mupvit.outputs import FolderLock, check_output_file, check_writable
from mupvit.results import add_summary_argument, emit_summary, result_name
from mupvit.stop_signals import stop_gracefully


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite."""


class StopRequested(Exception):
    """The run was asked to stop (`stop_requested`, e.g. a preemption notice): it saved the checkpoint of `step`,
    the last step it trained, and ended there; resuming from that checkpoint loses no step."""

    def __init__(self, step: int, checkpoint: str | None) -> None:
        super().__init__(f"stopped on request after step {step}; checkpoint {checkpoint or '(written by rank 0)'}")
        self.step, self.checkpoint = step, checkpoint


def check_resumable(saved: dict[str, Any], cfg: Config, path: Path) -> None:
    """Refuse to resume a checkpoint whose config differs from `cfg` in a setting that changes the optimisation
    (every config key not declared `resumable`)."""
    changed = changed_settings(saved, cfg)
    if changed:
        diffs = "; ".join(changed[:6])
        raise ConfigError(
            f"{path} was written by a different config ({diffs}). Resume with the same config, "
            "choose a new train.out_dir, or set train.resume=false to start over in a new directory"
        )


def train_step(model: nn.Module, optimizer: BigVisionAdam, images: torch.Tensor, labels: torch.Tensor,
               step: int, accum_steps: int, clip_norm: float | None, precision: str,
               mixup: float | None = None, mixup_groups: int = 1) -> tuple[torch.Tensor, torch.Tensor, float]:
    """One optimiser update over a batch cut into `accum_steps` micro-batches; the summed gradients of
    loss/accum_steps equal the full batch's gradient. `mixup` is the batch's MixUp coefficient, applied to the
    whole batch (each of its `mixup_groups` parts apart) before it is cut. Returns (loss, grad norm before
    clipping, lr); loss and norm are 0-dim tensors on the device, so that the step never waits for it."""
    device_type = images.device.type
    rolled = rolled_within(labels, mixup_groups)
    if mixup is not None:
        images = mix_images(images, mixup, mixup_groups)
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
    return loss_sum, grad_norm, lr


def eval_points(cfg: Config, n_train: int, steps: int) -> dict[int, list[float]]:
    """Step -> epoch-equivalents measured there; the periodic evals of every evaluator (its `every`, else
    train.eval_every) and the final step map to []."""
    points: dict[int, list[float]] = {}
    for every in {e.every or cfg.train.eval_every for e in cfg.evals.values()} - {None}:
        for s in range(every, steps + 1, every):
            points.setdefault(s, [])
    for ep in cfg.train.eval_at_epochs:
        points.setdefault(steps_for_epochs(ep, n_train, cfg.train.batch_size), []).append(ep)
    points.setdefault(steps, [])
    return points


def evaluators_due(cfg: Config, step: int, steps: int, epochs: list[float]) -> list[str]:
    """The evaluators that run at eval point `step`: all of them at an epoch-equivalent and at the final step,
    else those whose cadence divides the step."""
    if epochs or step == steps:
        return list(cfg.evals)
    return [name for name, e in cfg.evals.items() if (every := e.every or cfg.train.eval_every) and step % every == 0]


def process_group() -> tuple[int, int]:
    """(rank, world size) of the initialised torch.distributed group, or (0, 1) without one."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


@dataclass
class RunState:
    """What a run holds between steps: the model and optimiser, the schedule of evals, and what it has produced."""

    cfg: Config
    device: torch.device
    rank: int
    world: int
    model: ViT
    optimizer: BigVisionAdam
    splits: dict[str, Any]
    evals: dict[str, EvalSet]
    steps: int
    points: dict[int, list[float]]
    out_dir: Path
    start: int = 0
    results: dict[str, float | None] = field(default_factory=dict)
    last_eval: dict[str, dict[str, float]] = field(default_factory=dict)
    last_ckpt: str | None = None
    eval_pending: bool = False  # the checkpoint of `start` was saved when its eval failed: run that eval first


def setup(cfg: Config, device: torch.device | None, resume_from: str | Path | None) -> RunState:
    """Data, model and optimiser for `cfg`, restored from a checkpoint when resuming."""
    t = cfg.train
    rank, world = process_group()
    fewest = t.devices if t.min_devices is None else t.min_devices
    if not fewest <= world <= t.devices:
        wanted = t.devices if t.min_devices is None else f"{fewest} to {t.devices} (train.min_devices to devices)"
        raise ConfigError(
            f"train.devices: {wanted}, but this process group has {world} process(es); mupvit.train runs "
            "one process (use orchestration.train, which sets train.devices, for data-parallel runs)"
        )
    device = device or resolve_device(t.device)
    check_memory(cfg, *device_memory(device))  # before the data is read and the model allocated
    splits = build_splits(cfg)
    num_train = len(splits[cfg.data.train_split])
    check_budget(cfg, num_train)
    steps = total_steps(cfg, num_train)
    torch.manual_seed(t.seed)
    model = build_model(cfg).to(device)
    state = RunState(cfg, device, rank, world, model, build_optimizer(model, cfg.optim, steps), splits,
                     eval_sets(cfg, splits), steps, eval_points(cfg, num_train, steps),
                     Path(t.out_dir).expanduser().resolve())
    if resume_from:
        restore(state, Path(resume_from), load_checkpoint(resume_from, map_location=device))
    elif t.resume and (found := load_latest_valid(state.out_dir, device, warn)):
        restore(state, *found)
    elif rank == 0 and list(state.out_dir.glob("ckpt_*.pt")):
        raise ConfigError(f"train.out_dir: {state.out_dir} already holds checkpoints and train.resume is false; "
                          "choose an empty out_dir")
    elif t.init_from:
        load_weights(model, cfg, t.init_from, keep_head=not t.init_head)
    return state


def warn(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def restore(state: RunState, ckpt: Path, saved: dict[str, Any]) -> None:
    check_resumable(saved["config"], state.cfg, ckpt)
    state.model.load_state_dict(saved["model"])
    state.optimizer.load_state_dict(saved["optimizer"])
    torch.set_rng_state(saved["rng"])
    state.start, state.results, state.last_eval = saved["step"], saved["results"], saved["eval"]
    state.eval_pending = saved.get("eval_pending", False)  # absent in checkpoints written before it existed
    state.last_ckpt = str(ckpt)


def save(state: RunState, step: int, logger: RunLogger, eval_pending: bool = False) -> None:
    """Rank 0 writes the checkpoint of `step`; every rank tells the logger (path None where rank != 0).
    `eval_pending`: the eval scheduled at `step` has not run (it failed), so the resume runs it first."""
    if state.rank != 0:
        logger.checkpoint(step, None)
        return
    path = save_checkpoint(state.out_dir, step, {
        "model": state.model.state_dict(), "optimizer": state.optimizer.state_dict(), "rng": torch.get_rng_state(),
        "stream_position": step * state.cfg.train.batch_size, "config": state.cfg.to_dict(),
        "results": state.results, "eval": state.last_eval, "eval_pending": eval_pending,
    }, state.cfg.train.keep_ckpts)
    state.last_ckpt = str(path)
    logger.checkpoint(step, state.last_ckpt)


def run_evals(state: RunState, step: int, loaders: dict[str, Any], forward: nn.Module) -> dict[str, float]:
    """The evaluators due at `step`, and the N-epoch-equivalent results scheduled there (the headline's top-1)."""
    values = {}
    for name in evaluators_due(state.cfg, step, state.steps, state.points[step]):
        state.last_eval[name] = evaluate(forward, loaders[name], state.device, state.cfg.train.precision,
                                         fixed_shape=state.cfg.train.compile,
                                         real_labels=state.evals[name].real_labels)
        values.update({f"{name}/{k}": v for k, v in state.last_eval[name].items()})
    headline = state.cfg.headline()
    primary = state.last_eval[headline]["acc1"] if headline else None
    for ep in state.points[step]:
        state.results[result_name(ep)] = primary
        values[result_name(ep)] = primary
    return values


def forwards(state: RunState) -> tuple[nn.Module, nn.Module]:
    """(train forward, eval forward): DDP-wrapped on several ranks, compiled when train.compile is set.

    The position embedding buffer is a constant: synced once when DDP wraps the model, not at every forward. Eval
    runs on the bare model, since each rank evaluates its own shard and DDP's collectives would need the same number
    of forwards everywhere."""
    model, device, compile_ = state.model, state.device, state.cfg.train.compile
    wrapped = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None,
                                      forward_sync_buffers=False) if state.world > 1 else model
    forward = torch.compile(wrapped) if compile_ else wrapped
    return forward, forward if state.world == 1 else torch.compile(model) if compile_ else model


class StopVote:
    """Whether any rank was asked to stop, agreed by all at the same step: one all-reduce of a CPU int a step in a
    gloo group (the default group on CPU; a second one beside NCCL), so the check never waits for the device."""

    def __init__(self, state: RunState, requested: Callable[[], bool]) -> None:
        self.requested, self.world = requested, state.world
        self.group = None if state.world == 1 or dist.get_backend() == "gloo" else dist.new_group(backend="gloo")

    def agreed(self) -> bool:
        if self.world == 1:
            return self.requested()
        flag = torch.tensor(int(self.requested()), dtype=torch.int32)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX, group=self.group)
        return bool(flag.item())


def global_count(count: int, state: RunState) -> int:
    """`count` summed over the ranks (called by every rank at the same step)."""
    if state.world == 1:
        return count
    total = torch.tensor(count, dtype=torch.int64, device=state.device)
    dist.all_reduce(total)
    return int(total.item())


class LossWatch:
    """Divergence found without a host sync per step: each step's loss stays on the device, and a device flag
    records whether any loss since the last check was NaN or infinite. `check` reads both (one transfer, and on
    several ranks one all-reduce, so that every rank takes the same decision) at log, eval and checkpoint steps."""

    def __init__(self, state: RunState) -> None:
        self.state = state
        self.checked = state.start  # every loss up to this step was finite
        self.loss = torch.zeros((), device=state.device)
        self.bad = torch.zeros((), dtype=torch.bool, device=state.device)

    def add(self, loss: torch.Tensor) -> None:
        self.loss = loss
        self.bad |= ~torch.isfinite(loss)

    def check(self, step: int) -> float:
        """The global batch's loss at `step` (the last one added); raises TrainingDiverged when a loss since the
        last check was not finite, naming the steps it happened between and the last (good) checkpoint."""
        values = torch.stack([self.loss, self.bad.to(self.loss.dtype)])
        if self.state.world > 1:
            values = values.double()
            dist.all_reduce(values)
        total, bad = values.tolist()
        if bad:
            first = self.checked + 1
            where = f"at step {step}" if first == step else f"between steps {first} and {step}"
            raise TrainingDiverged(
                f"loss became NaN or infinite {where}; last good checkpoint: {self.state.last_ckpt or 'none'}. "
                "Lower optim.lr or raise optim.warmup_steps"
            )
        self.checked = step
        return total / self.state.world  # exact for one rank


class Throughput:
    """Train images/s and the fraction of step time spent waiting for data, per log interval and overall."""

    def __init__(self) -> None:
        self.train_time = self.data_time = self.interval_time = 0.0
        self.interval_images = self.images = 0

    def add(self, step_s: float, data_s: float, images: int) -> None:
        self.train_time += step_s
        self.interval_time += step_s
        self.data_time += data_s
        self.interval_images += images
        self.images += images

    def interval(self) -> dict[str, float]:
        """The interval's figures; starts the next interval."""
        out = {"train/images_per_s": self.interval_images / self.interval_time,
               "train/data_time_frac": self.data_time / self.interval_time}
        self.interval_images, self.interval_time, self.data_time = 0, 0.0, 0.0
        return out


# What makes a run's train batches, with train_loader's signature (cfg, split, start_step, end_step, rank, world,
# pin_memory): train_loader itself, or a launcher's pipeline that yields the same TrainSample batches.
TrainBatches = Callable[..., Iterable[TrainSample]]


def run(cfg: Config, logger: RunLogger | None = None, stop_at_step: int | None = None, *,
        device: torch.device | None = None, resume_from: str | Path | None = None,
        batches: TrainBatches | None = None, stop_requested: Callable[[], bool] | None = None) -> dict[str, Any]:
    """Train (or resume) the run described by `cfg`; return the summary. `stop_at_step` ends the run early
    after that many steps, with a checkpoint, as a preemption would.

    In an initialised torch.distributed group of train.devices processes (as a launcher such as Ray Train
    sets up) the model is wrapped in DDP and each rank takes its 1/world share of every global batch, so the
    optimisation is that of one process with the whole batch. Only rank 0 writes checkpoints; every rank calls
    the logger (rank != 0 gets path None from `checkpoint`). `resume_from` names the checkpoint file to resume
    from instead of the newest one in train.out_dir; `device` overrides train.device. `batches` makes the train
    batches (default train_loader); data.pipeline ray_data needs one from orchestration, which has the cluster.
    `stop_requested` is asked after every step on every rank (a preemption notice): once any rank says yes, all
    save that step's checkpoint and raise StopRequested.

    Rank 0 first checks that train.out_dir is writable and locks it for the run, so a second process on the same
    folder is refused instead of pruning this one's checkpoints.
    """
    logger = logger or ConsoleLogger()
    if batches is None and cfg.data.pipeline != "local":
        raise ConfigError(f"data.pipeline: {cfg.data.pipeline} runs the input as Ray Data tasks on a Ray cluster, "
                          "which needs orchestration.train (python -m orchestration.train CONFIG); python -m "
                          "mupvit.train runs data.pipeline=local")
    batches = batches or train_loader
    if process_group()[0] != 0:
        return train(cfg, logger, stop_at_step, device, resume_from, batches, stop_requested)
    out_dir = Path(cfg.train.out_dir).expanduser().resolve()
    check_writable(out_dir, "train.out_dir")
    with FolderLock(out_dir, "train.out_dir"):
        return train(cfg, logger, stop_at_step, device, resume_from, batches, stop_requested)


def batch_mover(device: torch.device) -> Callable[[TrainSample], TrainSample]:
    """Moves a train batch's images and labels to `device` (asynchronous copies from pinned memory); the counts of
    skipped files and the augmentation plans stay on the host, where reading them needs no device sync."""
    def move(batch: TrainSample) -> TrainSample:
        return batch._replace(image=batch.image.to(device, non_blocking=True),
                              label=batch.label.to(device, non_blocking=True))
    return move


def run_info(state: RunState) -> dict[str, Any]:
    """What logger.start records about the run beside its config: the values the config resolved to (the model's
    shape, the step budget and its epochs, the devices) and where this attempt started."""
    cfg, p = state.cfg, state.model.parametrization
    n_train = len(state.splits[cfg.data.train_split])
    return {**dataclasses.asdict(model_shape(cfg.model)), "parametrization": p.name, "width_mult": p.width_mult,
            "total_steps": state.steps, "epochs": state.steps * cfg.train.batch_size / n_train,
            "train_images": n_train, "devices": state.world,
            "accum_steps": accum_steps_at(cfg.train, state.world), "device": str(state.device),
            "start_step": state.start, "resumed_from": state.last_ckpt, "out_dir": str(state.out_dir)}


def stopped_by_bad_data(err: DataError, state: RunState, step: int, watch: LossWatch, logger: RunLogger,
                        in_eval: bool = False) -> DataError:
    """The one-line error for a bad file met before `step` (or in its eval, `in_eval`), after saving the steps
    trained since the last checkpoint (one process only: with several ranks the others would wait in the
    checkpoint's collective). A checkpoint saved for a failed eval is marked so that the resume runs that eval."""
    unsaved = state.last_ckpt != str(checkpoint_path(state.out_dir, step))
    if state.world == 1 and step > state.start and unsaved:
        watch.check(step)  # never save a diverged model
        save(state, step, logger, eval_pending=in_eval)
    where = f"in the eval of step {step}" if in_eval else f"at step {step}"
    return DataError(f"{worker_message(err)} (stopped {where}; last checkpoint: {state.last_ckpt or 'none'}; "
                     "run the same command to resume)")


def eval_point(state: RunState, step: int, loaders: dict[str, Any], forward: nn.Module, watch: LossWatch,
               logger: RunLogger) -> None:
    """The evals scheduled at `step`; a bad eval file saves the trained steps first, then stops the run."""
    try:
        logger.metrics(step, run_evals(state, step, loaders, forward))
    except DataError as err:
        raise stopped_by_bad_data(err, state, step, watch, logger, in_eval=True) from None


def train(cfg: Config, logger: RunLogger, stop_at_step: int | None, device: torch.device | None,
          resume_from: str | Path | None, batches: TrainBatches = train_loader,
          stop_requested: Callable[[], bool] | None = None) -> dict[str, Any]:
    """The run itself, in the order big_vision's train.py reads: setup, then step, eval and checkpoint."""
    t = cfg.train
    state = setup(cfg, device, resume_from)
    end = state.steps if stop_at_step is None else min(state.steps, stop_at_step)
    forward, eval_forward = forwards(state)
    logger.start(cfg.to_dict(), run_info(state))
    pin = state.device.type == "cuda"
    loaders = {name: eval_loader(cfg, e.split, pin, state.rank, state.world, e.real_labels is not None, e.config)
               for name, e in state.evals.items()}
    batches = DevicePrefetcher(batches(cfg, state.splits[cfg.data.train_split], state.start, end, state.rank,
                                       state.world, pin_memory=pin), state.device, batch_mover(state.device))
    augment = device_augment(cfg)  # data.augment_on device: flip, RandAugment and scale here, on the whole batch
    wall0, speed = time.perf_counter(), Throughput()
    skipping = cfg.data.on_bad_image == "skip"
    skipped, skipped_total = 0, 0  # bad files passed over in this log interval (this rank), and in all
    recovered, recovered_total = RecoveredImages(state.splits[cfg.data.train_split], warn), 0
    state.model.train()
    watch = LossWatch(state)
    vote = StopVote(state, stop_requested) if stop_requested is not None else None
    # With fewer devices than train.devices (an elastic run), each takes more micro-batches and mixes each
    # device's share of train.devices apart: the same global batch, samples and MixUp pairs.
    accum_steps, mixup_groups = accum_steps_at(t, state.world), t.devices // state.world
    if state.eval_pending and state.start in state.points:  # resumed where an eval failed (a bad file): it first
        eval_point(state, state.start, loaders, eval_forward, watch, logger)
        save(state, state.start, logger)
    for step in range(state.start, end):
        tick = time.perf_counter()
        try:
            images, labels, passed_over, plans, recovered_files = next(batches)
        except DataError as err:  # a bad file met mid-run: keep what was trained, then one clear line
            raise stopped_by_bad_data(err, state, step, watch, logger) from None
        images = augment(images, plans)  # the plans stay on the host: grouping by op never waits for the device
        skipped += int(passed_over.sum())
        recovered.add(recovered_files)
        fetched = time.perf_counter()
        loss, grad_norm, lr = train_step(forward, state.optimizer, images, labels, step, accum_steps,
                                         cfg.optim.clip_norm, t.precision,
                                         mixup_coefficient(t.seed, step, cfg.data.mixup_alpha), mixup_groups)
        watch.add(loss)
        done = step + 1
        logging = done % t.log_every == 0 or done == end
        saving = bool(t.ckpt_every and done % t.ckpt_every == 0) or done == end
        # The only host sync of a step, where its numbers are needed; before the timer stops, so that the steps'
        # time includes the device work queued since the last one.
        global_loss = watch.check(done) if logging or saving or done in state.points else None
        speed.add(time.perf_counter() - tick, fetched - tick, len(labels) * state.world)
        if logging:
            param_norm = torch.linalg.vector_norm(torch.stack([p.detach().norm() for p in state.model.parameters()]))
            values = {"train/loss": global_loss, "train/lr": lr, "train/grad_norm": grad_norm.item(),
                      "train/param_norm": param_norm.item(), **speed.interval()}
            if skipping:
                values["train/skipped_images"] = global_count(skipped, state)
                skipped_total, skipped = skipped_total + int(values["train/skipped_images"]), 0
            if found := global_count(recovered.take_count(), state):  # every rank: a collective with several
                values["train/recovered_images"] = found
                recovered_total += found
            logger.metrics(done, values)
        if done in state.points:
            eval_point(state, done, loaders, eval_forward, watch, logger)
        if saving:
            save(state, done, logger)
        if vote is not None and done < end and vote.agreed():
            if not saving:
                save(state, done, logger)
            raise StopRequested(done, state.last_ckpt if state.rank == 0 else None)
    summary: dict[str, Any] = {
        "steps": end, "total_steps": state.steps, "finished": end == state.steps,
        "wall_s": time.perf_counter() - wall0,
        "images_per_s": speed.images / speed.train_time if speed.train_time else 0.0,
        "eval": state.last_eval, **state.last_eval, **state.results, "checkpoint": state.last_ckpt,
        "out_dir": str(state.out_dir), **({"skipped_images": skipped_total} if skipping else {}),
        **({"recovered_images": recovered_total} if recovered_total else {}),
    }
    logger.end(summary)
    return summary


def param_groups_report(cfg: Config) -> str:
    """The model's parametrization and its optimiser groups, as --print-param-groups shows them."""
    model = build_model(cfg)
    p = model.parametrization
    head = (f"parametrization {p.name}: width_mult {p.width_mult:g}, hidden lr x {p.hidden_lr_mult:g}, "
            f"readout input x {p.readout_mult:g}, attention scale {p.attn_scale:.6g}")
    return head + "\n" + describe_param_groups(model_param_groups(model), cfg.optim.weight_decay)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mupvit.train", description=__doc__)
    parser.add_argument("config", help="experiment YAML, e.g. experiments/demo_digits.yaml")
    add_set_argument(parser)
    add_summary_argument(parser)
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
        if args.summary_json:
            check_output_file(Path(args.summary_json).expanduser().resolve(), "--summary-json")
        # Ctrl-C or SIGTERM (`kill`, a scheduler's preemption): the step under way ends, its checkpoint is saved.
        with stop_gracefully(lambda: True) as received:
            summary = run(cfg, stop_requested=lambda: bool(received))
    except (ConfigError, DataError, OutputError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except TrainingDiverged as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    except StopRequested as stop:
        print(f"stopped ({signal.Signals(received[0]).name}) after step {stop.step}, checkpoint {stop.checkpoint}; "
              "run the same command to resume from it", file=sys.stderr)
        return 130
    except KeyboardInterrupt:  # a second signal, or one before the loop could stop in order
        print("interrupted: run the same command to resume from the last checkpoint", file=sys.stderr)
        return 130
    emit_summary({k: v for k, v in summary.items() if k != "eval"}, args.summary_json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
