"""Checkpoint adapters: the KeyMap's two-way renaming, and timm's VisionTransformer as a foreign layout (the same
logits after a move in either direction, bit-identical round trips, strict loading that names what is wrong)."""

from __future__ import annotations

import functools

import pytest
import timm
import torch

from mupvit.config import ModelConfig
from mupvit.models.adapters import adapter_for
from mupvit.models.adapters.base import AdapterError, KeyMap, full_state, load_foreign
from mupvit.models.adapters.timm_vit import NAMES
from mupvit.models.vit import ViT

SHAPE = dict(variant=None, width=64, depth=2, num_heads=2, mlp_dim=128, patch_size=8, num_classes=10)
IMAGE = 32


def ours(**fields) -> ViT:
    torch.manual_seed(0)
    model = ViT(ModelConfig(**{**SHAPE, **fields}), IMAGE)
    with torch.no_grad():  # the head, biases and LayerNorms start at 0 or 1: random values make logits meaningful
        for p in model.parameters():
            if p.ndim < 2 or p is model.head.weight:
                p.normal_(std=0.05)
    return model.eval()


def timm_model() -> torch.nn.Module:
    return timm.models.vision_transformer.VisionTransformer(
        img_size=IMAGE, patch_size=8, num_classes=10, embed_dim=64, depth=2, num_heads=2, mlp_ratio=2,
        class_token=False, global_pool="avg", fc_norm=False, qkv_bias=True,
        norm_layer=functools.partial(torch.nn.LayerNorm, eps=1e-6)).eval()


def test_keymap_maps_both_ways_and_first_rule_wins():
    names = KeyMap([("a.{i}.out.{p}", "a.{i}.proj.{p}"), ("a.{i}.{m}.{p}", "a.{i}.{m}.{p}"), ("n.{p}", "norm.{p}")])
    assert names.to_foreign("a.3.out.weight") == "a.3.proj.weight"
    assert names.to_ours("a.3.proj.weight") == "a.3.out.weight"
    assert names.to_foreign("a.0.qkv.bias") == "a.0.qkv.bias" and names.to_ours("norm.bias") == "n.bias"
    assert names.to_foreign("b.weight") is None and names.to_ours("a.0.x") is None  # placeholders are one component


@pytest.mark.parametrize("posemb", ["sincos2d", "learn"])
def test_ours_to_timm_gives_the_same_logits_and_comes_back_bit_identical(posemb):
    model, model_cfg = ours(posemb=posemb), ModelConfig(**{**SHAPE, "posemb": posemb})
    adapter = adapter_for("timm", model_cfg, IMAGE)
    foreign = adapter.to_foreign(full_state(model))
    theirs = timm_model()
    theirs.load_state_dict(foreign)  # strict: timm's every tensor present, nothing extra
    x = torch.randn(4, 3, IMAGE, IMAGE)
    with torch.no_grad():
        torch.testing.assert_close(theirs(x), model(x), atol=1e-5, rtol=0)
    back = ViT(model_cfg, IMAGE)
    load_foreign(back, theirs.state_dict(), adapter)
    assert back.state_dict().keys() == model.state_dict().keys()
    assert all(torch.equal(back.state_dict()[k], v) for k, v in model.state_dict().items())


def test_every_parameter_has_a_timm_name_and_keeps_its_role():
    model = ours(posemb="learn")
    roles = {NAMES.to_foreign(name): role for name, role in model.param_roles().items()}
    assert set(roles) == {n for n, _ in timm_model().named_parameters()}
    assert roles["patch_embed.proj.weight"] == "input" and roles["head.weight"] == "readout"
    assert roles["blocks.1.attn.proj.weight"] == "hidden" and roles["pos_embed"] == "vector"


def test_strict_loading_names_missing_unexpected_and_misshaped_tensors():
    adapter = adapter_for("timm", ModelConfig(**SHAPE), IMAGE)
    good = adapter.to_foreign(full_state(ours()))
    broken = {k: v for k, v in good.items() if k != "blocks.0.mlp.fc1.bias"}
    broken["blocks.0.mlp.fc2.weight"] = torch.zeros(3, 3)
    broken["blocks.7.norm1.weight"] = torch.zeros(64)
    with pytest.raises(AdapterError) as err:
        load_foreign(ours(), broken, adapter, source="x.safetensors")
    text = str(err.value)
    assert text.startswith("x.safetensors (timm layout) does not fit the model")
    assert "missing: blocks.0.mlp.fc1.bias" in text and "unexpected: blocks.7.norm1.weight" in text
    assert "mis-shaped: blocks.0.mlp.fc2.weight (3x3, model 64x128)" in text
    with pytest.raises(AdapterError, match="unexpected: dist_token"):
        load_foreign(ours(), {**good, "dist_token": torch.zeros(1)}, adapter)


def test_a_learned_position_embedding_does_not_pass_for_sincos():
    adapter = adapter_for("timm", ModelConfig(**SHAPE), IMAGE)
    foreign = adapter.to_foreign(full_state(ours()))
    foreign["pos_embed"] = foreign["pos_embed"] + 1e-3
    with pytest.raises(AdapterError, match="not the fixed sincos2d table.*model.posemb: learn"):
        load_foreign(ours(), foreign, adapter)
    del foreign["pos_embed"]
    with pytest.raises(AdapterError, match="missing: pos_embed"):
        load_foreign(ours(), foreign, adapter)


@pytest.mark.parametrize("fields, message", [
    ({"head": "mlp"}, "pre_logits layer that timm's VisionTransformer lacks"),
    ({"parametrization": "mup", "base_width": 32}, "µP model away from its base width"),
])
def test_models_timm_cannot_express_are_refused(fields, message):
    with pytest.raises(AdapterError, match=message):
        adapter_for("timm", ModelConfig(**{**SHAPE, **fields}), IMAGE)


def test_unknown_layout():
    with pytest.raises(AdapterError, match="unknown checkpoint layout 'jax'; known: big_vision, timm"):
        adapter_for("jax", ModelConfig(**SHAPE), IMAGE)
