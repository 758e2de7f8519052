"""The embedded demo dataset: scikit-learn's 8x8 digits (1,797 real images, 10 classes, shipped inside the
package, so nothing is downloaded) written once as upscaled RGB JPEGs in ImageFolder layout."""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

from mupvit.data.datasets import DataError
from mupvit.data.minival import stratified_holdout

VERSION = 1
IMAGE_SIZE = 32
VAL_FRACTION = 0.2
SPLIT_SEED = 0


def default_root() -> Path:
    base = os.environ.get("MUPVIT_DATA_DIR") or Path.home() / ".cache" / "mupvit"
    return Path(base) / f"digits-v{VERSION}"


def _write(images: np.ndarray, labels: np.ndarray, root: Path) -> dict[str, int]:
    is_val = stratified_holdout(labels, VAL_FRACTION, SPLIT_SEED)
    counts = {"train": 0, "val": 0}
    for i, (pixels, label) in enumerate(zip(images, labels, strict=True)):
        split = "val" if is_val[i] else "train"
        folder = root / split / str(label)
        folder.mkdir(parents=True, exist_ok=True)
        grey = Image.fromarray(np.round(pixels * (255.0 / 16.0)).astype(np.uint8), mode="L")
        grey = grey.resize((IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.BILINEAR)
        grey.convert("RGB").save(folder / f"{i:04d}.jpg", quality=95)
        counts[split] += 1
    return counts


def build_digits(root: str | Path | None = None) -> Path:
    """Write the demo dataset under `root` (default: $MUPVIT_DATA_DIR or ~/.cache/mupvit) unless it is
    already there; returns the root. Built in a temporary folder and renamed, so a crash leaves nothing half-made."""
    root = Path(root).expanduser().resolve() if root else default_root()
    marker = root / "dataset.json"
    if marker.is_file():
        return root
    if root.exists() and any(root.iterdir()):
        raise DataError(
            f"{root} exists but is not a digits demo build (no dataset.json); "
            "point data.root at an empty or new folder"
        )
    print(f"building the digits demo dataset under {root} ...", file=sys.stderr, flush=True)
    # Only a build needs scikit-learn (which imports scipy.stats, ~1.3 s): not each process that finds it built.
    from sklearn.datasets import load_digits

    digits = load_digits()
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".digits-", dir=root.parent))
    try:
        counts = _write(digits.images, digits.target, tmp)
        (tmp / "dataset.json").write_text(json.dumps({"version": VERSION, "image_size": IMAGE_SIZE, **counts}))
        if root.exists() and not any(root.iterdir()):
            root.rmdir()
        try:
            os.replace(tmp, root)
        except OSError:
            if not marker.is_file():  # not merely another process finishing first
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"digits demo dataset: {counts['train']} train / {counts['val']} val images", file=sys.stderr)
    return root
