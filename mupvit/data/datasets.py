"""Image datasets as (path, label) lists, in ImageFolder, torchvision ImageNet or ImageNet-v2 layout, checked up
front."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

IMAGE_SUFFIXES = {".jpeg", ".jpg", ".png", ".bmp", ".webp"}


class DataError(ValueError):
    """The data on disk is not what the config says; the message names the path and the fix."""


def worker_message(err: Exception) -> str:
    """The original message of an error raised in a DataLoader worker (torch re-raises it with the worker's whole
    traceback as its text; the user needs its last line)."""
    text = str(err)
    if "Original Traceback" not in text:
        return text
    last = text.strip().splitlines()[-1]
    return last.split(": ", 1)[1] if ": " in last else last


@dataclass(frozen=True)
class Split:
    name: str
    classes: list[str]
    samples: list[tuple[str, int]]  # (absolute path, label)

    def __len__(self) -> int:
        return len(self.samples)


def _class_images(folder: Path) -> list[Path]:
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise DataError(f"class folder has no images: {folder} (suffixes {sorted(IMAGE_SUFFIXES)})")
    return files


def _imagefolder_split(root: Path, split: str) -> Split:
    folder = root / split
    if not folder.is_dir():
        raise DataError(f"split folder not found: {folder} (expected {root}/{split}/<class>/<image files>)")
    classes = sorted(p.name for p in folder.iterdir() if p.is_dir())
    if not classes:
        raise DataError(f"no class folders in {folder} (expected {folder}/<class>/<image files>)")
    samples = []
    for label, name in enumerate(classes):
        samples.extend((str(p), label) for p in _class_images(folder / name))
    return Split(split, classes, samples)


def _imagenet_split(root: Path, split: str) -> Split:
    from torchvision.datasets import ImageNet

    if not (root / "meta.bin").is_file():
        raise DataError(
            f"{root / 'meta.bin'} not found: the 'imagenet' layout is torchvision's ImageNet "
            "(meta.bin plus train/ and val/ class folders); use dataset 'imagefolder' for plain folders"
        )
    if not (root / split).is_dir():
        raise DataError(f"split folder not found: {root / split}")
    ds = ImageNet(str(root), split=split)
    return Split(split, list(ds.wnids), [(str(p), int(y)) for p, y in ds.samples])


def _imagenet_v2_split(root: Path, split: str, num_classes: int) -> Split:
    """ImageNet-v2 as its tarballs unpack: root/<split>/<class index>/<images>, the folders named 0..999 by the
    index of the ImageNet class (the order of the sorted wnids). The label is int(folder name), so the folders sort
    numerically ("10" after "2") and a missing folder shifts no other label. `classes` holds the index strings
    "0".."num_classes-1", so classes[label] is the folder name; they are not the train split's wnids, and the
    caller compares class counts, not names."""
    folder = root / split
    if not folder.is_dir():
        raise DataError(f"split folder not found: {folder} (expected {root}/{split}/<class index>/<image files>)")
    names = [p.name for p in folder.iterdir() if p.is_dir()]
    if not names:
        raise DataError(f"no class folders in {folder} (expected {folder}/<class index 0..{num_classes - 1}>/...)")
    not_index = sorted(name for name in names if not re.fullmatch(r"0|[1-9][0-9]*", name))
    if not_index:
        raise DataError(
            f"class folders of {folder} must be named by class index (0, 1, ..., {num_classes - 1}) in the "
            f"'imagenet_v2' layout; found {not_index[:5]}; for wnid-named folders use dataset 'imagefolder'"
        )
    highest = max(int(name) for name in names)
    if highest >= num_classes:
        raise DataError(
            f"class folder {folder / str(highest)} is past the {num_classes} classes (indices 0..{num_classes - 1}); "
            "the model's class count must cover the data (ImageNet-v2: folders 0..999, model.num_classes 1000)"
        )
    samples = []
    for label in sorted(int(name) for name in names):
        samples.extend((str(p), label) for p in _class_images(folder / str(label)))
    return Split(split, [str(i) for i in range(num_classes)], samples)


def load_split(layout: str, root: str | Path, split: str, num_classes: int | None = None) -> Split:
    """The split `split` under `root` in `layout` ('imagefolder', 'imagenet' or 'imagenet_v2'). `num_classes` is
    needed by 'imagenet_v2' only, whose folder names are label indices and do not say how many classes there are."""
    root = Path(root).expanduser().resolve()
    if not root.is_dir():
        raise DataError(f"data root not found: {root}")
    if layout == "imagenet":
        return _imagenet_split(root, split)
    if layout == "imagenet_v2":
        if num_classes is None:
            raise ValueError("load_split: layout 'imagenet_v2' needs num_classes (the train split's class count)")
        return _imagenet_v2_split(root, split, num_classes)
    return _imagefolder_split(root, split)


def load_splits(layout: str, root: str | Path, names: list[str]) -> dict[str, Split]:
    """Load the named splits and check they share one class set."""
    splits = {name: load_split(layout, root, name) for name in dict.fromkeys(names)}
    first = splits[names[0]]
    for split in splits.values():
        if split.classes != first.classes:
            only_a = sorted(set(first.classes) - set(split.classes))[:5]
            only_b = sorted(set(split.classes) - set(first.classes))[:5]
            raise DataError(
                f"class folders differ between {Path(root) / first.name} and {Path(root) / split.name}: "
                f"only in {first.name}: {only_a}, only in {split.name}: {only_b}"
            )
    return splits
