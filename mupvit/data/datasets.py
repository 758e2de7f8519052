"""Image datasets as (path, label) lists, in ImageFolder or torchvision ImageNet layout, checked up front."""

from __future__ import annotations

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


def _imagefolder_split(root: Path, split: str) -> Split:
    folder = root / split
    if not folder.is_dir():
        raise DataError(f"split folder not found: {folder} (expected {root}/{split}/<class>/<image files>)")
    classes = sorted(p.name for p in folder.iterdir() if p.is_dir())
    if not classes:
        raise DataError(f"no class folders in {folder} (expected {folder}/<class>/<image files>)")
    samples = []
    for label, name in enumerate(classes):
        files = sorted(p for p in (folder / name).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise DataError(f"class folder has no images: {folder / name} (suffixes {sorted(IMAGE_SUFFIXES)})")
        samples.extend((str(p), label) for p in files)
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


def load_split(layout: str, root: str | Path, split: str) -> Split:
    root = Path(root).expanduser().resolve()
    if not root.is_dir():
        raise DataError(f"data root not found: {root}")
    if layout == "imagenet":
        return _imagenet_split(root, split)
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
