"""ImageNet-ReaL label sets and metric, and the ImageNet-v2 layout, on hand-made data with hand-computed answers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, Subset

from mupvit.config import config_from_dict
from mupvit.data import eval_loader
from mupvit.data.datasets import DataError, Split, load_split
from mupvit.data.real_labels import load_real_labels
from mupvit.data.stream import EvalDataset
from mupvit.data.transforms import EvalTransform
from mupvit.evaluate import evaluate, real_counts

CPU = torch.device("cpu")


class GreyClassifier(nn.Module):
    """Our test model: a constant-grey image of level g is predicted as class g // 80, as one-hot logits."""

    def __init__(self, num_classes: int = 3) -> None:
        super().__init__()
        self.num_classes = num_classes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        level = ((x.mean(dim=(1, 2, 3)) + 1) * 127.5).round().long()
        return F.one_hot(level // 80, self.num_classes).float()


def _grey(path: Path, predicted: int, fmt: str = "PNG") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), (80 * predicted + 20,) * 3).save(path, format=fmt)  # lossless PNG keeps the level


# The ReaL case, in file-name order: (class folder, what GreyClassifier predicts, ReaL set); classes a=0 b=1 c=2.
#   1: b, predicts 1, {1}     scored, correct
#   2: c, predicts 0, {2, 0}  scored, correct: top-1 0 is in the set though the folder's label is 2
#   3: b, predicts 1, {}      not scored (empty set), though top-1 equals the folder's label
#   4: a, predicts 2, {0}     scored, wrong
#   5: a, predicts 0, {0, 1}  scored, correct
#   6: c, predicts 1, {}      not scored
# ReaL top-1 = 3 correct / 4 scored = 0.75; plain top-1 on folder labels = {1, 3, 5} right of 6 = 0.5.
# split.samples is in class-folder order: a/4, a/5, b/1, b/3, c/2, c/6 (indices 0..5).
CASE = [("b", 1, [1]), ("c", 0, [2, 0]), ("b", 1, []), ("a", 2, [0]), ("a", 0, [0, 1]), ("c", 1, [])]


def _real_case(root: Path) -> tuple[Split, Path]:
    for number, (folder, predicted, _) in enumerate(CASE, start=1):
        _grey(root / "val" / folder / f"ILSVRC2012_val_{number:08d}.png", predicted)
    real = root / "real.json"
    real.write_text(json.dumps([labels for _, _, labels in CASE]))
    return load_split("imagefolder", root, "val"), real


def _loader(split: Split, indices: range | None = None) -> DataLoader:
    dataset = EvalDataset(split, EvalTransform(4, 4), index_labels=True)
    return DataLoader(dataset if indices is None else Subset(dataset, indices), batch_size=2)


# ---------------------------------------------------------------- label sets aligned by file name


def test_label_sets_follow_the_split_order_not_the_file_name_order(tmp_path):
    split, real = _real_case(tmp_path)
    assert [Path(p).name[-6:-4] for p, _ in split.samples] == ["04", "05", "01", "03", "02", "06"]
    sets = load_real_labels(real, split)
    # rows: entries 4, 5, 1, 3, 2, 6 of the file, padded with -1 to the largest set (2)
    assert sets.dtype == torch.int64
    assert sets.tolist() == [[0, -1], [0, 1], [1, -1], [-1, -1], [2, 0], [-1, -1]]


def test_all_sets_empty_still_gives_one_column(tmp_path):
    split = Split("val", ["a"], [(str(tmp_path / f"ILSVRC2012_val_{i:08d}.JPEG"), 0) for i in (1, 2)])
    real = tmp_path / "real.json"
    real.write_text("[[], []]")
    assert load_real_labels(real, split).tolist() == [[-1], [-1]]


# ---------------------------------------------------------------- the ReaL metric


def test_real_top1_scores_only_labelled_images_and_accepts_any_label_of_the_set(tmp_path):
    split, real = _real_case(tmp_path)
    result = evaluate(GreyClassifier(), _loader(split), CPU, real_labels=load_real_labels(real, split))
    assert result == {"acc1": 0.75, "images": 4}
    # the same images scored on their folder labels: 0.5, so ReaL is not plain top-1 in disguise
    plain = DataLoader(EvalDataset(split, EvalTransform(4, 4)), batch_size=2)
    assert evaluate(GreyClassifier(), plain, CPU)["acc1"] == 0.5


def test_sharded_real_counts_sum_to_the_unsharded_ones(tmp_path):
    split, real = _real_case(tmp_path)
    sets = load_real_labels(real, split)
    model = GreyClassifier()

    def counts(loader: DataLoader) -> list[float]:
        return sum((real_counts(model(x), i, sets) for x, i in loader), torch.zeros(3, dtype=torch.float64)).tolist()

    # rank 0 of 2 takes samples 0, 2, 4 = files 4, 1, 2: scored 3, correct 2 (files 1, 2)
    # rank 1 of 2 takes samples 1, 3, 5 = files 5, 3, 6: scored 1, correct 1 (file 5)
    assert counts(_loader(split, range(0, 6, 2))) == [2, 3, 3]
    assert counts(_loader(split, range(1, 6, 2))) == [1, 1, 3]
    assert counts(_loader(split)) == [3, 4, 6]


