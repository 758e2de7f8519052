"""Model and initialisation facts of docs/RECIPE.md (big_vision's "simple ViT", JAX/flax init semantics).

Every test here is meant to fail if the corresponding recipe fact is broken. Distribution checks use
sampling-error tolerances (about 5 standard errors), so they are deterministic under the fixed seed and
still far tighter than the gap to the wrong alternative they guard against.
"""

import math

import pytest
import torch
from torch import nn

from mupvit.config import ModelConfig
from mupvit.models.shapes import model_shape
from mupvit.models.vit import EncoderBlock, MlpBlock, ViT, decay_mask, posemb_sincos_2d

# JAX's truncated_normal(-2, 2) has this std relative to the untruncated normal (docs/RECIPE.md).
TRUNC_CORRECTION = 0.87962566103423978

SMALL = dict(variant=None, width=64, depth=2, num_heads=2, mlp_dim=128, patch_size=4, num_classes=10)
SMALL_IMAGE = 16


def small_model(**overrides) -> ViT:
    torch.manual_seed(0)
    return ViT(ModelConfig(**{**SMALL, **overrides}), SMALL_IMAGE)


def images(n=2, size=SMALL_IMAGE, seed=1):
    gen = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, size, size, generator=gen) * 2 - 1  # pixels scaled to [-1, 1] as in the recipe


def assert_std(x: torch.Tensor, expected: float, sigmas: float = 5.0) -> None:
    """Sample std within `sigmas` standard errors of `expected` (relative error of a std ~ 1/sqrt(2n))."""
    x = x.detach().double().flatten()
    rel_err = 1.0 / math.sqrt(2 * x.numel())
    std = x.std().item()
    assert abs(std / expected - 1) < sigmas * rel_err, f"std {std:.6g} vs expected {expected:.6g} (n={x.numel()})"
    # Centred too: |mean| within `sigmas` standard errors of the mean.
    assert abs(x.mean().item()) < sigmas * expected / math.sqrt(x.numel())


def assert_uniform(x: torch.Tensor, bound: float) -> None:
    """U(-bound, bound): inside the bound, reaching it, std bound/sqrt(3), flat (half the mass within bound/2)."""
    x = x.detach().double().flatten()
    n = x.numel()
    top = x.abs().max().item()
    assert top <= bound * (1 + 1e-6), f"max |w| {top:.6g} exceeds bound {bound:.6g}"
    assert top >= bound * 0.99, f"max |w| {top:.6g} far below bound {bound:.6g} (wrong fan?)"
    assert_std(x, bound / math.sqrt(3))
    inner = (x.abs() < bound / 2).double().mean().item()  # 0.5 for a uniform, 0.61 for a normal of equal std
    assert abs(inner - 0.5) < 5 * math.sqrt(0.25 / n)


# ---------------------------------------------------------------- shapes and variants


@pytest.fixture(scope="module")
def s16():
    """The headline model at full scale, built once: ViT-S/16 at 224, linear head, sincos2d, gap."""
    torch.manual_seed(0)
    return ViT(ModelConfig(variant="S/16", num_classes=1000), 224)


@pytest.fixture(scope="module")
def s16_extras():
    """S-width model with the ablation options (MLP head, learned posemb, class token); one block suffices."""
    torch.manual_seed(1)
    return ViT(ModelConfig(variant="S/16", depth=1, num_classes=1000, head="mlp", posemb="learn", pool="tok"), 224)


@pytest.mark.parametrize(
    "variant, expected",
    [
        ("Ti/16", (192, 12, 768, 3)),
        ("S/16", (384, 12, 1536, 6)),
        ("M/16", (512, 12, 2048, 8)),
        ("B/16", (768, 12, 3072, 12)),
        ("L/16", (1024, 24, 4096, 16)),
    ],
)
def test_variants_match_recipe_table(variant, expected):
    # docs/RECIPE.md, width/depth/mlp/heads, from big_vision's decode_variant.
    shape = model_shape(ModelConfig(variant=variant))
    assert (shape.width, shape.depth, shape.mlp_dim, shape.num_heads) == expected
    assert shape.patch_size == 16


