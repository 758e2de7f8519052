"""Datasets, the deterministic training stream, transforms and loaders, built from the config."""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Subset

from mupvit.config import Config, DataConfig, EvalConfig
from mupvit.data.batched_augment import augment_batch
from mupvit.data.cache import ReadThroughCache
from mupvit.data.datasets import DataError, Split, join_root, load_split, load_splits
from mupvit.data.decode import Decoded, decode_image, decode_noting
from mupvit.data.digits import build_digits
from mupvit.data.minival import MINIVAL, TRAIN_MINUS_MINIVAL, split_minival
from mupvit.data.randaugment import RandAugment
from mupvit.data.real_labels import load_real_labels
from mupvit.data.stream import EvalDataset, StreamBatchSampler, StreamDataset
from mupvit.data.transforms import EvalTransform, TrainTransform

__all__ = ["DataError", "Split", "EvalSet", "build_splits", "eval_sets", "train_stream", "train_loader",
           "device_augment", "eval_loader"]


def data_root(cfg: Config) -> tuple[str | Path, str]:
    """(root, layout) of data.root (building the demo data if asked)."""
    d = cfg.data
    if d.dataset == "digits":
        return build_digits(d.root or None), "imagefolder"
    return d.root, d.dataset


def build_splits(cfg: Config) -> dict[str, Split]:
    """Load the train split and the splits of data.root that evaluators name, by split name."""
    d = cfg.data
    root, layout = data_root(cfg)
    wanted = [d.train_split, *(e.split for e in cfg.evals.values() if e.root is None)]
    held_out = {MINIVAL, TRAIN_MINUS_MINIVAL} & set(wanted)
    on_disk = [name for name in wanted if name not in held_out] + ([d.minival_from] if held_out else [])
    splits = load_splits(layout, root, on_disk)
    if held_out:
        rest, minival = split_minival(splits[d.minival_from], d.minival_fraction, d.minival_seed)
        splits.update({rest.name: rest, minival.name: minival})
    n_classes = len(splits[d.train_split].classes)
    if n_classes != cfg.model.num_classes:
        raise DataError(
            f"{join_root(root, d.train_split)} has {n_classes} classes but model.num_classes is "
            f"{cfg.model.num_classes}; set --set model.num_classes={n_classes}"
        )
    n_train = len(splits[d.train_split])
    if d.num_train_examples is not None and d.num_train_examples != n_train:
        raise DataError(
            f"{join_root(root, d.train_split)} has {n_train} images but data.num_train_examples is "
            f"{d.num_train_examples}; fix the data or set --set data.num_train_examples={n_train}"
        )
    return splits


@dataclass(frozen=True)
class EvalSet:
    """One evaluator's data: its config, its split, and for ImageNet-ReaL the label sets aligned with the split."""

    config: EvalConfig
    split: Split
    real_labels: torch.Tensor | None = None


def eval_sets(cfg: Config, splits: dict[str, Split]) -> dict[str, EvalSet]:
    """Every evaluator's data, by evaluator name: a split of data.root (from `splits`, build_splits' result) or of
    its own root, whose classes must be the train split's (ImageNet-v2: label indices below model.num_classes)."""
    train = splits[cfg.data.train_split]
    out = {}
    for name, e in cfg.evals.items():
        if e.root is None:
            split = splits[e.split]
        else:
            layout = e.layout or ("imagefolder" if cfg.data.dataset == "digits" else cfg.data.dataset)
            split = load_split(layout, e.root, e.split, num_classes=cfg.model.num_classes)
            if layout != "imagenet_v2" and split.classes != train.classes:
                raise DataError(f"evals.{name}: the classes of {join_root(e.root, e.split)} are not those of the train "
                                f"split ({len(split.classes)} vs {len(train.classes)} class folders, or other names)")
        real = load_real_labels(Path(e.real_labels).expanduser(), split) if e.real_labels else None
        out[name] = EvalSet(e, split, real)
    return out


