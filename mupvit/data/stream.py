"""The endless, deterministic training stream.

Position p of the stream is sample `order(seed, p // N)[p % N]` of the train set, where each pass over the
data has its own shuffled order; the sample's augmentation randomness is seeded by (seed, p). Step s of a
run consumes positions [s * B, (s + 1) * B) for global batch B, so the stream position is a function of the
step alone, and neither order nor augmentation depends on how many loader workers there are.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import NamedTuple

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from mupvit.data.datasets import DataError, Split
from mupvit.data.decode import decode_image, decode_noting
from mupvit.data.storage import StorageUnavailable


class TrainSample(NamedTuple):
    """One stream position (collated: one batch). `image`: float [-1, 1], or with data.augment_on device the uint8
    crop. `skipped`: the bad files passed over to fill it, 0 unless data.on_bad_image is skip. `plan`: the draws the
    device applies (mupvit/data/plan.py); with augment_on loader an empty int32 tensor (collated: (B, 0)).
    `recovered`: the index in split.samples of the image's file when only Pillow decoded it (corrupt JPEG data),
    else -1."""

    image: torch.Tensor
    label: int
    skipped: int
    plan: torch.Tensor
    recovered: int


NO_PLAN = torch.empty(0, dtype=torch.int32)


def pass_order(seed: int, pass_index: int, n: int) -> np.ndarray:
    """The shuffled sample order for one pass over n samples."""
    return np.random.default_rng([seed, pass_index, 0x5EED]).permutation(n)


def sample_rng(seed: int, position: int) -> np.random.Generator:
    """The augmentation RNG of stream position `position`."""
    return np.random.default_rng([seed, position])


class StreamDataset(Dataset):
    """Map-style view of the stream: item p is the TrainSample at stream position p. `decode(path)` returns a
    Decoded (pixels, and why libjpeg-turbo refused the file if Pillow decoded it); `transform(image, rng)` returns
    the image, or (image, plan) when it leaves the augmentation to the device."""

    def __init__(self, split: Split, transform: Callable, seed: int, decode: Callable = decode_noting,
                 skip_bad: bool = False) -> None:
        self.split, self.transform, self.seed, self.decode = split, transform, seed, decode
        self.skip_bad = skip_bad
        self._order_pass, self._order = -1, np.empty(0, dtype=np.int64)

    def index_at(self, position: int) -> int:
        n = len(self.split)
        pass_index = position // n
        if pass_index != self._order_pass:  # each worker caches the order of its current pass
            self._order, self._order_pass = pass_order(self.seed, pass_index, n), pass_index
        return int(self._order[position % n])

    def __getitem__(self, position: int) -> TrainSample:
        """With skip_bad, a file that does not decode is replaced by the next one of the pass that does (same
        position, same augmentation randomness), so the stream stays a function of (seed, position) alone and
        resume and worker-count independence still hold."""
        n = len(self.split)
        for skipped in range(n if self.skip_bad else 1):
            index = self.index_at(position - position % n + (position + skipped) % n)
            path, label = self.split.samples[index]
            try:
                image, refused = self.decode(path)
            except DataError as err:
                if not self.skip_bad or isinstance(err, StorageUnavailable):  # an outage is no bad image
                    raise
                continue
            out = self.transform(image, sample_rng(self.seed, position))
            image, plan = out if isinstance(out, tuple) else (out, NO_PLAN)
            return TrainSample(image, label, skipped, plan, index if refused else -1)
        raise DataError(f"data.on_bad_image=skip: no image of the {n} in split '{self.split.name}' decodes")


class RecoveredImages:
    """The train images only Pillow could decode (corrupt JPEG data, not TF's pixels): `warn` names each file once,
    and `count` is how many of the batches' images were such since the last `take_count`."""

    def __init__(self, split: Split, warn: Callable[[str], None]) -> None:
        self.split, self.warn, self.seen, self.count = split, warn, set(), 0

    def add(self, recovered: torch.Tensor) -> None:
        found = recovered[recovered >= 0].tolist()
        self.count += len(found)
        for index in sorted(set(found) - self.seen):
            self.seen.add(index)
            self.warn(f"warning: {self.split.samples[index][0]}: corrupt JPEG data that libjpeg-turbo refuses, "
                      "decoded by the fallback decoder (Pillow, not TF's pixels) and trained on; counted as "
                      "train/recovered_images (python -m mupvit.data.check lists every such file)")

    def take_count(self) -> int:
        count, self.count = self.count, 0
        return count


class StreamBatchSampler(Sampler[list[int]]):
    """Yields, for each step from `start_step` to `end_step`, the positions of this rank's share of the
    global batch: rank r of W takes [s*B + r*B/W, s*B + (r+1)*B/W)."""

    def __init__(self, start_step: int, end_step: int, global_batch: int, rank: int = 0, world: int = 1) -> None:
        self.start_step, self.end_step = start_step, end_step
        self.global_batch, self.rank, self.world = global_batch, rank, world

    def __len__(self) -> int:
        return max(0, self.end_step - self.start_step)

    def __iter__(self) -> Iterator[list[int]]:
        per_rank = self.global_batch // self.world
        for step in range(self.start_step, self.end_step):
            first = step * self.global_batch + self.rank * per_rank
            yield list(range(first, first + per_rank))


class EvalDataset(Dataset):
    """Item i is (image, label) of split.samples[i]; with `index_labels`, (image, i): the sample's index, which an
    evaluator with per-image label sets (ImageNet-ReaL) looks up, and which a Subset shard keeps, since a Subset
    passes its dataset the original index."""

    def __init__(self, split: Split, transform: Callable, decode: Callable = decode_image,
                 index_labels: bool = False) -> None:
        self.split, self.transform, self.decode = split, transform, decode
        self.index_labels = index_labels

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        path, label = self.split.samples[index]
        return self.transform(self.decode(path)), index if self.index_labels else label