def test_s16_module_shapes(s16):
    # width 384, depth 12, heads 6 (head_dim 64), MLP 1536, conv 16x16 stride 16, 1000-way head.
    assert s16.patch_embed.weight.shape == (384, 3, 16, 16)
    assert s16.patch_embed.kernel_size == (16, 16) and s16.patch_embed.stride == (16, 16)
    assert len(s16.blocks) == 12
    for block in s16.blocks:
        assert block.attn.num_heads == 6
        assert 384 // block.attn.num_heads == 64
        assert block.attn.qkv.weight.shape == (3 * 384, 384)
        assert block.attn.out.weight.shape == (384, 384)
        assert block.mlp.fc1.weight.shape == (1536, 384)
        assert block.mlp.fc2.weight.shape == (384, 1536)
    assert s16.head.weight.shape == (1000, 384)
    assert s16.pre_logits is None  # headline uses the linear head
    assert s16.pos_embedding.shape == (1, 14 * 14, 384)


def test_s16_output_shape(s16):
    with torch.no_grad():
        out = s16(images(n=1, size=224))
    assert out.shape == (1, 1000)


def test_explicit_sizes_override_variant():
    full = model_shape(ModelConfig(variant="S/16", width=192, depth=3, mlp_dim=256, num_heads=4, patch_size=8))
    assert (full.width, full.depth, full.mlp_dim, full.num_heads, full.patch_size) == (192, 3, 256, 4, 8)
    # A partial override keeps the rest of the variant.
    part = model_shape(ModelConfig(variant="S/16", depth=2))
    assert (part.width, part.depth, part.mlp_dim, part.num_heads, part.patch_size) == (384, 2, 1536, 6, 16)


def test_small_model_output_shape():
    model = small_model()
    assert len(model.blocks) == 2 and model.blocks[0].attn.num_heads == 2
    with torch.no_grad():
        out = model(images(n=3))
    assert out.shape == (3, 10)


# ---------------------------------------------------------------- initialisation at S/16 scale


def test_qkv_each_block_xavier_uniform(s16):
    # Each (d, d) q/k/v kernel separately: U(-sqrt(3/d), sqrt(3/d)), not the fused sqrt(6/(4d)).
    d = 384
    bound = math.sqrt(3.0 / d)
    assert math.sqrt(6.0 / (4 * d)) < 0.99 * bound  # the fused bound would fail assert_uniform's reach check
    for block in s16.blocks:
        w = block.attn.qkv.weight
        for part in (w[:d], w[d : 2 * d], w[2 * d :]):
            assert_uniform(part, bound)


def test_out_projection_xavier_uniform(s16):
    bound = math.sqrt(3.0 / 384)
    for block in s16.blocks:
        assert_uniform(block.attn.out.weight, bound)


def test_attention_biases_zero(s16):
    for block in s16.blocks:
        assert torch.count_nonzero(block.attn.qkv.bias) == 0
        assert torch.count_nonzero(block.attn.out.bias) == 0


def test_mlp_kernels_xavier_uniform(s16):
    bound = math.sqrt(6.0 / (384 + 1536))
    for block in s16.blocks:
        assert_uniform(block.mlp.fc1.weight, bound)
        assert_uniform(block.mlp.fc2.weight, bound)


def test_mlp_biases_normal_1e6(s16):
    # normal(std=1e-6): tiny but not zero; pooled over blocks for a tight std estimate.
    for name in ("fc1", "fc2"):
        biases = torch.cat([getattr(block.mlp, name).bias.flatten() for block in s16.blocks])
        assert torch.count_nonzero(biases) == biases.numel()
        assert_std(biases, 1e-6)


