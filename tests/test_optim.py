"""Optimiser facts of docs/RECIPE.md: big_vision's Adam, independent weight decay on kernels only,
global-norm clipping of the raw gradient, linear warmup from exactly 0 + cosine, and the 90-epoch step budget.
tests/test_optax_adam.py checks the update's float32 arithmetic against optax's, bit for bit."""

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from mupvit.config import ModelConfig, OptimConfig, load_config, steps_for_epochs, total_steps
from mupvit.models.vit import ViT, decay_mask
from mupvit.optim import BigVisionAdam, build_optimizer, clip_by_global_norm, warmup_cosine

HEADLINE = Path(__file__).resolve().parents[1] / "experiments" / "vit_s16_i1k_90ep.yaml"
W, T = 10_000, 112_603


def closed_form(t, warmup, total):
    """docs/RECIPE.md: min(1, t/W) * 0.5 * (1 + cos(pi * clip((t - W) / (T - W), 0, 1)))."""
    progress = min(max((t - warmup) / (total - warmup), 0.0), 1.0)
    return min(1.0, t / warmup) * 0.5 * (1 + math.cos(math.pi * progress))


def small_model(**overrides) -> ViT:
    """Small ViT with every kind of parameter (kernels, biases, LayerNorm, learned posemb, cls, pre_logits),
    all re-drawn non-zero so that 'untouched' cannot pass by 0 * factor = 0."""
    torch.manual_seed(0)
    cfg = dict(variant=None, width=64, depth=2, num_heads=2, mlp_dim=128, patch_size=4, num_classes=10,
               posemb="learn", pool="tok", head="mlp")
    model = ViT(ModelConfig(**{**cfg, **overrides}), 16)
    with torch.no_grad():
        for p in model.parameters():
            nn.init.normal_(p)
    return model


def snapshot(model):
    return {name: p.detach().clone() for name, p in model.named_parameters()}


def set_grads(model, fn):
    gen = torch.Generator().manual_seed(123)
    for p in model.parameters():
        p.grad = fn(p, gen)


# ---------------------------------------------------------------- schedule and step budget


