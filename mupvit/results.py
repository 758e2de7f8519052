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

# The paper's ImageNet-1k val top-1 (%) by (ablation, epochs): only the numbers docs/RECIPE.md records;
# 300 epochs is the abstract's "~80".
PAPER_TOP1: dict[tuple[str, float], float] = {("recipe", 90.0): 76.5, ("head_linear", 90.0): 76.7,
                                              ("recipe", 300.0): 80.0}
PAPER_EPOCHS = 90.0  # paper_acc1 is a 90-epoch number
PAPER_TAG = "mupvit.paper_acc1"  # MLflow tag with a run's paper_acc1, when the paper has one
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


def paper_acc1(cfg: Config) -> float | None:
    """The paper's top-1 for this exact setting, when it gives one: the 90-epoch S/16 recipe with the MLP head
    (76.5) or with a linear head (76.7)."""
    d, m, o, t = cfg.data, cfg.model, cfg.optim, cfg.train
    recipe = (d.dataset == "imagenet" and m.variant == "S/16" and m.width in (None, 384) and m.pool == "gap"
              and m.posemb == "sincos2d" and t.batch_size == 1024 and t.epochs == PAPER_EPOCHS
              and t.total_steps is None and o.lr == 1e-3 and o.weight_decay == 1e-4 and d.randaug_layers == 2
              and d.randaug_magnitude == 10 and d.mixup_alpha == 0.2 and m.parametrization == "sp")
    if not recipe:
        return None
    return PAPER_TOP1["recipe" if m.head == "mlp" else "head_linear", PAPER_EPOCHS]


def departures(cfg: Config) -> list[str]:
    """Where a run's config departs from the paper's recipe, e.g. ["gelu=exact", "crop=torchvision",
    "train 100% instead of 99%"]."""
    settings = flatten(cfg.to_dict())
    out = []
    for key, paper in PAPER_RECIPE.items():
        value = settings[key]
        if value != paper:
            out.append(_DEPARTURE_TEXT.get((key, value), f"{key.split('.', 1)[1]}={value}"))
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
        Path(path).write_text(line + "\n")
    print(line)