def test_patch_embedding_lecun_normal_jax_corrected(s16):
    # lecun_normal with JAX's correction: the *actual* std is sqrt(1/fan_in), fan_in = 3*16*16 = 768.
    w = s16.patch_embed.weight
    std = math.sqrt(1.0 / 768)
    assert_std(w, std)  # torch's uncorrected trunc_normal_ would give 0.88 * std, ~90 standard errors off
    bound = 2 * std / TRUNC_CORRECTION  # truncation at 2 of the *untruncated* std
    top = w.abs().max().item()
    assert top <= bound * (1 + 1e-6)
    assert top >= 0.99 * bound  # the density is non-zero at the cut, so 295k samples reach it
    assert torch.count_nonzero(s16.patch_embed.bias) == 0


def test_head_zero(s16):
    assert torch.count_nonzero(s16.head.weight) == 0
    assert torch.count_nonzero(s16.head.bias) == 0


def test_layernorms_identity_eps_1e6(s16):
    norms = [m for m in s16.modules() if isinstance(m, nn.LayerNorm)]
    assert len(norms) == 2 * 12 + 1  # pre-LN pair per block + final encoder norm
    for norm in norms:
        assert norm.eps == 1e-6
        assert torch.equal(norm.weight, torch.ones_like(norm.weight))
        assert torch.equal(norm.bias, torch.zeros_like(norm.bias))


def test_mlp_head_pre_logits_lecun_normal(s16_extras):
    pre = s16_extras.pre_logits
    assert pre.weight.shape == (384, 384)
    std = math.sqrt(1.0 / 384)
    assert_std(pre.weight, std)
    assert pre.weight.abs().max().item() <= 2 * std / TRUNC_CORRECTION * (1 + 1e-6)
    assert torch.count_nonzero(pre.bias) == 0
    assert torch.count_nonzero(s16_extras.head.weight) == 0
    assert torch.count_nonzero(s16_extras.head.bias) == 0


def test_learned_posemb_normal(s16_extras):
    pe = s16_extras.pos_embedding
    assert isinstance(pe, nn.Parameter) and pe.shape == (1, 196, 384)
    std = 1.0 / math.sqrt(384)
    assert_std(pe, std)
    # Plain normal, not truncated: ~200 of 75k samples lie beyond 3 std.
    assert (pe.abs() > 3 * std).sum().item() > 50


def test_class_token_zero(s16_extras):
    assert isinstance(s16_extras.cls, nn.Parameter)
    assert s16_extras.cls.shape == (1, 1, 384)
    assert torch.count_nonzero(s16_extras.cls) == 0


# ---------------------------------------------------------------- sincos2d position embedding


def reference_sincos2d(h, w, d):
    """docs/RECIPE.md formula, written out element by element: row-major tokens, x = column, y = row."""
    quarter = d // 4
    omega = [1.0 / 10000 ** (i / (quarter - 1)) for i in range(quarter)]
    rows = []
    for y in range(h):
        for x in range(w):
            rows.append(
                [math.sin(x * o) for o in omega]
                + [math.cos(x * o) for o in omega]
                + [math.sin(y * o) for o in omega]
                + [math.cos(y * o) for o in omega]
            )
    return torch.tensor(rows, dtype=torch.float64)[None]


def test_sincos2d_values_non_square():
    # Non-square grid catches a swapped h/w or x/y.
    pe = posemb_sincos_2d(2, 3, 8)
    assert pe.shape == (1, 6, 8)
    torch.testing.assert_close(pe.double(), reference_sincos2d(2, 3, 8), rtol=0, atol=1e-6)


def test_model_posemb_is_sincos2d_buffer():
    model = small_model()
    grid = SMALL_IMAGE // 4
    assert model.pos_embedding.shape == (1, grid * grid, 64)
    torch.testing.assert_close(model.pos_embedding.double(), reference_sincos2d(grid, grid, 64), rtol=0, atol=1e-6)
    # Fixed, not trained: a buffer, absent from the parameters the optimiser sees.
    assert "pos_embedding" in dict(model.named_buffers())
    assert all(p is not model.pos_embedding for p in model.parameters())
    assert "pos_embedding" not in dict(model.named_parameters())


