"""experiments/ablations/: each file is the paper default (recipe_90ep.yaml) with exactly one intended change, so a
stray edit to any of them fails here."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from mupvit.config import flatten, load_config
from mupvit.results import paper_acc1
from orchestration.launch_config import load_launch

FOLDER = Path(__file__).resolve().parent.parent / "experiments" / "ablations"
RECIPE = "recipe_90ep.yaml"
# Per file: the keys that differ from recipe_90ep.yaml besides tracking.ablation and train.out_dir, with their values.
INTENDED: dict[str, dict[str, Any]] = {
    "recipe_90ep.yaml": {},
    "recipe_150ep.yaml": {"train.epochs": 150.0, "train.eval_at_epochs": [90.0, 150.0]},
    "recipe_300ep.yaml": {"train.epochs": 300.0, "train.eval_at_epochs": [90.0, 150.0, 300.0]},
    "head_linear.yaml": {"model.head": "linear"},
    "pool_cls.yaml": {"model.pool": "tok"},
    "posemb_learned.yaml": {"model.posemb": "learn"},
    "no_randaug_mixup.yaml": {"data.randaug_layers": 0, "data.mixup_alpha": 0.0},
    "batch_4096.yaml": {"train.batch_size": 4096},
}
BOOKKEEPING = {"tracking.ablation", "train.out_dir"}


def load_flat(name: str) -> dict[str, Any]:
    """The whole experiment (run and launch sections), flat."""
    return flatten(load_launch(FOLDER / name).to_dict())


def test_the_folder_holds_exactly_the_listed_ablations():
    assert sorted(p.name for p in FOLDER.glob("*.yaml")) == sorted(INTENDED)


@pytest.mark.parametrize("name", sorted(INTENDED))
def test_each_file_changes_exactly_its_intended_keys(name):
    recipe, config = load_flat(RECIPE), load_flat(name)
    differing = {key for key in recipe.keys() | config.keys() if recipe.get(key) != config.get(key)}
    assert differing - BOOKKEEPING == set(INTENDED[name]), name
    assert {key: config[key] for key in INTENDED[name]} == INTENDED[name]


def test_the_recipe_is_the_paper_default_in_its_own_experiment():
    recipe = load_flat(RECIPE)
    reference = flatten(load_launch(FOLDER.parent / "vit_s16_i1k_90ep_mlp_head.yaml").to_dict())
    differing = {key for key in recipe if recipe[key] != reference[key]}
    assert differing == {"tracking.experiment", "tracking.ablation", "train.out_dir"}
    assert paper_acc1(load_config(FOLDER / RECIPE)) == 76.5
    assert paper_acc1(load_config(FOLDER / "head_linear.yaml")) == 76.7


def test_tracking_sections_and_output_folders_are_distinct():
    configs = {name: load_launch(FOLDER / name) for name in INTENDED}
    assert {c.tracking.experiment for c in configs.values()} == {"vit_s16_i1k_ablations"}
    assert all(c.tracking.ablation for c in configs.values())
    keys = [(c.tracking.ablation, c.run.train.epochs) for c in configs.values()]
    assert len(set(keys)) == len(keys), keys  # one (ablation, epochs) cell of the report per file
    assert {c.tracking.ablation for c in configs.values()} == {
        "recipe", "head_linear", "pool_cls", "posemb_learned", "no_randaug_mixup", "batch_4096"}
    out_dirs = [c.run.train.out_dir for c in configs.values()]
    assert len(set(out_dirs)) == len(out_dirs)
