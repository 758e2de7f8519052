"""A training step between log steps never waits for the device: the loss, the grad norm and the divergence flag
stay device tensors, read only at log, eval and checkpoint steps (on CPU a read is no wait, but it is the same call
that waits for the GPU, so counting the calls here is the test)."""

from __future__ import annotations

import sys
from collections import Counter

import pytest
import torch

import mupvit.train
from mupvit.train import run

from .helpers import QuietLogger, tiny_config

STEPS = 8
# The calls that copy a device tensor's value to the host, and so wait for every kernel queued before them.
READS = ("item", "tolist", "__float__", "__bool__")


class SyncCounter:
    """Host reads per training step (the loop's own, and anything called inside train_step); the data pipeline's
    reads of its host tensors are not syncs and are left out."""

    def __init__(self) -> None:
        self.step: int | None = None  # the last step whose train_step started
        self.reads: Counter[int] = Counter()
        self.step_code = mupvit.train.train_step.__code__

    def counted(self) -> bool:
        frame = sys._getframe(2)  # the caller of the patched method
        if frame.f_code.co_filename == mupvit.train.__file__:
            return True
        while frame is not None and frame.f_code is not self.step_code:
            frame = frame.f_back
        return frame is not None

    def patch(self, monkeypatch: pytest.MonkeyPatch) -> None:
        def wrap(original):
            def read(*args, **kwargs):
                if self.step is not None and self.counted():
                    self.reads[self.step] += 1
                return original(*args, **kwargs)
            return read

        for name in READS:
            monkeypatch.setattr(torch.Tensor, name, wrap(getattr(torch.Tensor, name)))
        monkeypatch.setattr(torch.cuda, "synchronize", wrap(torch.cuda.synchronize))
        step = mupvit.train.train_step

        def train_step(*args, **kwargs):
            self.step = args[4] + 1  # (model, optimizer, images, labels, step, ...): the step it completes
            return step(*args, **kwargs)

        monkeypatch.setattr(mupvit.train, "train_step", train_step)


@pytest.mark.parametrize("overrides", [
    {},
    {"optim.mu_dtype": "bfloat16", "train.accum_steps": 2, "data.mixup_alpha": 0.2, "train.precision": "bf16"},
    {"data.augment_on": "device", "data.flip": True},  # the loop hands the batch to the device augmentation unread
])
def test_no_host_sync_between_log_steps(digits_root, tmp_path, monkeypatch, overrides):
    cfg = tiny_config(digits_root, tmp_path, **{"train.total_steps": STEPS, "train.log_every": 1000,
                                                "train.eval_every": None, "train.ckpt_every": None, **overrides})
    counter = SyncCounter()
    counter.patch(monkeypatch)
    logger = QuietLogger()
    run(cfg, logger)
    assert [step for kind, (step, _) in logger.events if kind == "metrics"] == [STEPS, STEPS]  # train, then eval
    assert {step: counter.reads[step] for step in range(1, STEPS)} == dict.fromkeys(range(1, STEPS), 0)
    assert counter.reads[STEPS] > 0  # the last step logs: the counter sees its reads
