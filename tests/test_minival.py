"""The stratified minival: held out per class, deterministic, disjoint from training, selectable by name."""

from __future__ import annotations

import collections

import numpy as np

from mupvit.data import build_splits
from mupvit.data.datasets import Split
from mupvit.data.minival import split_minival, stratified_holdout

from .helpers import tiny_config


def _class_ordered_split(counts: list[int]) -> Split:
    # Ordered by class, like torchvision's ImageNet: a tail slice would hold out only the last class.
    samples = [(f"/img/{c}/{i}.jpg", c) for c, n in enumerate(counts) for i in range(n)]
    return Split("train", [str(c) for c in range(len(counts))], samples)


def test_every_class_held_out_in_proportion():
    counts = [1300, 732, 1000, 5, 1]
    rest, minival = split_minival(_class_ordered_split(counts), 0.01, seed=0)
    held = collections.Counter(label for _, label in minival.samples)
    assert held == {0: 13, 1: 7, 2: 10, 3: 1, 4: 1}  # round(1%), at least one per class
    assert len(rest) + len(minival) == sum(counts)


def test_disjoint_and_complete():
    source = _class_ordered_split([50, 60, 70])
    rest, minival = split_minival(source, 0.1, seed=3)
    assert not {p for p, _ in rest.samples} & {p for p, _ in minival.samples}
    assert sorted(rest.samples + minival.samples) == sorted(source.samples)
    assert rest.name == "train_minus_minival" and minival.name == "minival"


def test_deterministic_from_seed():
    labels = np.repeat(np.arange(20), 37)
    assert np.array_equal(stratified_holdout(labels, 0.05, 7), stratified_holdout(labels, 0.05, 7))
    assert not np.array_equal(stratified_holdout(labels, 0.05, 7), stratified_holdout(labels, 0.05, 8))


def test_selectable_by_name_from_the_config(digits_root, tmp_path):
    cfg = tiny_config(digits_root, tmp_path, **{
        "data.train_split": "train_minus_minival", "evals": {"minival": {"split": "minival"}, "val": {"split": "val"}},
        "data.minival_fraction": 0.05,
    })
    splits = build_splits(cfg)
    assert set(splits) == {"train", "train_minus_minival", "minival", "val"}
    assert len(splits["train_minus_minival"]) + len(splits["minival"]) == len(splits["train"])
    assert {label for _, label in splits["minival"].samples} == set(range(10))
