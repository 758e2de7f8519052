"""The step never waits for a copy it could have started earlier, and a compiled eval compiles once: the device
prefetcher hands out the loader's batches unchanged and in order, keeps a loader error for its own step, and
`evaluate(fixed_shape=True)` pads a short last batch instead of compiling the model for a second shape."""

from __future__ import annotations

import pytest
import torch
from torch._dynamo.testing import CompileCounter

from mupvit.config import ModelConfig
from mupvit.data.datasets import DataError
from mupvit.data.prefetch import DevicePrefetcher
from mupvit.evaluate import evaluate
from mupvit.models.vit import ViT

CPU = torch.device("cpu")


def loader(n: int, fail_at: int | None = None):
    for i in range(n):
        if i == fail_at:
            raise DataError(f"bad file in batch {i}")
        yield torch.full((2, 3), float(i)), torch.tensor([i, i])


def test_the_prefetcher_yields_every_batch_once_in_order_moved_one_ahead():
    moved = []

    def to_device(batch):
        moved.append(int(batch[1][0]))
        return batch

    batches = DevicePrefetcher(loader(4), CPU, to_device)
    assert moved == [0]  # the first batch is on its way before the loop asks for it
    first = next(batches)
    assert int(first[1][0]) == 0 and moved == [0, 1]  # handing out batch 0 starts the copy of batch 1
    assert [int(b[1][0]) for b in batches] == [1, 2, 3]
    with pytest.raises(StopIteration):
        next(batches)


def test_a_loader_error_surfaces_at_its_own_batch_not_one_early():
    batches = DevicePrefetcher(loader(4, fail_at=2), CPU, lambda b: b)
    assert int(next(batches)[1][0]) == 0
    assert int(next(batches)[1][0]) == 1  # batch 2 failed to load already, but batch 1's step still runs
    with pytest.raises(DataError, match="batch 2"):
        next(batches)
    with pytest.raises(StopIteration):
        next(batches)


def tiny_vit() -> ViT:
    torch.manual_seed(0)
    return ViT(ModelConfig(variant=None, width=32, depth=1, num_heads=2, mlp_dim=64, patch_size=4,
                           num_classes=10), 16).eval()


@pytest.mark.parametrize("fixed_shape, compiles", [(True, 1), (False, 2)])
def test_a_compiled_eval_pads_the_short_last_batch_and_compiles_once(fixed_shape, compiles):
    model = tiny_vit()
    images, labels = torch.randn(21, 3, 16, 16), torch.randint(0, 10, (21,))
    batches = [(images[i:i + 8], labels[i:i + 8]) for i in range(0, 21, 8)]  # 8, 8 and a last batch of 5
    expected = evaluate(model, batches, CPU)
    torch._dynamo.reset()
    counter = CompileCounter()
    got = evaluate(torch.compile(model, backend=counter), batches, CPU, fixed_shape=fixed_shape)
    assert counter.frame_count == compiles
    # the padding's logits are dropped: the same counts over the 21 real images, the same mean loss
    assert got["acc1"] == expected["acc1"] and got["acc5"] == expected["acc5"]
    assert got["loss"] == pytest.approx(expected["loss"], rel=1e-6)
