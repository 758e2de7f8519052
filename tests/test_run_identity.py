"""One declaration of what may change on resume: every key of the run's config either keeps the run's name (the
fingerprint orchestration names runs by) and resumes, or changes the name and is refused on resume."""

from __future__ import annotations

import typing
from pathlib import Path
from typing import Any, Literal

import pytest

from mupvit.config import RESUMABLE_KEYS, Config, build_config, changed_settings, load_config, run_fingerprint
from mupvit.schema import leaf_fields, matches

REPO = Path(__file__).resolve().parent.parent
DEMO = load_config(REPO / "experiments" / "demo_digits.yaml")
# Every leaf key, an evaluator's keys through the demo's "val" evaluator.
FIELDS = {key.replace("*", "val"): tp for key, _, tp in leaf_fields(Config)}
# The settings that may change without changing the optimisation: where the data lives, how often to log, evaluate
# and save, how many files to keep, how many loader processes and where they run, compiling, the device, the output
# folder.
EXPECTED_RESUMABLE = {
    "data.root", "data.cache_dir", "data.cache_max_gb", "data.num_workers", "data.eval_batch_size", "data.pipeline",
    "train.log_every", "train.eval_every",
    "train.ckpt_every", "train.keep_ckpts", "train.out_dir", "train.resume", "train.compile", "train.device",
    "evals.*.root", "evals.*.real_labels", "evals.*.every",
}


def another_value(tp: Any, value: Any) -> Any:
    """A value of type `tp` that differs from `value`."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is Literal:
        return next(a for a in args if a != value)
    if origin is not None and type(None) in args:  # an optional: null <-> a value of the other type
        inner = next(a for a in args if a is not type(None))
        return None if value is not None else another_value(inner, None)
    if origin is list:
        return [*(value or []), another_value(args[0], None)]
    return {bool: lambda: not value, int: lambda: (value or 0) + 1, float: lambda: (value or 0.0) + 0.5,
            str: lambda: f"{value or ''}x"}[tp]()


def current(cfg: Config, key: str) -> Any:
    node = cfg.to_dict()
    for part in key.split("."):
        node = node[part]
    return node


def changed(cfg: Config, key: str, value: Any) -> Config:
    tree = cfg.to_dict()
    *path, name = key.split(".")
    node = tree
    for part in path:
        node = node[part]
    node[name] = value
    return build_config(tree)


def test_the_resumable_keys_are_the_declared_ones():
    assert set(RESUMABLE_KEYS) == EXPECTED_RESUMABLE


@pytest.mark.parametrize("key", sorted(FIELDS))
def test_every_key_either_keeps_the_name_and_resumes_or_changes_it_and_is_refused(key):
    other = changed(DEMO, key, another_value(FIELDS[key], current(DEMO, key)))
    same_name = run_fingerprint(other) == run_fingerprint(DEMO)
    resumes = not changed_settings(DEMO.to_dict(), other)
    assert same_name == resumes == matches(key, RESUMABLE_KEYS), (key, same_name, resumes)


def test_an_added_evaluator_changes_the_name():
    tree = DEMO.to_dict()
    tree["evals"]["v2"] = {"split": "val"}
    assert run_fingerprint(build_config(tree)) != run_fingerprint(DEMO)


def test_a_checkpoint_written_with_launch_sections_resumes():
    """Checkpoints of earlier versions carry cluster and tracking sections in their config: not the run's."""
    saved = {**DEMO.to_dict(), "cluster": {"num_workers": 1}, "tracking": {"experiment": "demo"}}
    assert changed_settings(saved, DEMO) == []
    assert changed_settings(saved, changed(DEMO, "optim.lr", 0.5)) == ["optim.lr: 0.003 -> 0.5"]