# ---------------------------------------------------------------- pooling, forward semantics


def capture(module):
    """Forward hook recording the module's input and output."""
    seen = {}

    def hook(_mod, args, out):
        seen["in"], seen["out"] = args[0].detach(), out.detach()

    return seen, module.register_forward_hook(hook)


def encoder_trace(model, x):
    """(input/output of the first block, input/output of encoder_norm, pooled features) for images x."""
    first, h1 = capture(model.blocks[0])
    final, h2 = capture(model.encoder_norm)
    with torch.no_grad():
        feats = model.features(x)
    h1.remove()
    h2.remove()
    return first, final, feats


def test_gap_no_class_token_norm_before_mean():
    model = small_model()
    assert model.cls is None
    assert not any("cls" in name for name, _ in model.named_parameters())
    x = images()
    first, final, feats = encoder_trace(model, x)
    # Only the 16 patch tokens enter the encoder, each with its position embedding added.
    patches = model.patch_embed(x).flatten(2).transpose(1, 2)
    assert first["in"].shape == (2, 16, 64)
    torch.testing.assert_close(first["in"], patches + model.pos_embedding)
    # The final LayerNorm acts on every token, then the mean is taken.
    assert final["out"].shape == (2, 16, 64)
    torch.testing.assert_close(feats, final["out"].mean(dim=1), rtol=0, atol=1e-6)
    # ...which really differs from pooling first and normalising after.
    assert not torch.allclose(feats, model.encoder_norm(final["in"].mean(dim=1)), atol=1e-3)
    # The linear head is applied to those features.
    with torch.no_grad():
        nn.init.normal_(model.head.weight)
        torch.testing.assert_close(model(x), model.head(feats))


def test_tok_pool_returns_first_token_posemb_before_cls():
    model = small_model(pool="tok")
    with torch.no_grad():
        nn.init.normal_(model.cls)  # non-zero so it is recognisable
    x = images()
    first, final, feats = encoder_trace(model, x)
    assert first["in"].shape == (2, 17, 64)
    # Class token prepended without a position embedding; posemb added to the patches only.
    torch.testing.assert_close(first["in"][:, 0], model.cls[0].expand(2, -1).detach(), rtol=0, atol=0)
    patches = model.patch_embed(x).flatten(2).transpose(1, 2)
    torch.testing.assert_close(first["in"][:, 1:], patches + model.pos_embedding)
    torch.testing.assert_close(feats, final["out"][:, 0], rtol=0, atol=0)


def test_mlp_head_is_tanh_pre_logits():
    model = small_model(head="mlp")
    with torch.no_grad():
        nn.init.normal_(model.head.weight)
        x = images()
        feats = model.features(x)
        torch.testing.assert_close(model(x), model.head(torch.tanh(model.pre_logits(feats))))


@pytest.mark.parametrize("gelu", ["tanh", "exact"])
def test_gelu_is_flax_tanh_by_default_and_erf_on_request(gelu):
    """big_vision calls flax nn.gelu = jax.nn.gelu(approximate=True): 0.5 h (1 + tanh(sqrt(2/pi) (h + 0.044715 h^3)))"""
    torch.manual_seed(0)
    mlp = MlpBlock(64, 128, gelu).double()
    mlp.reset_parameters()
    x = torch.randn(4, 10, 64, dtype=torch.float64) * 3  # fc1 outputs O(1), where erf and tanh GELU differ most
    h = mlp.fc1(x)
    gelu_erf = 0.5 * h * (1 + torch.erf(h / math.sqrt(2)))
    gelu_tanh = 0.5 * h * (1 + torch.tanh(math.sqrt(2 / math.pi) * (h + 0.044715 * h**3)))
    with torch.no_grad():
        out = mlp(x)
        want, other = (mlp.fc2(gelu_tanh), mlp.fc2(gelu_erf)) if gelu == "tanh" else (mlp.fc2(gelu_erf),
                                                                                       mlp.fc2(gelu_tanh))
    torch.testing.assert_close(out, want, rtol=0, atol=1e-12)
    assert (out - other).abs().max() > 1e-6  # the two GELUs are distinguishable at this tolerance