def test_eval_loader_shards_yield_the_global_sample_index(tmp_path):
    split, _ = _real_case(tmp_path)
    cfg = config_from_dict({
        "data": {"dataset": "imagefolder", "root": str(tmp_path), "image_size": 4, "eval_resize": 4,
                 "num_workers": 0, "eval_batch_size": 8},
        "model": {"variant": None, "width": 16, "depth": 1, "num_heads": 2, "mlp_dim": 32, "patch_size": 4,
                  "num_classes": 3},
    }, [])
    for rank, expected in ((0, [0, 2, 4]), (1, [1, 3, 5])):
        (_, labels), = eval_loader(cfg, split, rank=rank, world=2, index_labels=True)
        assert labels.tolist() == expected
    (_, labels), = eval_loader(cfg, split)  # by default the class labels, as before
    assert labels.tolist() == [0, 0, 1, 1, 2, 2]


def test_real_counts_by_hand():
    sets = torch.tensor([[3, -1], [-1, -1], [1, 2], [0, -1]])
    logits = torch.tensor([[0.0, 0, 0, 1], [1, 0, 0, 0], [0, 0, 1, 0], [0, 1, 0, 0]])  # top-1: 3, 0, 2, 1
    # index 0: top-1 3 in {3}; index 1: empty, not scored; index 2: 2 in {1, 2}; index 3: 1 not in {0}
    assert real_counts(logits, torch.tensor([0, 1, 2, 3]), sets).tolist() == [2, 3, 4]


def test_class_labels_given_as_indices_are_refused(tmp_path):
    split, real = _real_case(tmp_path)
    sets = load_real_labels(real, split)[:2]  # label sets of two images, a loader over six
    with pytest.raises(ValueError, match="not indices into the 2 ReaL label sets.*index_labels=True"):
        evaluate(GreyClassifier(), _loader(split), CPU, real_labels=sets)


def test_a_split_with_no_labelled_image_is_refused():
    batches = [(torch.zeros(2, 3, 4, 4), torch.tensor([0, 1]))]
    with pytest.raises(ValueError, match="no image of the split has a ReaL label"):
        evaluate(GreyClassifier(), batches, CPU, real_labels=torch.full((2, 1), -1))


# ---------------------------------------------------------------- bad real.json


def _split(n: int = 2, classes: int = 3) -> Split:
    return Split("val", [str(c) for c in range(classes)],
                 [(f"/data/val/0/ILSVRC2012_val_{i:08d}.JPEG", 0) for i in range(1, n + 1)])


@pytest.mark.parametrize("text, message", [
    ("[[1], [2", "is not JSON"),
    ('{"1": [1]}', "holds a JSON dict, not a list of label lists"),
    ("[[1], 2]", "entry 1 is 2, not a list of class indices"),
    ('[[1], ["2"]]', "entry 1 is \\['2'\\], not a list"),
    ("[[1], [true]]", "entry 1 is \\[True\\], not a list"),
    ("[[1], [2.0]]", "entry 1 is \\[2.0\\], not a list"),
    ("[[1], [3]]", "entry 1 has label 3, outside the 3 classes"),
    ("[[-1], [0]]", "entry 0 has label -1, outside the 3 classes"),
    ("[[1], [2], []]", "has 3 entries but split 'val' has 2 images"),
])
def test_bad_real_json_is_refused_naming_the_file_and_the_fix(tmp_path, text, message):
    real = tmp_path / "real.json"
    real.write_text(text)
    with pytest.raises(DataError, match=message) as info:
        load_real_labels(real, _split())
    assert str(real) in str(info.value)
    assert "reassessed-imagenet" in str(info.value) or "full ImageNet val split" in str(info.value)


def test_a_missing_real_json_is_refused(tmp_path):
    with pytest.raises(DataError, match="ReaL labels not found.*reassessed-imagenet") as info:
        load_real_labels(tmp_path / "real.json", _split())
    assert str(tmp_path / "real.json") in str(info.value)


def test_a_file_name_used_twice_is_refused(tmp_path):
    real = tmp_path / "real.json"
    real.write_text("[[0], [1]]")
    split = Split("val", ["a", "b"], [("/data/val/a/x.JPEG", 0), ("/data/val/b/x.JPEG", 1)])
    with pytest.raises(DataError, match="e.g. x.JPEG at .*/data/val/a/x.JPEG.*/data/val/b/x.JPEG.*unique"):
        load_real_labels(real, split)


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
