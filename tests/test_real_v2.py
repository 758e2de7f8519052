"""The ImageNet-v2 layout, on hand-made data with hand-computed answers."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from mupvit.data.datasets import DataError, load_split


def _grey(path: Path, predicted: int, fmt: str = "PNG") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), (80 * predicted + 20,) * 3).save(path, format=fmt)  # lossless PNG keeps the level


# ---------------------------------------------------------------- ImageNet-v2 layout


def test_v2_labels_are_the_folder_numbers_in_numeric_order(tmp_path):
    for index in (10, 2, 0, 1):
        _grey(tmp_path / "v2" / str(index) / "img.jpeg", 0, "JPEG")
    split = load_split("imagenet_v2", tmp_path, "v2", num_classes=11)
    assert [(Path(p).parent.name, label) for p, label in split.samples] == [("0", 0), ("1", 1), ("2", 2),
                                                                          ("10", 10)]
    assert split.classes == [str(i) for i in range(11)]  # classes[label] is the folder name; 11 like the model
    # imagefolder would sort the names as text and give folder 10 label 2: the trap the layout avoids
    as_text = load_split("imagefolder", tmp_path, "v2").samples
    assert [(Path(p).parent.name, label) for p, label in as_text] == [("0", 0), ("1", 1), ("10", 2), ("2", 3)]


def test_v2_agrees_with_the_train_split_by_class_count_and_index(tmp_path):
    wnids = [f"n{i:08d}" for i in range(11)]
    for wnid in wnids:
        _grey(tmp_path / "train" / wnid / "a.png", 0)
    _grey(tmp_path / "v2" / "10" / "a.png", 0)
    train = load_split("imagefolder", tmp_path, "train")
    v2 = load_split("imagenet_v2", tmp_path, "v2", num_classes=len(train.classes))
    assert len(v2.classes) == len(train.classes)
    assert train.classes[v2.samples[0][1]] == "n00000010"  # v2's folder 10 is train's 11th wnid


@pytest.mark.parametrize("folder", ["n01440764", "07", "-1", "1.0"])
def test_v2_refuses_folders_not_named_by_an_index(tmp_path, folder):
    _grey(tmp_path / "v2" / "0" / "a.png", 0)
    _grey(tmp_path / "v2" / folder / "a.png", 0)
    with pytest.raises(DataError, match=f"must be named by class index.*found \\['{folder}'\\]") as info:
        load_split("imagenet_v2", tmp_path, "v2", num_classes=1000)
    assert str(tmp_path / "v2") in str(info.value)


def test_v2_refuses_an_index_past_the_class_count(tmp_path):
    for index in (0, 11):
        _grey(tmp_path / "v2" / str(index) / "a.png", 0)
    with pytest.raises(DataError, match="class folder .*/v2/11 is past the 11 classes \\(indices 0..10\\)"):
        load_split("imagenet_v2", tmp_path, "v2", num_classes=11)


def test_v2_refuses_an_empty_class_folder_and_a_missing_split(tmp_path):
    _grey(tmp_path / "v2" / "0" / "a.png", 0)
    (tmp_path / "v2" / "1").mkdir()
    with pytest.raises(DataError, match="class folder has no images: .*/v2/1"):
        load_split("imagenet_v2", tmp_path, "v2", num_classes=2)
    with pytest.raises(DataError, match="split folder not found: .*/test"):
        load_split("imagenet_v2", tmp_path, "test", num_classes=2)


def test_v2_needs_the_class_count(tmp_path):
    _grey(tmp_path / "v2" / "0" / "a.png", 0)
    with pytest.raises(ValueError, match="needs num_classes"):
        load_split("imagenet_v2", tmp_path, "v2")