def read_cache(d: DataConfig) -> ReadThroughCache | None:
    """The node-local cache of bucket objects (data.cache_dir), or None."""
    return ReadThroughCache(d.cache_dir, int(d.cache_max_gb * 2**30)) if d.cache_dir else None


def decoder(cfg: Config) -> Callable[[str], torch.Tensor]:
    """The image decoder of data.decode; train and eval decode alike, as in big_vision."""
    return functools.partial(decode_image, method=cfg.data.decode, max_pixels=cfg.data.max_image_pixels,
                             cache=read_cache(cfg.data))


def noting_decoder(cfg: Config) -> Callable[[str], Decoded]:
    """`decoder`, also noting a JPEG only Pillow could decode: the train stream counts and names such files."""
    return functools.partial(decode_noting, method=cfg.data.decode, max_pixels=cfg.data.max_image_pixels,
                             cache=read_cache(cfg.data))


def _loader_kwargs(cfg: Config, pin_memory: bool) -> dict:
    workers = cfg.data.num_workers
    return {
        "num_workers": workers,
        "pin_memory": pin_memory,
        "persistent_workers": False,
        **({"prefetch_factor": 4} if workers else {}),
    }


def _randaugment(d: DataConfig) -> RandAugment | None:
    return RandAugment(d.randaug_layers, d.randaug_magnitude, d.randaug_contrast) if d.randaug_layers else None


def train_stream(cfg: Config, split: Split) -> StreamDataset:
    """The train stream of `split`: position -> TrainSample, the loader's whole per-sample work (read, decode, crop,
    and the augmentation or with data.augment_on device its plan). train_loader's workers run it, and so do
    data.pipeline ray_data's tasks (orchestration/ray_data_input.py)."""
    d = cfg.data
    transform = TrainTransform(d.image_size, d.crop_area, d.crop_aspect, d.crop, d.flip, d.antialias,
                               _randaugment(d))
    per_sample = transform if d.augment_on == "loader" else transform.crop_and_plan
    return StreamDataset(split, per_sample, cfg.train.seed, noting_decoder(cfg), skip_bad=d.on_bad_image == "skip")


def train_loader(cfg: Config, split: Split, start_step: int, end_step: int, rank: int = 0, world: int = 1,
                 pin_memory: bool = False) -> DataLoader:
    """Batches of TrainSample for steps [start_step, end_step); with data.augment_on device, uint8 crops and their
    plans, for `device_augment` to finish."""
    return DataLoader(
        train_stream(cfg, split),
        batch_sampler=StreamBatchSampler(start_step, end_step, cfg.train.batch_size, rank, world),
        **_loader_kwargs(cfg, pin_memory),
    )


def _as_loaded(images: torch.Tensor, plans: torch.Tensor) -> torch.Tensor:
    return images


def device_augment(cfg: Config) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """What the trainer does to a train batch (images, plans) once the images are on its device: with
    data.augment_on device, the flip, RandAugment and [-1, 1] scale that the loader left undone
    (mupvit/data/batched_augment.py); with loader, nothing."""
    if cfg.data.augment_on == "loader":
        return _as_loaded
    return functools.partial(augment_batch, randaugment=_randaugment(cfg.data))


def eval_loader(cfg: Config, split: Split, pin_memory: bool = False, rank: int = 0, world: int = 1,
                index_labels: bool = False, evaluator: EvalConfig | None = None) -> DataLoader:
    """The eval pipeline over `split` (with `evaluator`'s resize where it sets one), or over every world-th image
    from `rank` when evaluation is sharded. With `index_labels` each label is the image's index in split.samples
    (for `evaluate(..., real_labels=...)`)."""
    d, e = cfg.data, evaluator or EvalConfig()
    transform = EvalTransform(d.image_size, e.resize or d.eval_resize, e.resize_method or d.eval_resize_method)
    dataset = EvalDataset(split, transform, decoder(cfg), index_labels)
    return DataLoader(
        dataset if world == 1 else Subset(dataset, range(rank, len(dataset), world)),
        batch_size=d.eval_batch_size, shuffle=False, **_loader_kwargs(cfg, pin_memory),
    )
