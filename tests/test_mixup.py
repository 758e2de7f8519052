"""MixUp: one Beta(alpha, alpha) coefficient per batch folded to >= 0.5, batch rolled by one, loss equal to
cross-entropy against the mixed one-hot target."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import stats

from mupvit.config import ModelConfig, OptimConfig
from mupvit.data.mixup import mix_images, mixup_coefficient, mixup_cross_entropy, rolled_within
from mupvit.models.vit import ViT
from mupvit.optim import build_optimizer
from mupvit.train import train_step


def test_loss_equals_cross_entropy_with_mixed_one_hot_target():
    torch.manual_seed(0)
    logits, labels = torch.randn(8, 10), torch.randint(0, 10, (8,))
    a = 0.7
    target = a * F.one_hot(labels, 10).float() + (1 - a) * F.one_hot(labels.roll(1, 0), 10).float()
    expected = -(target * logits.log_softmax(-1)).sum(-1).mean()
    torch.testing.assert_close(mixup_cross_entropy(logits, labels, labels.roll(1, 0), a), expected)


def test_images_are_mixed_with_the_batch_rolled_by_one():
    images = torch.arange(4.0).view(4, 1, 1, 1).expand(4, 3, 2, 2)
    mixed = mix_images(images, 0.75)
    # Sample i is 0.75 * x_i + 0.25 * x_{i-1} (sample 0 takes the last one).
    assert mixed[:, 0, 0, 0].tolist() == [0.75 * 0 + 0.25 * 3, 0.75 * 1, 0.75 * 2 + 0.25, 0.75 * 3 + 0.5]


def test_a_device_holding_two_devices_shares_mixes_each_share_apart():
    """An elastic run going on with 1 of 2 devices: its batch is both shares, and its pairs are the 2 devices'."""
    batch = torch.arange(8.0)
    shares = torch.cat([share.roll(1, 0) for share in batch.chunk(2)])  # what each of 2 devices rolls
    assert rolled_within(batch, 2).tolist() == shares.tolist() == [3, 0, 1, 2, 7, 4, 5, 6]
    assert rolled_within(batch, 1).tolist() == batch.roll(1, 0).tolist()  # one device: the whole batch
    images = batch.view(8, 1, 1, 1).expand(8, 3, 2, 2)
    assert mix_images(images, 0.75, 2)[:, 0, 0, 0].tolist() == (0.75 * batch + 0.25 * shares).tolist()


def test_coefficient_is_folded_beta_and_deterministic():
    draws = np.array([mixup_coefficient(0, step, 0.2) for step in range(4000)])
    assert draws.min() >= 0.5 and draws.max() <= 1.0
    assert mixup_coefficient(0, 17, 0.2) == mixup_coefficient(0, 17, 0.2)  # resume draws the same
    assert mixup_coefficient(0, 17, 0.2) != mixup_coefficient(1, 17, 0.2)
    # max(a, 1-a) of Beta(0.2, 0.2) has CDF 2 * F(x) - 1 on [0.5, 1]; a Beta(1,1) draw would fail this badly.
    folded = stats.beta(0.2, 0.2)
    assert stats.kstest(draws, lambda x: 2 * folded.cdf(x) - 1).pvalue > 1e-3
    assert stats.kstest(draws, lambda x: 2 * x - 1).pvalue < 1e-6


def test_alpha_zero_turns_mixup_off():
    assert mixup_coefficient(0, 3, 0.0) is None


@pytest.mark.parametrize("accum", [1, 4])
def test_train_step_with_mixup_matches_soft_target_loss(accum):
    # The step's loss and gradients equal those of the mixed batch against the mixed one-hot target,
    # also when the batch is cut into micro-batches (the roll spans the whole batch).
    cfg = ModelConfig(variant=None, width=32, depth=1, num_heads=2, mlp_dim=64, patch_size=4, num_classes=10)
    images, labels = torch.randn(16, 3, 16, 16), torch.randint(0, 10, (16,))
    a = 0.8
    torch.manual_seed(1)
    model = ViT(cfg, 16)
    torch.nn.init.normal_(model.head.weight, std=0.02)
    reference = ViT(cfg, 16)
    reference.load_state_dict(model.state_dict())
    optimizer = build_optimizer(model, OptimConfig(warmup_steps=1, clip_norm=None), total_steps=10)
    loss, _, _ = train_step(model, optimizer, images, labels, 0, accum, None, "fp32", mixup=a)
    target = a * F.one_hot(labels, 10).float() + (1 - a) * F.one_hot(labels.roll(1, 0), 10).float()
    logits = reference(a * images + (1 - a) * images.roll(1, 0))
    expected = -(target * logits.log_softmax(-1)).sum(-1).mean()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
