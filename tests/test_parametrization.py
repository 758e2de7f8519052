"""µP: multipliers, param groups, identity with SP at base width, and that it survives resume and compile."""

from __future__ import annotations

import math

import pytest
import torch

from mupvit.checkpoint import load_checkpoint
from mupvit.config import ConfigError, ModelConfig, OptimConfig, config_from_dict
from mupvit.models.parametrization import parametrization, with_width
from mupvit.models.vit import ViT
from mupvit.optim import build_optimizer, describe_param_groups, model_param_groups
from mupvit.train import main, run

from .helpers import QuietLogger, tiny_config

BASE = dict(variant=None, width=32, depth=2, num_heads=2, mlp_dim=64, patch_size=4, num_classes=10, base_width=32)
HIDDEN_SUFFIXES = ("attn.qkv.weight", "attn.out.weight", "mlp.fc1.weight", "mlp.fc2.weight", "pre_logits.weight")


def model_at(width: int, **overrides) -> ViT:
    torch.manual_seed(0)
    cfg = with_width(ModelConfig(**{**BASE, "parametrization": "mup", **overrides}), width)
    return ViT(cfg, 16)


# ---------------------------------------------------------------- identity with SP at m = 1


@pytest.mark.parametrize("extras", [{}, {"model.head": "mlp", "model.posemb": "learn", "model.pool": "tok"}],
                         ids=["linear-sincos-gap", "mlp-learn-tok"])
def test_mup_at_base_width_is_sp_bit_for_bit(digits_root, tmp_path, extras):
    finals = {}
    for name in ("sp", "mup"):
        cfg = tiny_config(digits_root, tmp_path / name, **{"model.parametrization": name, "model.base_width": 32,
                                                             "train.total_steps": 5, **extras})
        finals[name] = load_checkpoint(run(cfg, QuietLogger())["checkpoint"])["model"]
    for key, tensor in finals["sp"].items():
        assert torch.equal(tensor, finals["mup"][key]), key
    # The comparison can fail: away from base width the two parametrizations train differently.
    other = {}
    for name in ("sp", "mup"):
        cfg = tiny_config(digits_root, tmp_path / f"{name}-m2", **{"model.parametrization": name,
                                                                    "model.base_width": 16, "train.total_steps": 5})
        other[name] = load_checkpoint(run(cfg, QuietLogger())["checkpoint"])["model"]
    assert not torch.equal(other["sp"]["blocks.0.mlp.fc1.weight"], other["mup"]["blocks.0.mlp.fc1.weight"])


def test_multipliers_are_exactly_one_at_base_width():
    p = parametrization(ModelConfig(**{**BASE, "parametrization": "mup"}))
    sp = parametrization(ModelConfig(**BASE))
    assert (p.width_mult, p.hidden_lr_mult, p.readout_mult) == (1.0, 1.0, 1.0)
    assert p.attn_scale == sp.attn_scale and p.posemb_std == sp.posemb_std


# ---------------------------------------------------------------- the µP rules at m = 4


def test_param_roles_and_group_lr_multipliers():
    model = model_at(128, head="mlp", posemb="learn", pool="tok")
    groups = model_param_groups(model)
    by_role = {g["role"]: g for g in groups}
    assert by_role["hidden"]["lr_mult"] == 0.25
    assert by_role["input"]["lr_mult"] == by_role["readout"]["lr_mult"] == by_role["vector"]["lr_mult"] == 1.0
    assert by_role["input"]["names"] == ["patch_embed.weight"]
    assert by_role["readout"]["names"] == ["head.weight"]
    assert all(n.endswith(HIDDEN_SUFFIXES) for n in by_role["hidden"]["names"])
    assert len(by_role["hidden"]["names"]) == 2 * 4 + 1  # 4 kernels per block + pre_logits
    assert {"pos_embedding", "cls", "head.bias", "patch_embed.bias"} <= set(by_role["vector"]["names"])
    names = [n for g in groups for n in g["names"]]
    assert sorted(names) == sorted(n for n, _ in model.named_parameters())  # each parameter in exactly one group
    # The optimiser applies them: hidden kernels get lr/4 at the schedule's peak, everything else lr.
    opt = build_optimizer(model, OptimConfig(lr=1e-2, warmup_steps=10), total_steps=100)
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    opt.step(10)
    lrs = {g["role"]: g["lr"] for g in opt.param_groups}
    assert lrs == {"hidden": pytest.approx(2.5e-3), "input": pytest.approx(1e-2), "readout": pytest.approx(1e-2),
                   "vector": pytest.approx(1e-2)}


def test_sp_groups_have_unit_multipliers_at_any_width():
    model = ViT(with_width(ModelConfig(**BASE), 128), 16)
    assert {g["lr_mult"] for g in model_param_groups(model)} == {1.0}
    assert model.head.mult == 1.0 and model.parametrization.width_mult == 4.0


def test_readout_multiplies_its_input_by_one_over_m():
    model = model_at(128)
    torch.nn.init.normal_(model.head.weight)
    x = torch.randn(3, 3, 16, 16)
    with torch.no_grad():
        expected = model.features(x) / 4 @ model.head.weight.T + model.head.bias
        torch.testing.assert_close(model(x), expected)