@pytest.mark.parametrize("t", [0, 1, W - 1, W, W + 1, (W + T) // 2, T - 1, T])
def test_warmup_cosine_closed_form(t):
    assert warmup_cosine(t, W, T) == pytest.approx(closed_form(t, W, T), rel=1e-12, abs=1e-15)


def test_warmup_cosine_endpoints():
    assert warmup_cosine(0, W, T) == 0.0  # warmup starts at exactly 0: the first update is a no-op
    assert warmup_cosine(W // 2, W, T) == pytest.approx(0.5)  # linear warmup
    assert warmup_cosine(W, W, T) == 1.0  # peak at the end of warmup
    assert warmup_cosine(T, W, T) == pytest.approx(0.0, abs=1e-15)  # cosine reaches 0 at the last step
    assert warmup_cosine(T + 100, W, T) == pytest.approx(0.0, abs=1e-15)  # clipped past the end
    # Monotone decay after warmup.
    values = [warmup_cosine(t, W, T) for t in range(W, T + 1, 5000)]
    assert all(a >= b for a, b in zip(values, values[1:], strict=False))


def test_steps_for_90_epochs():
    # round(1281167 * 90 / 1024) = 112603.
    assert steps_for_epochs(90, 1_281_167, 1024) == 112_603


def test_headline_config_total_steps():
    cfg = load_config(HEADLINE)
    assert cfg.train.epochs == 90 and cfg.train.batch_size == 1024
    assert cfg.data.num_train_examples == 1_281_167
    assert total_steps(cfg) == 112_603


def test_total_steps_overrides_epochs():
    cfg = load_config(HEADLINE, ["train.total_steps=200000"])
    assert cfg.train.epochs == 90  # still set, but ignored
    assert total_steps(cfg) == 200_000
    cfg.train.total_steps = 20_000
    assert total_steps(cfg, num_train=1_281_167) == 20_000


# ---------------------------------------------------------------- hyper-parameters


def test_headline_optimizer_hyperparameters():
    cfg = load_config(HEADLINE)
    o = cfg.optim
    assert (o.lr, o.b1, o.b2, o.eps, o.weight_decay, o.clip_norm, o.warmup_steps) == (
        1e-3, 0.9, 0.999, 1e-8, 1e-4, 1.0, 10_000)
    torch.manual_seed(0)
    model = ViT(cfg.model, cfg.data.image_size)
    opt = build_optimizer(model, o, total_steps(cfg))
    assert isinstance(opt, BigVisionAdam)
    assert opt.total_steps == 112_603
    assert opt.cfg.weight_decay == 1e-4 and opt.cfg.clip_norm == 1.0 and opt.cfg.warmup_steps == 10_000
    for group in opt.param_groups:
        assert group["betas"] == (0.9, 0.999) and group["eps"] == 1e-8 and group["mu_dtype"] == "bfloat16"
        assert group["weight_decay"] == 1e-4 and group["count"] == 0  # decay applies where group["decay"]
    # The decay group is exactly the kernels of decay_mask; every trainable parameter is in one group.
    names = {id(p): n for n, p in model.named_parameters()}
    decayed = {names[id(p)] for g in opt.param_groups if g["decay"] for p in g["params"]}
    assert decayed == {n for n, p in model.named_parameters() if decay_mask(n, p)}
    assert sum(len(g["params"]) for g in opt.param_groups) == len(names)
    # Peak lr 1e-3 at the end of warmup, 0 at step 0.
    assert opt.schedule(0) == 0.0 and opt.schedule(10_000) == 1.0
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    assert opt.step(10_000) == pytest.approx(1e-3, rel=1e-12)
    assert all(g["lr"] == pytest.approx(1e-3, rel=1e-12) for g in opt.param_groups)


# ---------------------------------------------------------------- independent weight decay


@pytest.mark.parametrize("lr, wd", [(1e-3, 1e-4), (0.5, 0.1)])
def test_zero_grad_step_decays_kernels_only_by_schedule_times_wd(lr, wd):
    model = small_model()
    cfg = OptimConfig(lr=lr, weight_decay=wd, warmup_steps=10)
    opt = build_optimizer(model, cfg, total_steps=100)
    t = 30
    s = warmup_cosine(t, 10, 100)
    assert 0 < s < 1
    before = snapshot(model)
    set_grads(model, lambda p, g: torch.zeros_like(p))
    opt.step(t)
    f32 = np.float32
    for name, p in model.named_parameters():
        if decay_mask(name, p):
            # optax: p + -(s * (lr * adam + wd * p)) with a zero Adam update, in float32; NOT lr * s * wd * p
            x = before[name].numpy()
            assert np.array_equal(p.detach().numpy(), x - f32(s) * (f32(wd) * x)), name
            assert not torch.allclose(p, before[name] * (1.0 - lr * s * wd), rtol=0, atol=0), name  # AdamW-style
        else:
            assert torch.equal(p, before[name]), name  # biases, LayerNorm, posemb, cls: bit-for-bit


def test_first_update_is_noop_even_with_gradients():
    model = small_model()
    opt = build_optimizer(model, OptimConfig(lr=0.5, weight_decay=0.1, warmup_steps=10), total_steps=100)
    before = snapshot(model)
    set_grads(model, lambda p, g: torch.randn(p.shape, generator=g))
    assert opt.step(0) == 0.0
    for name, p in model.named_parameters():
        assert torch.equal(p, before[name]), name


# ---------------------------------------------------------------- clipping


def grads_of(params):
    return [p.grad.clone() for p in params]


def global_norm(tensors):
    return math.sqrt(sum(float((t.double() ** 2).sum()) for t in tensors))


def make_params(grads):
    params = []
    for g in grads:
        p = torch.zeros_like(g, requires_grad=True)
        p.grad = g.clone()
        params.append(p)
    return params


@pytest.mark.parametrize("unit", [1.0, 1e-6])
def test_clip_scales_to_max_norm_and_returns_preclip_norm(unit):
    # unit 1e-6: norm 13e-6 clipped to 1e-6 tells optax's max_norm / norm from torch's max_norm / (norm + 1e-6).
    params = make_params([torch.tensor([3.0, 4.0]) * unit, torch.tensor([[12.0]]) * unit])  # global norm 13 unit
    norm = clip_by_global_norm(params, unit)
    assert float(norm) == pytest.approx(13.0 * unit, rel=1e-6)
    after = grads_of(params)
    assert global_norm(after) == pytest.approx(unit, rel=1e-6)  # min(norm, max_norm)
    # Uniform rescale by max_norm / norm: the direction is kept.
    torch.testing.assert_close(after[0], torch.tensor([3.0, 4.0]) * unit / 13, rtol=1e-6, atol=0)
    torch.testing.assert_close(after[1], torch.tensor([[12.0]]) * unit / 13, rtol=1e-6, atol=0)


def test_clip_leaves_small_gradients_untouched():
    torch.manual_seed(0)
    grads = [torch.randn(5, 4) * 0.05, torch.randn(7) * 0.05]
    assert global_norm(grads) < 1.0
    params = make_params(grads)
    norm = clip_by_global_norm(params, 1.0)
    assert float(norm) == pytest.approx(global_norm(grads), rel=1e-5)
    for g0, g1 in zip(grads, grads_of(params), strict=True):
        assert torch.equal(g0, g1)


def test_clip_none_disables_clipping():
    grads = [torch.full((3, 3), 100.0), torch.full((2,), -50.0)]
    params = make_params(grads)
    norm = clip_by_global_norm(params, None)
    assert float(norm) == pytest.approx(global_norm(grads), rel=1e-6)
    for g0, g1 in zip(grads, grads_of(params), strict=True):
        assert torch.equal(g0, g1)


def test_clipped_huge_gradients_give_bounded_adam_update():
    # Clip the raw gradient first (as train.py does), then Adam: the moments see the clipped gradient and
    # each element moves by at most lr * s (+ the decay term).
    model = small_model()
    cfg = OptimConfig(lr=1e-3, weight_decay=1e-4, warmup_steps=10)
    opt = build_optimizer(model, cfg, total_steps=100)
    before = snapshot(model)
    set_grads(model, lambda p, g: torch.randn(p.shape, generator=g) * 1e6)
    raw_norm = clip_by_global_norm(model.parameters(), 1.0)
    assert float(raw_norm) > 1e6
    clipped = {name: p.grad.clone() for name, p in model.named_parameters()}
    assert global_norm(clipped.values()) == pytest.approx(1.0, rel=1e-5)
    t = 20
    s = warmup_cosine(t, 10, 100)
    opt.step(t)
    for name, p in model.named_parameters():
        state = opt.optimizer.state[p]
        torch.testing.assert_close(state["exp_avg"], (1 - 0.9) * clipped[name])
        decay = s * cfg.weight_decay * before[name].abs() if decay_mask(name, p) else 0.0
        change = (p - before[name]).abs()
        assert bool((change <= cfg.lr * s * (1 + 1e-5) + decay + 1e-6).all()), name


# ---------------------------------------------------------------- full update against a manual Adam


def test_adam_step_matches_manual_update():
    model = small_model()
    lr, wd, eps, b1, b2 = 1e-3, 0.1, 1e-8, 0.9, 0.999
    opt = build_optimizer(model, OptimConfig(lr=lr, weight_decay=wd, warmup_steps=10), total_steps=100)
    p = {name: q.detach().double().clone() for name, q in model.named_parameters()}
    m = {name: torch.zeros_like(q) for name, q in p.items()}
    v = {name: torch.zeros_like(q) for name, q in p.items()}
    gen = torch.Generator().manual_seed(7)
    for count, t in enumerate([30, 31], start=1):
        s = warmup_cosine(t, 10, 100)
        for q in model.parameters():
            q.grad = torch.randn(q.shape, generator=gen)
        grads = {name: q.grad.double() for name, q in model.named_parameters()}
        opt.step(t)
        # optax-style: decay the pre-update parameter by s * wd (kernels only), then the bias-corrected Adam step.
        # On the first step m_hat = g and v_hat = g**2.
        for name, q in model.named_parameters():
            g = grads[name]
            m[name] = b1 * m[name] + (1 - b1) * g
            v[name] = b2 * v[name] + (1 - b2) * g**2
            m_hat, v_hat = m[name] / (1 - b1**count), v[name] / (1 - b2**count)
            if count == 1:
                torch.testing.assert_close(m_hat, g)
                torch.testing.assert_close(v_hat, g**2)
            kept = p[name] * (1 - s * wd) if decay_mask(name, q) else p[name]
            p[name] = kept - lr * s * m_hat / (v_hat.sqrt() + eps)
            torch.testing.assert_close(q.detach().double(), p[name], rtol=1e-6, atol=1e-6)


def test_bfloat16_first_moment_is_stored_rounded_in_the_imagenet_configs():
    """big_vision's ImageNet configs keep Adam's first moment in bfloat16 (optax mu_dtype); the arithmetic around it
    is tests/test_optax_adam.py's. Here: the configs ask for it, the stored moments are bfloat16 values, and it
    changes the run."""
    assert load_config(HEADLINE).optim.mu_dtype == "bfloat16" and OptimConfig().mu_dtype == "float32"
    runs = {}
    for mu_dtype in ("float32", "bfloat16"):
        model = small_model()
        opt = build_optimizer(model, OptimConfig(lr=1e-2, weight_decay=0.0, warmup_steps=1, mu_dtype=mu_dtype), 10**6)
        gen = torch.Generator().manual_seed(3)
        for step in range(1, 6):
            for q in model.parameters():
                q.grad = torch.randn(q.shape, generator=gen)
            opt.step(step)  # schedule 1.0 from step 1 (warmup 1)
        moments = [s["exp_avg"] for s in opt.optimizer.state.values()]
        stored_in_bf16 = all(torch.equal(mom, mom.to(torch.bfloat16).float()) for mom in moments)
        assert stored_in_bf16 == (mu_dtype == "bfloat16")
        runs[mu_dtype] = torch.cat([q.detach().flatten() for q in model.parameters()])
    assert not torch.equal(runs["float32"], runs["bfloat16"])
