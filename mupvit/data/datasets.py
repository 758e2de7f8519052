"""Image datasets as (path, label) lists, in ImageFolder, torchvision ImageNet or ImageNet-v2 layout, checked up
front."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

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


def join_root(root: str | Path, *parts: str) -> str:
    """A data root joined with parts, for messages: a URL with '/', a path with the OS's separator."""
    from mupvit.data.storage import join

    return join(str(root), *parts)


@dataclass(frozen=True)
class Split:
    name: str
    classes: list[str]
    samples: list[tuple[str, int]]  # (absolute path or URL, label)

    def __len__(self) -> int:
        return len(self.samples)


def is_image(name: str) -> bool:
    return PurePosixPath(name).suffix.lower() in IMAGE_SUFFIXES


class LocalTree:
    """A data root on this machine's disk, read as the layouts always read it (iterdir, torchvision's ImageNet)."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def path(self, *parts: str) -> str:
        return str(self.root.joinpath(*parts))

    def is_dir(self, *parts: str) -> bool:
        return self.root.joinpath(*parts).is_dir()

    def has_file(self, name: str) -> bool:
        return (self.root / name).is_file()

    def subdirs(self, *parts: str) -> list[str]:
        return [p.name for p in self.root.joinpath(*parts).iterdir() if p.is_dir()]

    def images(self, *parts: str) -> list[str]:
        """Sorted paths of the image files directly in the folder."""
        return sorted(str(p) for p in self.root.joinpath(*parts).iterdir() if is_image(p.name))


class ListedTree:
    """A split in a bucket as its manifest lists it (`names`: object paths relative to root/split, sorted)."""

    def __init__(self, root: str, split: str, names: list[str], meta: bool = False) -> None:
        self.root, self.split, self.meta = root, split, meta
        self.children: dict[str, set[str]] = {}  # folder (relative to root) -> its subfolders' names
        self.files: dict[str, list[str]] = {}  # folder (relative to root) -> its files' names, in listing order
        for name in names:
            parts = f"{split}/{name}".split("/")
            for depth in range(1, len(parts) - 1):
                self.children.setdefault("/".join(parts[:depth]), set()).add(parts[depth])
            self.files.setdefault("/".join(parts[:-1]), []).append(parts[-1])

    def path(self, *parts: str) -> str:
        return "/".join([self.root, *parts])

    def is_dir(self, *parts: str) -> bool:
        folder = "/".join(parts)
        return folder in self.children or folder in self.files

    def has_file(self, name: str) -> bool:
        return self.meta and name == "meta.bin"

    def subdirs(self, *parts: str) -> list[str]:
        return list(self.children.get("/".join(parts), ()))

    def images(self, *parts: str) -> list[str]:
        folder = "/".join(parts)
        return sorted(self.path(folder, name) for name in self.files.get(folder, ()) if is_image(name))

    def walk_images(self, folder: str) -> list[str]:
        """The files under root/folder as torchvision's make_dataset takes them: folder by folder in sorted order
        (a folder's own files before its subfolders'), files sorted by name, IMG_EXTENSIONS only."""
        from torchvision.datasets.folder import IMG_EXTENSIONS

        inside = sorted(f for f in self.files if f == folder or f.startswith(folder + "/"))
        return [self.path(f, name) for f in inside for name in sorted(self.files[f])
                if name.lower().endswith(IMG_EXTENSIONS)]


Tree = LocalTree | ListedTree


def _class_images(tree: Tree, *folder: str) -> list[str]:
    files = tree.images(*folder)
    if not files:
        raise DataError(f"class folder has no images: {tree.path(*folder)} (suffixes {sorted(IMAGE_SUFFIXES)})")
    return files


def _imagefolder_split(tree: Tree, split: str) -> Split:
    folder = tree.path(split)
    if not tree.is_dir(split):
        raise DataError(f"split folder not found: {folder} (expected {tree.path()}/{split}/<class>/<image files>)")
    classes = sorted(tree.subdirs(split))
    if not classes:
        raise DataError(f"no class folders in {folder} (expected {folder}/<class>/<image files>)")
    samples = []
    for label, name in enumerate(classes):
        samples.extend((p, label) for p in _class_images(tree, split, name))
    return Split(split, classes, samples)


def _check_imagenet(tree: Tree, split: str) -> None:
    if not tree.has_file("meta.bin"):
        raise DataError(
            f"{tree.path('meta.bin')} not found: the 'imagenet' layout is torchvision's ImageNet "
            "(meta.bin plus train/ and val/ class folders); use dataset 'imagefolder' for plain folders"
        )
    if not tree.is_dir(split):
        raise DataError(f"split folder not found: {tree.path(split)}")


def _imagenet_split(tree: Tree, split: str) -> Split:
    _check_imagenet(tree, split)
    if isinstance(tree, LocalTree):
        from torchvision.datasets import ImageNet

        ds = ImageNet(str(tree.root), split=split)
        return Split(split, list(ds.wnids), [(str(p), int(y)) for p, y in ds.samples])
    # torchvision's ImageFolder rules over the manifest: classes = the split's sorted folders
    classes = sorted(tree.subdirs(split))
    samples = [(p, label) for label, wnid in enumerate(classes) for p in tree.walk_images(f"{split}/{wnid}")]
    empty = sorted(set(classes) - {classes[label] for _, label in samples})
    if not classes or empty:
        raise DataError(f"{tree.path(split)}: no class folders, or classes without images: {empty[:5]}")
    return Split(split, classes, samples)


def _imagenet_v2_split(tree: Tree, split: str, num_classes: int) -> Split:
    """ImageNet-v2 as its tarballs unpack: root/<split>/<class index>/<images>, the folders named 0..999 by the
    index of the ImageNet class (the order of the sorted wnids). The label is int(folder name), so the folders sort
    numerically ("10" after "2") and a missing folder shifts no other label. `classes` holds the index strings
    "0".."num_classes-1", so classes[label] is the folder name; they are not the train split's wnids, and the
    caller compares class counts, not names."""
    folder = tree.path(split)
    if not tree.is_dir(split):
        raise DataError(f"split folder not found: {folder} "
                        f"(expected {tree.path()}/{split}/<class index>/<image files>)")
    names = tree.subdirs(split)
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
            f"class folder {tree.path(split, str(highest))} is past the {num_classes} classes (indices "
            f"0..{num_classes - 1}); the model's class count must cover the data (ImageNet-v2: folders 0..999, "
            "model.num_classes 1000)"
        )
    samples = []
    for label in sorted(int(name) for name in names):
        samples.extend((p, label) for p in _class_images(tree, split, str(label)))
    return Split(split, [str(i) for i in range(num_classes)], samples)


def _tree(layout: str, root: str | Path, split: str) -> Tree:
    """The local folder, or for a URL root the split's manifest (listed and written once when missing)."""
    from mupvit.urls import is_url

    if not is_url(root):
        path = Path(root).expanduser().resolve()
        if not path.is_dir():
            raise DataError(f"data root not found: {path}")
        return LocalTree(path)
    from mupvit.data.manifest import read_meta, split_listing

    root = str(root).rstrip("/")
    return ListedTree(root, split, split_listing(root, split), meta=layout == "imagenet" and read_meta(root))


