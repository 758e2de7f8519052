"""big_vision's .npz layout, built here from the documented names and shapes (no download, no jax): loading it
gives the logits of big_vision's own forward pass (a numpy transcription of models/vit.py below), both the
per-layer and the scanned layout load, ours -> npz -> ours is bit-identical, a learned position embedding is
resampled as resample_posemb does, the head can be dropped, and every mismatch is named."""

from __future__ import annotations

import math
import zipfile

import numpy as np
import pytest
import torch

from mupvit.config import ModelConfig
from mupvit.models.adapters import adapter_for
from mupvit.models.adapters.base import AdapterError, full_state, load_foreign
from mupvit.models.adapters.big_vision import resample_posemb
from mupvit.models.adapters.files import read_npz, write_npz
from mupvit.models.vit import ViT

from .helpers import damaged_npz

D, HEADS, MLP, PATCH, IMAGE, DEPTH, CLASSES = 32, 2, 64, 4, 16, 2, 5
SHAPE = dict(variant=None, width=D, depth=DEPTH, num_heads=HEADS, mlp_dim=MLP, patch_size=PATCH,
             num_classes=CLASSES)


def flax_params(rng: np.random.Generator, posemb: str = "sincos2d", head: str = "linear", pool: str = "gap",
                grid: int = IMAGE // PATCH) -> dict[str, np.ndarray]:
    """A big_vision ViT's parameters under their flattened names, in flax shapes."""
    def r(*shape):
        return rng.normal(0, 0.2, shape).astype(np.float32)

    p = {"embedding/kernel": r(PATCH, PATCH, 3, D), "embedding/bias": r(D),
         "Transformer/encoder_norm/scale": 1 + r(D), "Transformer/encoder_norm/bias": r(D),
         "head/kernel": r(D, CLASSES), "head/bias": r(CLASSES)}
    for i in range(DEPTH):
        b = f"Transformer/encoderblock_{i}"
        p |= {f"{b}/LayerNorm_0/scale": 1 + r(D), f"{b}/LayerNorm_0/bias": r(D),
              f"{b}/LayerNorm_1/scale": 1 + r(D), f"{b}/LayerNorm_1/bias": r(D),
              f"{b}/MlpBlock_0/Dense_0/kernel": r(D, MLP), f"{b}/MlpBlock_0/Dense_0/bias": r(MLP),
              f"{b}/MlpBlock_0/Dense_1/kernel": r(MLP, D), f"{b}/MlpBlock_0/Dense_1/bias": r(D),
              f"{b}/MultiHeadDotProductAttention_0/out/kernel": r(HEADS, D // HEADS, D),
              f"{b}/MultiHeadDotProductAttention_0/out/bias": r(D)}
        for n in ("query", "key", "value"):
            p[f"{b}/MultiHeadDotProductAttention_0/{n}/kernel"] = r(D, HEADS, D // HEADS)
            p[f"{b}/MultiHeadDotProductAttention_0/{n}/bias"] = r(HEADS, D // HEADS)
    if posemb == "learn":
        p["pos_embedding"] = r(1, grid * grid, D)
    if head == "mlp":
        p |= {"pre_logits/kernel": r(D, D), "pre_logits/bias": r(D)}
    if pool == "tok":
        p["cls"] = r(1, 1, D)
    return p


def layer_norm(x, scale, bias, eps=1e-6):
    mean, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * scale + bias


def big_vision_forward(p: dict[str, np.ndarray], images_nhwc: np.ndarray, posemb: np.ndarray | None,
                       pool: str = "gap") -> np.ndarray:
    """big_vision models/vit.py _Model.__call__ in numpy (flax nn.gelu: the tanh approximation)."""
    n, hgt, wid, _ = images_nhwc.shape
    g = hgt // PATCH
    patches = images_nhwc.reshape(n, g, PATCH, g, PATCH, 3).transpose(0, 1, 3, 2, 4, 5)  # n, gy, gx, ph, pw, c
    x = np.einsum("nyxhwc,hwcd->nyxd", patches, p["embedding/kernel"]) + p["embedding/bias"]
    x = x.reshape(n, g * g, D)
    x = x + (posemb if posemb is not None else p["pos_embedding"])
    if pool == "tok":
        x = np.concatenate([np.tile(p["cls"], (n, 1, 1)), x], axis=1)
    for i in range(DEPTH):
        b = f"Transformer/encoderblock_{i}/"
        a = b + "MultiHeadDotProductAttention_0/"
        y = layer_norm(x, p[b + "LayerNorm_0/scale"], p[b + "LayerNorm_0/bias"])
        q, k, v = (np.einsum("nld,dhk->nlhk", y, p[a + f"{m}/kernel"]) + p[a + f"{m}/bias"]
                   for m in ("query", "key", "value"))
        logits = np.einsum("nqhk,nlhk->nhql", q / math.sqrt(D // HEADS), k)
        weights = np.exp(logits - logits.max(-1, keepdims=True))
        weights /= weights.sum(-1, keepdims=True)
        y = np.einsum("nhql,nlhk->nqhk", weights, v)
        x = x + np.einsum("nqhk,hkd->nqd", y, p[a + "out/kernel"]) + p[a + "out/bias"]
        y = layer_norm(x, p[b + "LayerNorm_1/scale"], p[b + "LayerNorm_1/bias"])
        y = y @ p[b + "MlpBlock_0/Dense_0/kernel"] + p[b + "MlpBlock_0/Dense_0/bias"]
        y = 0.5 * y * (1 + np.tanh(math.sqrt(2 / math.pi) * (y + 0.044715 * y**3)))
        x = x + y @ p[b + "MlpBlock_0/Dense_1/kernel"] + p[b + "MlpBlock_0/Dense_1/bias"]
    x = layer_norm(x, p["Transformer/encoder_norm/scale"], p["Transformer/encoder_norm/bias"])
    x = x[:, 0] if pool == "tok" else x.mean(axis=1)
    if "pre_logits/kernel" in p:
        x = np.tanh(x @ p["pre_logits/kernel"] + p["pre_logits/bias"])
    return x @ p["head/kernel"] + p["head/bias"]


def model(**fields) -> ViT:
    return ViT(ModelConfig(**{**SHAPE, **fields}), IMAGE).eval()


def load(params: dict[str, np.ndarray], posemb: str = "sincos2d", keep_head: bool = False) -> ViT:
    """A fresh model with `params` loaded through the big_vision adapter (source named x.npz)."""
    target = model(posemb=posemb)
    adapter = adapter_for("big_vision", ModelConfig(**{**SHAPE, "posemb": posemb}), IMAGE)
    load_foreign(target, {k: torch.from_numpy(v) for k, v in params.items()}, adapter, "x.npz", keep_head=keep_head)
    return target


@pytest.mark.parametrize("posemb, head, pool", [("sincos2d", "linear", "gap"), ("learn", "mlp", "tok")])
def test_loaded_weights_give_big_visions_logits(posemb, head, pool):
    rng = np.random.default_rng(0)
    params = flax_params(rng, posemb, head, pool)
    ours = model(posemb=posemb, head=head, pool=pool)
    adapter = adapter_for("big_vision", ModelConfig(**{**SHAPE, "posemb": posemb, "head": head, "pool": pool}), IMAGE)
    load_foreign(ours, {k: torch.from_numpy(v) for k, v in params.items()}, adapter)
    images = rng.uniform(-1, 1, (3, IMAGE, IMAGE, 3)).astype(np.float32)
    table = ours.pos_embedding.detach().numpy() if posemb == "sincos2d" else None
    expected = big_vision_forward(params, images.astype(np.float64), table, pool)
    with torch.no_grad():
        got = ours(torch.from_numpy(images).permute(0, 3, 1, 2)).numpy()
    np.testing.assert_allclose(got, expected, atol=2e-5, rtol=0)


def test_ours_to_npz_to_ours_is_bit_identical(tmp_path):
    torch.manual_seed(0)
    ours = model(posemb="learn", head="mlp", pool="tok")
    with torch.no_grad():
        for p in ours.parameters():
            p.normal_()
    cfg = ModelConfig(**{**SHAPE, "posemb": "learn", "head": "mlp", "pool": "tok"})
    path = tmp_path / "ours.npz"
    write_npz(path, adapter_for("big_vision", cfg, IMAGE).to_foreign(full_state(ours)))
    back = ViT(cfg, IMAGE)
    load_foreign(back, read_npz(path), adapter_for("big_vision", cfg, IMAGE))
    assert all(torch.equal(back.state_dict()[k], v) for k, v in ours.state_dict().items())
    assert "pos_embedding" not in adapter_for("big_vision", ModelConfig(**SHAPE), IMAGE).to_foreign(
        full_state(model()))  # a sincos2d table is computed, not stored, as in big_vision


def test_scanned_layout_and_training_checkpoint_prefix_load_the_same(tmp_path):
    params = flax_params(np.random.default_rng(1))
    scanned = {k: v for k, v in params.items() if not k.startswith("Transformer/encoderblock_")}
    for key in [k for k in params if k.startswith("Transformer/encoderblock_0/")]:
        rest = key.removeprefix("Transformer/encoderblock_0/")
        scanned[f"Transformer/encoderblock/{rest}"] = np.stack(
            [params[f"Transformer/encoderblock_{i}/{rest}"] for i in range(DEPTH)])
    a, b = load(params), load({f"params/{k}": v for k, v in scanned.items()})
    assert all(torch.equal(a.state_dict()[k], v) for k, v in b.state_dict().items())


def test_mismatches_are_named_in_big_visions_names():
    params = flax_params(np.random.default_rng(2))
    del params["Transformer/encoderblock_1/MlpBlock_0/Dense_0/bias"]
    params["Transformer/encoderblock_0/LayerNorm_0/scale"] = np.ones(7, np.float32)
    params["Transformer/encoderblock_9/LayerNorm_0/scale"] = np.ones(D, np.float32)
    with pytest.raises(AdapterError) as err:
        load(params)
    text = str(err.value)
    assert text.startswith("x.npz (big_vision layout) does not fit the model")
    assert "missing: Transformer/encoderblock_1/MlpBlock_0/Dense_0/bias" in text
    assert "unexpected: Transformer/encoderblock_9/LayerNorm_0/scale" in text
    assert "mis-shaped: Transformer/encoderblock_0/LayerNorm_0/scale (7, model 32)" in text


def test_a_wrong_class_count_is_named_and_keep_head_drops_the_checkpoint_head():
    params = flax_params(np.random.default_rng(3))
    params["head/kernel"], params["head/bias"] = np.ones((D, 1000), np.float32), np.ones(1000, np.float32)
    with pytest.raises(AdapterError, match=r"mis-shaped: head/bias \(1000, model 5\), head/kernel \(32x1000"):
        load(params)
    fresh = load(params, keep_head=True)
    assert torch.count_nonzero(fresh.head.weight) == 0  # the model's own zero-initialised head
    scale = params["Transformer/encoderblock_0/LayerNorm_0/scale"]
    assert torch.equal(fresh.blocks[0].norm1.weight, torch.from_numpy(scale))


def test_a_learned_position_embedding_is_resampled_to_the_new_grid():
    params = flax_params(np.random.default_rng(4), posemb="learn", grid=2)
    # A table linear in the row index stays linear under order-1 zoom: row r of 4 -> r * (2 - 1) / (4 - 1).
    ramp = np.repeat(np.arange(2, dtype=np.float32), 2)[:, None] * np.ones((1, D), np.float32)
    params["pos_embedding"] = ramp[None]
    loaded = load(params, posemb="learn")
    rows = loaded.pos_embedding.detach().reshape(4, 4, D)[:, 0, 0]
    torch.testing.assert_close(rows, torch.arange(4, dtype=torch.float32) / 3)
    with pytest.raises(AdapterError, match="not a square grid"):
        resample_posemb(torch.zeros(1, 5, D), 4)


def test_a_file_that_is_not_an_npz_is_named(tmp_path):
    bad = tmp_path / "cut.npz"
    bad.write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(AdapterError, match=f"{bad}: not a readable .npz checkpoint"):
        read_npz(bad)


HEADER_DAMAGE = {  # numpy's failure -> what we say
    "unclosed": (b"(10,), }", b"(10,,  }", "an array header is damaged"),  # tokenize.TokenError in numpy
    "garbage": (b"'descr'", b"'de\x00cr'", "an array header is damaged"),
    "pickled": (b"'<f4'", b"'|O' ", "pickled Python objects"),  # numpy would advise allow_pickle=True
    "huge": (b"(10,), }" + b" " * 8, b"(100000000000,)}", "more data than fits in memory"),  # 400 GB
    "text": (b"'<f4'", b"'<U1'", "values that are not numbers"),
}


@pytest.mark.parametrize("compression", ["stored", "deflated"])
@pytest.mark.parametrize("damage", sorted(HEADER_DAMAGE))
def test_a_damaged_npz_member_is_named_in_our_words(tmp_path, damage, compression):
    old, new, reason = HEADER_DAMAGE[damage]
    bad = tmp_path / "w.npz"
    damaged_npz(bad, {"stored": zipfile.ZIP_STORED, "deflated": zipfile.ZIP_DEFLATED}[compression], old, new)
    with pytest.raises(AdapterError) as err:
        read_npz(bad)
    text = str(err.value)
    assert text.startswith(f"{bad}: not a readable .npz checkpoint (array 'w'): ") and reason in text, text
    assert "\n" not in text and "allow_pickle" not in text and len(text) < 300, text


@pytest.mark.parametrize("keep", [0.1, 0.5, 0.95])
def test_a_truncated_npz_is_named(tmp_path, keep):
    whole = tmp_path / "whole.npz"
    np.savez_compressed(whole, w=np.arange(1000, dtype=np.float32))
    cut = tmp_path / "cut.npz"
    cut.write_bytes(whole.read_bytes()[: int(whole.stat().st_size * keep)])
    with pytest.raises(AdapterError, match=f"^{cut}: not a readable .npz checkpoint"):
        read_npz(cut)


def test_an_oversized_npz_header_is_refused_without_numpys_advice(tmp_path):
    """numpy refuses a header over 10,000 characters with three lines that advise allow_pickle=True."""
    header = b"{'descr': '<f4', 'fortran_order': False, 'shape': (1,), }" + b" " * 20_000 + b"\n"
    bad = tmp_path / "w.npz"
    with zipfile.ZipFile(bad, "w") as out:
        out.writestr("w.npy", b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header + b"\x00" * 4)
    with pytest.raises(AdapterError) as err:
        read_npz(bad)
    assert str(err.value) == (f"{bad}: not a readable .npz checkpoint (array 'w'): it holds pickled Python objects "
                              "or an oversized array header, never loaded (they could run code); download or export "
                              "it again")