def test_attention_scale_rules():
    # fixed_head_dim: heads of 16 at every width, scale 1/sqrt(16).
    wide = model_at(128)
    assert wide.blocks[0].attn.num_heads == 8 and wide.blocks[0].attn.scale == pytest.approx(1 / 4)
    # fixed_heads: 2 heads of 64 at width 128, base head 16: sqrt(16)/64 (µP) vs 1/sqrt(64) (SP).
    mup = model_at(128, widening="fixed_heads")
    assert mup.blocks[0].attn.num_heads == 2 and mup.blocks[0].attn.scale == pytest.approx(4 / 64)
    sp = ViT(with_width(ModelConfig(**{**BASE, "widening": "fixed_heads"}), 128), 16)
    assert sp.blocks[0].attn.scale == pytest.approx(1 / 8)


def test_hidden_init_is_fan_in_scaled_and_posemb_width_independent():
    # µP needs hidden kernels with variance ~ 1/fan_in: xavier on square (and 4:1) kernels gives exactly that.
    narrow, wide = model_at(64, posemb="learn"), model_at(512, posemb="learn")
    for name in ("blocks.0.attn.out.weight", "blocks.0.mlp.fc1.weight", "blocks.0.mlp.fc2.weight"):
        s_narrow, s_wide = (dict(m.named_parameters())[name].std().item() for m in (narrow, wide))
        assert s_narrow / s_wide == pytest.approx(math.sqrt(512 / 64), rel=0.05), name
    # A learned position embedding keeps std 1/sqrt(base_width) (SP would shrink it with width).
    assert wide.pos_embedding.std().item() == pytest.approx(1 / math.sqrt(32), rel=0.05)
    assert torch.count_nonzero(wide.head.weight) == 0


def test_weight_decay_does_not_change_with_width_or_lr_multiplier():
    for width in (32, 128):
        model = model_at(width)
        before = {n: p.detach().clone() for n, p in model.named_parameters()}
        opt = build_optimizer(model, OptimConfig(lr=1e-2, weight_decay=0.1, warmup_steps=10), total_steps=100)
        for p in model.parameters():
            p.grad = torch.zeros_like(p)
        opt.step(10)  # zero gradients: only the decay moves the kernels, by schedule (1.0) x wd
        for name, p in model.named_parameters():
            factor = 0.9 if model.param_roles()[name] != "vector" else 1.0
            torch.testing.assert_close(p.detach(), before[name] * factor, rtol=1e-6, atol=0)


@pytest.mark.parametrize("name", ["sp", "mup"])
def test_zero_init_query(name):
    model = model_at(64, parametrization=name, zero_init_query=True)
    q, k, v = model.blocks[0].attn.qkv.weight.chunk(3)
    assert torch.count_nonzero(q) == 0 and torch.count_nonzero(k) > 0 and torch.count_nonzero(v) > 0
    q, _, _ = model_at(64, parametrization=name).blocks[0].attn.qkv.weight.chunk(3)
    assert torch.count_nonzero(q) > 0  # off by default


# ---------------------------------------------------------------- survives resume and torch.compile


def test_mup_resume_is_exact_and_keeps_multipliers(digits_root, tmp_path):
    overrides = {"model.parametrization": "mup", "model.base_width": 16}
    straight = run(tiny_config(digits_root, tmp_path / "a", **overrides), QuietLogger())
    cfg = tiny_config(digits_root, tmp_path / "b", **overrides)
    run(cfg, QuietLogger(), stop_at_step=4)
    resumed = run(cfg, QuietLogger())
    a, b = load_checkpoint(straight["checkpoint"]), load_checkpoint(resumed["checkpoint"])
    for key, tensor in a["model"].items():
        assert torch.equal(tensor, b["model"][key]), key
    groups = {g["role"]: g for g in b["optimizer"]["param_groups"]}
    assert groups["hidden"]["lr_mult"] == 0.5 and groups["readout"]["lr_mult"] == 1.0


@pytest.mark.slow
def test_mup_model_compiles_to_the_same_function():
    model = model_at(64)
    torch.nn.init.normal_(model.head.weight)
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(torch.compile(model)(x), model(x), rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------- config and reporting


def test_bad_parametrization_settings_fail_with_the_key():
    base = {"model": {**BASE, "parametrization": "mup"}, "data": {"image_size": 16, "eval_resize": 16}}
    with pytest.raises(ConfigError, match="model.parametrization.*'sp', 'mup'"):
        config_from_dict({**base, "model": {**BASE, "parametrization": "mu"}})
    with pytest.raises(ConfigError, match="model.base_width: got 0"):
        config_from_dict({**base, "model": {**BASE, "base_width": 0}})
    with pytest.raises(ConfigError, match="model.base_width: 33 is not divisible by model.num_heads=2"):
        config_from_dict({**base, "model": {**BASE, "parametrization": "mup", "widening": "fixed_heads",
                                            "base_width": 33}})


def test_print_param_groups(capsys):
    code = main(["experiments/vit_s16_i1k_90ep.yaml", "--set", "model.parametrization=mup",
                 "--set", "model.width=768", "--print-param-groups"])
    out = capsys.readouterr().out
    assert code == 0
    assert "parametrization mup: width_mult 2, hidden lr x 0.5, readout input x 0.5" in out
    assert "hidden         0.5   0.0001      48" in out and "vector           1        0" in out


def test_describe_param_groups_lists_every_group():
    model = model_at(64)
    text = describe_param_groups(model_param_groups(model), 1e-4)
    assert [line.split()[0] for line in text.splitlines()] == ["role", "hidden", "input", "readout", "vector"]