def load_split(layout: str, root: str | Path, split: str, num_classes: int | None = None) -> Split:
    """The split `split` under `root` in `layout` ('imagefolder', 'imagenet' or 'imagenet_v2'). `num_classes` is
    needed by 'imagenet_v2' only, whose folder names are label indices and do not say how many classes there are.
    `root` is a local folder or a URL (s3://bucket/prefix, ...), whose splits are read from their manifests."""
    if layout == "imagenet_v2" and num_classes is None:
        raise ValueError("load_split: layout 'imagenet_v2' needs num_classes (the train split's class count)")
    tree = _tree(layout, root, split)
    if layout == "imagenet":
        return _imagenet_split(tree, split)
    if layout == "imagenet_v2":
        return _imagenet_v2_split(tree, split, num_classes)
    return _imagefolder_split(tree, split)


def load_splits(layout: str, root: str | Path, names: list[str]) -> dict[str, Split]:
    """Load the named splits and check they share one class set."""
    splits = {name: load_split(layout, root, name) for name in dict.fromkeys(names)}
    first = splits[names[0]]
    for split in splits.values():
        if split.classes != first.classes:
            only_a = sorted(set(first.classes) - set(split.classes))[:5]
            only_b = sorted(set(split.classes) - set(first.classes))[:5]
            raise DataError(
                f"class folders differ between {join_root(root, first.name)} and {join_root(root, split.name)}: "
                f"only in {first.name}: {only_a}, only in {split.name}: {only_b}"
            )
    return splits
