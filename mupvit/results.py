"""Names and numbers of run results that the loop, orchestration and the dashboards share, without importing the
loop (no torch): the N-epoch-equivalent result names, the paper's reference numbers, the MLflow tag that carries
a run's reference, the train-loss window of the sweeps' default metric, and the JSON summary line."""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path
from typing import Any

from mupvit.config import Config, flatten
from mupvit.models.shapes import model_shape

# The paper's numbers (Beyer, Zhai, Kolesnikov 2022, "Better plain ViT baselines for ImageNet-1k", arXiv
# 2205.01580), in %, by (ablation, epochs). ImageNet-1k val top-1: Table 1, "Ablation of our trivial
# modifications", columns 90 / 150 / 300 epochs (row names: docs/ABLATIONS.md).
PAPER_TOP1: dict[tuple[str, float], float] = {
    (name, epochs): top1 for name, row in {
        "recipe": (76.5, 78.5, 80.0), "no_randaug_mixup": (73.6, 73.7, 73.7), "posemb_learned": (75.0, 78.0, 79.6),
        "batch_4096": (74.7, 77.3, 78.6), "pool_cls": (75.0, 76.9, 78.2), "head_linear": (76.7, 78.6, 79.8),
    }.items() for epochs, top1 in zip((90.0, 150.0, 300.0), row, strict=True)}
# ImageNet-ReaL and ImageNet-v2 top-1 of the recipe (MLP head): Table 2, "A few more standard metrics", rows "Our
# improvements" 90ep / 150ep / 300ep. The paper gives them for no other setting.
PAPER_REAL: dict[tuple[str, float], float] = {("recipe", 90.0): 83.1, ("recipe", 150.0): 84.5, ("recipe", 300.0): 85.4}
PAPER_V2: dict[tuple[str, float], float] = {("recipe", 90.0): 64.2, ("recipe", 150.0): 66.4, ("recipe", 300.0): 68.3}
PAPER_EPOCHS = 90.0  # paper_acc1 is a 90-epoch number
PAPER_TAG = "mupvit.paper_acc1"  # MLflow tag with a run's paper_acc1, when the paper has one
# MLflow tags with the paper's ReaL and v2 top-1 for a run's setting (paper_real_v2), when the paper has them
PAPER_REAL_TAG, PAPER_V2_TAG = "mupvit.paper_real", "mupvit.paper_v2"
# The paper's recipe (big_vision's vit_s16_i1k config, docs/RECIPE.md) as dotted config keys. The head and the
# epoch budget are left out: the paper reports both heads and several budgets (the report shows them as columns).
PAPER_RECIPE: dict[str, Any] = {
    "data.dataset": "imagenet", "data.train_split": "train_minus_minival", "data.image_size": 224,
    "data.eval_resize": 256, "data.eval_resize_method": "tf_area", "data.crop": "tf", "data.crop_area": [0.05, 1.0],
    "data.crop_aspect": [0.75, 1.33], "data.flip": True, "data.antialias": False, "data.randaug_layers": 2,
    "data.randaug_magnitude": 10, "data.randaug_contrast": "big_vision", "data.mixup_alpha": 0.2,
    "model.variant": "S/16", "model.posemb": "sincos2d", "model.pool": "gap", "model.gelu": "tanh",
    "model.parametrization": "sp", "optim.lr": 0.001, "optim.b1": 0.9, "optim.b2": 0.999, "optim.eps": 1e-08,
    "optim.weight_decay": 0.0001, "optim.clip_norm": 1.0, "optim.warmup_steps": 10000, "optim.mu_dtype": "bfloat16",
    "train.batch_size": 1024,
}
# How a departure reads where "key=value" would say less.
_DEPARTURE_TEXT = {("data.train_split", "train"): "train 100% instead of 99%"}
# train/loss_avg, the sweeps' default metric: mean of the last LOSS_WINDOW logged train losses
LOSS_WINDOW = 20
_RESULT = re.compile(r"^acc1_at_(.+)ep$")


def epoch_label(epochs: float) -> str:
    return f"{epochs:g}"


