"""ImageNet-ReaL label sets (Beyer et al. 2020, "Are we done with ImageNet?"), aligned with a val split.

real.json (https://github.com/google-research/reassessed-imagenet) is a JSON list with one entry per ImageNet
val image in file-name order: entry i belongs to ILSVRC2012_val_{i+1:08d}.JPEG and lists the class indices
(0..999) its raters found correct, possibly none. A val Split lists its images in class-folder order, so the
entries are matched to the split by file name: the i-th basename in sorted order gets entry i.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import torch

from mupvit.data.datasets import DataError, Split
from mupvit.errors import shown

FIX = "use the real.json of https://github.com/google-research/reassessed-imagenet, unmodified"


def _entries(path: Path) -> list[list[int]]:
    if not path.is_file():
        raise DataError(f"ReaL labels not found: {path}; {FIX}")
    try:
        entries = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise DataError(f"{path} is not JSON ({err}); {FIX}") from None
    if not isinstance(entries, list):
        raise DataError(f"{path} holds a JSON {type(entries).__name__}, not a list of label lists; {FIX}")
    for i, entry in enumerate(entries):
        # bool is an int in Python; true/false in the file is an error, not class 1/0
        if not isinstance(entry, list) or not all(isinstance(x, int) and not isinstance(x, bool) for x in entry):
            raise DataError(f"{path}: entry {i} is {shown(entry)}, not a list of class indices; {FIX}")
    return entries


def load_real_labels(path: str | Path, split: Split) -> torch.Tensor:
    """The ReaL label set of every image of `split`, in split.samples order: an int64 tensor (N, K) whose row i
    holds the classes of samples[i] padded with -1 (K the largest set, at least 1; an empty set is all -1).

    Raises DataError, naming the file and the fix, when the file is missing, not JSON, not a list of lists of
    ints, has a label outside the split's classes, or a length other than the split's image count, and when
    two images of the split share a file name (the match by name would be ambiguous)."""
    path = Path(path).expanduser()
    entries = _entries(path)
    names = [Path(p).name for p, _ in split.samples]
    twice = [name for name, count in Counter(names).items() if count > 1]
    if twice:
        where = [p for p, _ in split.samples if Path(p).name == twice[0]]
        raise DataError(
            f"split '{split.name}' has {len(twice)} file name(s) used more than once, e.g. {twice[0]} at {where}; "
            f"ReaL labels ({path}) are matched by file name, so each name must be unique"
        )
    if len(entries) != len(names):
        raise DataError(
            f"{path} has {len(entries)} entries but split '{split.name}' has {len(names)} images; ReaL labels "
            "belong to the full ImageNet val split (50,000 images): evaluate ReaL on that split, unfiltered"
        )
    n_classes = len(split.classes)
    for i, entry in enumerate(entries):
        bad = [x for x in entry if not 0 <= x < n_classes]
        if bad:
            raise DataError(
                f"{path}: entry {i} has label {bad[0]}, outside the {n_classes} classes of split '{split.name}' "
                f"(0..{n_classes - 1}); {FIX}"
            )
    labels = torch.full((len(names), max([1, *map(len, entries)])), -1, dtype=torch.int64)
    order = sorted(range(len(names)), key=names.__getitem__)  # order[j]: the sample whose name sorts j-th
    for sample, entry in zip(order, entries, strict=True):
        labels[sample, :len(entry)] = torch.tensor(entry, dtype=torch.int64)
    return labels
