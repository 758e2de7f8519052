"""Evaluators as big_vision declares them (config `evals`): each with its data, resize and cadence, one headline;
ImageNet-ReaL label sets and the ImageNet-v2 layout wired through a real training run."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
import torch

from mupvit.checkpoint import load_checkpoint
from mupvit.config import ConfigError
from mupvit.data import build_splits, eval_loader, eval_sets
from mupvit.models.build import build_model
from mupvit.train import run

from .helpers import QuietLogger, real_json, tiny_config


def v2_copy(val_samples: list[tuple[str, int]], root: Path) -> Path:
    """The digits val split in ImageNet-v2's layout: class folders named by label index."""
    for path, label in val_samples:
        folder = root / "val_v2" / str(label)
        folder.mkdir(parents=True, exist_ok=True)
        os.symlink(path, folder / Path(path).name)
    return root


@pytest.fixture(scope="module")
def evaluated(digits_root, tmp_path_factory):
    folder = tmp_path_factory.mktemp("evaluators")
    val = build_splits(tiny_config(digits_root, folder / "probe"))["val"].samples
    sets = real_json(val, folder / "real.json")
    evals = {"val": {"split": "val", "every": 4}, "real": {"split": "val", "real_labels": str(folder / "real.json"),
                                                          "every": 8},
             "v2": {"root": str(v2_copy(val, folder / "v2")), "layout": "imagenet_v2", "split": "val_v2"},
             "minival": {"split": "minival", "headline": True, "every": 2}}
    cfg = tiny_config(digits_root, folder / "run", **{"evals": evals, "train.eval_every": 4,
                                                     "train.eval_at_epochs": [0.05]})
    logger = QuietLogger()
    summary = run(cfg, logger)
    return cfg, summary, logger, sets


def logged_steps(logger: QuietLogger, key: str) -> list[int]:
    return [step for kind, (step, values) in logger.events if kind == "metrics" and key in values]


def test_each_evaluator_runs_at_its_own_cadence(evaluated):
    _, _, logger, _ = evaluated
    # 0.05 epochs of 1,438 images at batch 32 is step round(2.25) = 2, and step 8 is the last: all evaluators run.
    assert logged_steps(logger, "minival/acc1") == [2, 4, 6, 8]
    assert logged_steps(logger, "val/acc1") == [2, 4, 8]
    assert logged_steps(logger, "v2/acc1") == [2, 4, 8]  # no `every`: train.eval_every
    assert logged_steps(logger, "real/acc1") == [2, 8]
    (at_2,) = [values for kind, (step, values) in logger.events if kind == "metrics" and "acc1_at_0.05ep" in values]
    assert at_2["acc1_at_0.05ep"] == at_2["minival/acc1"]  # the headline's top-1


def test_real_top1_is_counted_over_non_empty_sets_against_any_correct_label(evaluated):
    cfg, summary, _, sets = evaluated
    model = build_model(cfg)
    model.load_state_dict(load_checkpoint(summary["checkpoint"])["model"])
    model.eval()
    val = build_splits(cfg)["val"]
    with torch.no_grad():
        predictions = torch.cat([model(images).argmax(-1) for images, _ in eval_loader(cfg, val)]).tolist()
    scored = [(p, s) for p, s in zip(predictions, sets, strict=True) if s]
    assert summary["real"]["images"] == len(scored) == len(sets) - len(range(0, len(sets), 5))
    assert summary["real"]["acc1"] == pytest.approx(sum(p in s for p, s in scored) / len(scored))
    assert "acc5" not in summary["real"]


def test_v2_layout_labels_by_folder_index(evaluated):
    """The v2 copy holds the val images under folders named by label: the same top-1, loss and top-5."""
    _, summary, _, _ = evaluated
    assert summary["v2"] == summary["val"]


def test_an_evaluator_resize_is_its_own(digits_root, tmp_path):
    cfg = tiny_config(digits_root, tmp_path, **{"data.eval_resize": 16, "evals": {
        "val": {"split": "val"}, "big": {"split": "val", "resize": 24, "resize_method": "torchvision_bilinear"}}})
    sets = eval_sets(cfg, build_splits(cfg))
    plain, big = (eval_loader(cfg, e.split, evaluator=e.config).dataset.transform for e in sets.values())
    assert (plain.resize, plain.method) == (16, "tf_area") and (big.resize, big.method) == (24, "torchvision_bilinear")


@pytest.mark.parametrize("evals, message", [
    ({"a": {"headline": True}, "b": {"headline": True}}, "evals: a, b are all marked headline"),
    ({"a": {"layout": "imagenet_v2"}}, "evals.a.layout: 'imagenet_v2' describes evals.a.root, which is not set"),
    ({"a": {"resize": 8}}, "evals.a.resize: 8 must be >= data.image_size=16"),
    ({"a": {"every": 0}}, "evals.a.every: got 0, expected a positive number"),
    ({"a": {"root": "/x", "split": "minival"}}, "evals.a.split: 'minival' is held out"),
    ({"a": {"splt": "val"}}, "evals.a: unknown key(s) splt"),
    ({"a": {"root": "/x", "layout": "imagenet_v2", "real_labels": "r.json"}}, "ReaL labels belong to ImageNet's val"),
    ({}, "evals: empty, but train.eval_every is set"),
])
def test_bad_evaluators_fail_naming_the_key(digits_root, tmp_path, evals, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        tiny_config(digits_root, tmp_path, evals=evals)


def test_the_headline_defaults_to_the_first_evaluator_in_file_order(digits_root, tmp_path):
    cfg = tiny_config(digits_root, tmp_path, evals={"z": {"split": "val"}, "a": {"split": "val"}})
    assert list(cfg.evals) == ["z", "a"] and cfg.headline() == "z"


def test_missing_evaluator_data_fails_naming_it(digits_root, tmp_path):
    cfg = tiny_config(digits_root, tmp_path, evals={"real": {"split": "val", "real_labels": str(tmp_path / "no.json")},
                                                    "v2": {"root": str(tmp_path), "split": "nope"}})
    with pytest.raises(ValueError, match="no.json"):
        eval_sets(cfg, build_splits(cfg))