def result_name(epochs: float) -> str:
    """The metric of top-1 at an N-epoch-equivalent: acc1_at_<N>ep."""
    return f"acc1_at_{epoch_label(epochs)}ep"


def result_epochs(name: str) -> float | None:
    """N of a result_name (acc1_at_90ep -> 90.0); None for any other name."""
    match = _RESULT.match(name)
    if not match:
        return None
    try:
        return float(match.group(1))
    except ValueError:
        return None


def _paper_recipe(cfg: Config) -> bool:
    """Whether `cfg` is the paper's 90-epoch S/16 recipe (either head)."""
    d, m, o, t = cfg.data, cfg.model, cfg.optim, cfg.train
    return (d.dataset == "imagenet" and m.variant == "S/16" and m.width in (None, 384) and m.pool == "gap"
            and m.posemb == "sincos2d" and t.batch_size == 1024 and t.epochs == PAPER_EPOCHS
            and t.total_steps is None and o.lr == 1e-3 and o.weight_decay == 1e-4 and d.randaug_layers == 2
            and d.randaug_magnitude == 10 and d.mixup_alpha == 0.2 and m.parametrization == "sp")


def paper_acc1(cfg: Config) -> float | None:
    """The paper's top-1 for this exact setting, when it gives one: the 90-epoch S/16 recipe with the MLP head
    (76.5) or with a linear head (76.7)."""
    if not _paper_recipe(cfg):
        return None
    return PAPER_TOP1["recipe" if cfg.model.head == "mlp" else "head_linear", PAPER_EPOCHS]


def paper_real_v2(cfg: Config) -> tuple[float | None, float | None]:
    """The paper's ImageNet-ReaL and ImageNet-v2 top-1 for this exact setting: the 90-epoch recipe with the MLP head
    (83.1, 64.2); (None, None) elsewhere (the paper gives none for the linear head)."""
    if not (_paper_recipe(cfg) and cfg.model.head == "mlp"):
        return None, None
    return PAPER_REAL["recipe", PAPER_EPOCHS], PAPER_V2["recipe", PAPER_EPOCHS]


def special_evaluators(cfg: Config) -> dict[str, str]:
    """{"real": name, "v2": name} of the evaluators that measure ImageNet-ReaL (real_labels set) and ImageNet-v2
    (layout imagenet_v2), where the config has them."""
    out = {}
    for name, e in cfg.evals.items():
        if e.real_labels:
            out.setdefault("real", name)
        elif e.layout == "imagenet_v2":
            out.setdefault("v2", name)
    return out


def departures(cfg: Config) -> list[str]:
    """Where a run's config departs from the paper's recipe, e.g. ["gelu=exact", "crop=torchvision",
    "train 100% instead of 99%"]."""
    settings = flatten(cfg.to_dict())
    out = []
    for key, paper in PAPER_RECIPE.items():
        value = settings[key]
        if value != paper:
            out.append(_DEPARTURE_TEXT.get((key, str(value)), f"{key.split('.', 1)[1]}={value}"))
    width = model_shape(cfg.model).width
    if cfg.model.variant == "S/16" and width != 384:
        out.append(f"width={width}")
    return out


def describe_eval(values: dict[str, float]) -> str:
    """One evaluator's result as text: top-1, and top-5 and loss where the evaluator has them (ReaL has not)."""
    parts = [f"top-1 {100 * values['acc1']:.2f}%"]
    if "acc5" in values:
        parts += [f"top-5 {100 * values['acc5']:.2f}%", f"loss {values['loss']:.4f}"]
    return "  ".join(parts)


def add_summary_argument(parser: argparse.ArgumentParser) -> None:
    """The `--summary-json PATH` flag of the CLIs that end with `emit_summary`."""
    parser.add_argument("--summary-json", metavar="PATH", help="also write the final JSON summary to PATH")


def emit_summary(summary: dict[str, Any], path: str | None = None) -> None:
    """The summary as one JSON line: the last line of stdout, and the whole of `path` when given."""
    line = json.dumps(summary, default=str)
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)  # the probe before the work made and removed it
        Path(path).write_text(line + "\n")
    print(line)