def test_the_model_default_is_tanh_gelu():
    assert ModelConfig().gelu == "tanh"
    assert small_model().blocks[0].mlp.approximate == "tanh"
    assert small_model(gelu="exact").blocks[0].mlp.approximate == "none"


def manual_attention(attn: nn.Module, x: torch.Tensor, scale: float) -> torch.Tensor:
    """softmax(q k^T * scale) v per head, q/k/v = the three (d, d) row blocks of the qkv kernel."""
    n, length, d = x.shape
    heads = attn.num_heads
    w, b = attn.qkv.weight, attn.qkv.bias
    q, k, v = (x @ w[i * d : (i + 1) * d].T + b[i * d : (i + 1) * d] for i in range(3))
    q, k, v = (t.reshape(n, length, heads, d // heads).transpose(1, 2) for t in (q, k, v))
    y = torch.softmax(q @ k.transpose(-1, -2) * scale, dim=-1) @ v
    return attn.out(y.transpose(1, 2).reshape(n, length, d))


def test_attention_scale_is_inverse_sqrt_head_dim():
    torch.manual_seed(0)
    attn = small_model(width=64, num_heads=2, mlp_dim=128).blocks[0].attn.double()
    with torch.no_grad():
        for p in attn.parameters():
            nn.init.normal_(p, std=0.3)  # sharp-ish attention so the scale matters
        x = torch.randn(2, 7, 64, dtype=torch.float64)
        out = attn(x)
        hd = 64 // 2
        torch.testing.assert_close(out, manual_attention(attn, x, 1 / math.sqrt(hd)), rtol=0, atol=1e-10)
        assert (out - manual_attention(attn, x, 1 / math.sqrt(64))).abs().max() > 1e-3


def test_encoder_block_is_pre_ln():
    torch.manual_seed(0)
    block = EncoderBlock(64, 2, 128, 1 / math.sqrt(32), zero_init_query=False).double()
    with torch.no_grad():
        for p in block.parameters():
            nn.init.normal_(p, std=0.2)
        x = torch.randn(2, 5, 64, dtype=torch.float64)
        y = x + block.attn(block.norm1(x))
        expected = y + block.mlp(block.norm2(y))
        torch.testing.assert_close(block(x), expected, rtol=0, atol=1e-12)


def test_no_dropout_train_mode_deterministic():
    model = small_model(pool="tok", head="mlp", posemb="learn")
    with torch.no_grad():
        nn.init.normal_(model.head.weight)  # non-zero head, else the logits are trivially zero
    model.train()
    assert not any(isinstance(m, nn.Dropout) for m in model.modules())
    x = images()
    with torch.no_grad():
        a, b = model(x), model(x)
    assert a.abs().max() > 0
    assert torch.equal(a, b)


# ---------------------------------------------------------------- weight-decay mask


def test_decay_mask_kernels_only():
    model = small_model(head="mlp", posemb="learn", pool="tok")
    decayed = {name for name, p in model.named_parameters() if decay_mask(name, p)}
    kernels = {"patch_embed.weight", "pre_logits.weight", "head.weight"}
    for i in range(2):
        kernels |= {f"blocks.{i}.attn.qkv.weight", f"blocks.{i}.attn.out.weight",
                    f"blocks.{i}.mlp.fc1.weight", f"blocks.{i}.mlp.fc2.weight"}
    assert decayed == kernels
    # Everything else stays undecayed: biases, LayerNorms, learned posemb, class token.
    rest = {name for name, _ in model.named_parameters()} - kernels
    assert {"pos_embedding", "cls", "encoder_norm.weight", "encoder_norm.bias", "head.bias"} <= rest
    for name in rest:
        assert name.endswith(".bias") or "norm" in name or name in ("pos_embedding", "cls"), name
