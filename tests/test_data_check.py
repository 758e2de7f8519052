"""python -m mupvit.data.check: a pre-scan that finds every bad file of a dataset in one pass."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from PIL import Image

from tests.helpers import corrupt_jpeg

REPO = Path(__file__).resolve().parent.parent


def tree(root: Path) -> Path:
    for split in ("train", "val"):
        for c in ("a", "b"):
            (root / split / c).mkdir(parents=True)
            for i in range(3):
                Image.new("RGB", (12, 10), (20 * i,) * 3).save(root / split / c / f"{i}.jpg")
    return root


def check(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mupvit.data.check", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=120)


def test_a_clean_tree_passes_with_counts(tmp_path):
    done = check(str(tree(tmp_path)), "--workers", "2")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "12 images (train 6, val 6): 12 good, 0 bad"
    assert "checking images" in done.stderr  # the progress bar


def test_bad_files_are_listed_and_exit_1(tmp_path):
    """Corrupt JPEG data that only Pillow decodes is its own category: listed and counted, not good, not bad."""
    root = tree(tmp_path)
    (root / "train" / "a" / "1.jpg").write_bytes(b"\xff\xd8\xff cut")
    Image.new("RGB", (400, 300)).save(root / "val" / "b" / "huge.png")
    corrupt_jpeg(root / "val" / "a" / "corrupt.jpg")
    done = check(str(root), "--max-pixels", "100000", "--workers", "1")
    assert done.returncode == 1
    lines = done.stdout.strip().splitlines()
    assert lines[-1] == ("14 images (train 6, val 8): 11 good, 1 decoded by the fallback decoder (corrupt JPEG data), "
                         "2 bad")
    assert f"recovered: {root / 'val/a/corrupt.jpg'} (libjpeg-turbo: Corrupt JPEG data: 496 extraneous bytes before " \
           "marker 0xd9): decoded by the fallback decoder (Pillow)" in lines
    assert any(line.startswith(f"bad: cannot decode image {root / 'train/a/1.jpg'}") for line in lines)
    assert any("huge.png is 400x300 = 0.1 MP, above the cap" in line for line in lines)


def test_a_missing_root_or_split_exits_2(tmp_path):
    done = check(str(tmp_path / "nowhere"))
    assert done.returncode == 2 and "data root not found" in done.stderr
    done = check(str(tree(tmp_path)), "--splits", "test")
    assert done.returncode == 2 and "split folder not found" in done.stderr
