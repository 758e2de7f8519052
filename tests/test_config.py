"""The typed config: the shipped experiments, dotted overrides, early and explicit errors, YAML round trip."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from mupvit.config import (
    Config,
    ConfigError,
    ModelConfig,
    load_config,
    parse_override,
    steps_for_epochs,
    total_steps,
)
from mupvit.models.shapes import VARIANTS, ModelShape, model_shape

EXPERIMENTS = Path(__file__).resolve().parent.parent / "experiments"
HEADLINE = EXPERIMENTS / "vit_s16_i1k_90ep.yaml"
MLP_HEAD = EXPERIMENTS / "vit_s16_i1k_90ep_mlp_head.yaml"
DEMO = EXPERIMENTS / "demo_digits.yaml"
ALL_EXPERIMENTS = sorted(EXPERIMENTS.glob("*.yaml"))


def _error(overrides: list[str], path: Path = HEADLINE) -> str:
    """Load `path` with `overrides`, expect a ConfigError, return its message."""
    with pytest.raises(ConfigError) as info:
        load_config(path, overrides)
    return str(info.value)


def _assert_mentions(message: str, *fragments: str) -> None:
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"


# ---------------------------------------------------------------- the shipped experiments


def test_experiments_folder_is_not_empty():
    # Guards the parametrised tests below against silently running over nothing.
    assert {p.name for p in ALL_EXPERIMENTS} >= {HEADLINE.name, MLP_HEAD.name, DEMO.name}


@pytest.mark.parametrize("path", ALL_EXPERIMENTS, ids=lambda p: p.name)
def test_every_experiment_loads(path):
    assert isinstance(load_config(path), Config)


def test_headline_holds_the_recipe():
    # Every value of the big_vision ViT-S/16 90-epoch recipe, as the paper reproduction needs it.
    cfg = load_config(HEADLINE)
    d, m, o, t = cfg.data, cfg.model, cfg.optim, cfg.train
    assert (m.variant, m.head, m.pool, m.posemb, m.num_classes) == ("S/16", "linear", "gap", "sincos2d", 1000)
    assert (o.lr, o.b1, o.b2, o.eps, o.weight_decay, o.clip_norm) == (1e-3, 0.9, 0.999, 1e-8, 1e-4, 1.0)
    assert o.warmup_steps == 10_000
    assert (t.batch_size, t.epochs) == (1024, 90)
    assert d.num_train_examples == 1_281_167
    assert (d.image_size, d.eval_resize) == (224, 256)
    assert d.crop_area == [0.05, 1.0] and d.crop_aspect == [0.75, 1.33]
    assert d.flip is True
    # The step budget in the file's comment: round(1281167 * 90 / 1024).
    assert total_steps(cfg) == 112_603
    assert model_shape(m) == ModelShape(width=384, depth=12, mlp_dim=1536, num_heads=6, patch_size=16)


def test_mlp_head_differs_only_in_head_and_out_dir():
    # The ablation pair must change exactly one recipe knob, else the comparison is meaningless.
    linear, mlp = load_config(HEADLINE), load_config(MLP_HEAD)
    assert mlp.model.head == "mlp" and linear.model.head == "linear"
    assert mlp.train.out_dir != linear.train.out_dir
    patched = dataclasses.replace(
        mlp,
        model=dataclasses.replace(mlp.model, head="linear"),
        train=dataclasses.replace(mlp.train, out_dir=linear.train.out_dir),
    )
    assert patched == linear


def test_demo_config_resolves():
    cfg = load_config(DEMO)
    assert cfg.data.dataset == "digits" and cfg.data.root == ""
    assert cfg.optim.lr == pytest.approx(3e-3)
    # The step count stated in the demo file's comment, once the 1366 train images (train minus minival) are known.
    assert total_steps(cfg, 1366) == 534
    assert model_shape(cfg.model) == ModelShape(width=64, depth=4, mlp_dim=256, num_heads=2, patch_size=4)


# ---------------------------------------------------------------- overrides


@pytest.mark.parametrize("text", ["optim.lr=3e-3", "optim.lr=3.0e-3", "optim.lr=0.003", "optim.lr = 3e-3"])
def test_lr_override_parses_as_float(text):
    # YAML 1.1 reads "3e-3" as a string; the override parser must still give the number.
    cfg = load_config(HEADLINE, [text])
    assert isinstance(cfg.optim.lr, float) and cfg.optim.lr == pytest.approx(0.003)


def test_parse_override_values():
    assert parse_override("optim.lr=3e-3") == ("optim.lr", 0.003)
    assert isinstance(parse_override("optim.lr=3e-3")[1], float)
    assert parse_override("train.batch_size=256") == ("train.batch_size", 256)
    assert parse_override("train.eval_at_epochs=[10,20]") == ("train.eval_at_epochs", [10, 20])
    assert parse_override("optim.clip_norm=null") == ("optim.clip_norm", None)
    assert parse_override("data.flip=false") == ("data.flip", False)
    assert parse_override("data.root=") == ("data.root", "")
    assert parse_override("train.out_dir=runs/exp1") == ("train.out_dir", "runs/exp1")


def test_overrides_apply_lists_null_and_booleans():
    cfg = load_config(HEADLINE, [
        "train.eval_at_epochs=[10,20]", "optim.clip_norm=null", "train.eval_every=null",
        "data.flip=false", "train.compile=false", "train.batch_size=512", "data.root=/elsewhere",
    ])
    assert cfg.train.eval_at_epochs == [10.0, 20.0]
    assert all(isinstance(e, float) for e in cfg.train.eval_at_epochs)  # ints are widened to the declared float
    assert cfg.optim.clip_norm is None and cfg.train.eval_every is None
    assert cfg.data.flip is False and cfg.train.compile is False
    assert cfg.train.batch_size == 512 and cfg.data.root == "/elsewhere"


def test_later_override_wins():
    cfg = load_config(HEADLINE, ["optim.lr=2e-3", "optim.lr=4e-3"])
    assert cfg.optim.lr == pytest.approx(4e-3)


def test_override_creates_section_missing_from_file(tmp_path):
    # A file without a `model:` section still accepts model.* overrides.
    path = tmp_path / "small.yaml"
    path.write_text("data:\n  dataset: digits\ntrain:\n  total_steps: 100\n  eval_at_epochs: []\n")
    cfg = load_config(path, ["model.head=mlp", "model.num_classes=10", "optim.warmup_steps=5"])
    assert cfg.model.head == "mlp" and cfg.model.num_classes == 10 and cfg.optim.warmup_steps == 5


def test_override_into_unknown_nested_sections_fails():
    _assert_mentions(_error(["foo.bar=1"]), "unknown key(s) foo", "allowed: data, model, optim, train")
    _assert_mentions(_error(["model.foo.bar=1"]), "model: unknown key(s) foo", "allowed:", "variant", "head")
    # A scalar key cannot be treated as a section.
    _assert_mentions(_error(["optim.lr.x=1"]), "optim.lr.x", "'lr' is not a section")


# ---------------------------------------------------------------- errors: key, value, what is allowed


def test_unknown_top_level_key():
    _assert_mentions(_error(["seed=1"]), "config: unknown key(s) seed", "allowed: data, model, optim, train")


def test_unknown_nested_key_lists_allowed_keys(tmp_path):
    path = tmp_path / "typo.yaml"
    path.write_text("model:\n  widht: 64\n")
    message = _error([], path)
    _assert_mentions(message, str(path), "model: unknown key(s) widht", "allowed: variant, width, depth")


@pytest.mark.parametrize(
    ("override", "fragments"),
    [
        ("train.batch_size=big", ["train.batch_size", "'big'", "expected an integer"]),
        ("train.batch_size=true", ["train.batch_size", "True", "expected an integer"]),  # bool is not an int
        ("train.batch_size=1024.5", ["train.batch_size", "1024.5", "expected an integer"]),
        ("optim.warmup_steps=10000.0", ["optim.warmup_steps", "10000.0", "expected an integer"]),
        ("optim.lr=fast", ["optim.lr", "'fast'", "expected a number"]),
        ("optim.lr=true", ["optim.lr", "True", "expected a number"]),
        ("data.flip=1", ["data.flip", "1", "true/false"]),
        ("train.total_steps=abc", ["train.total_steps", "'abc'", "an integer or null"]),
        ("data.crop_area=0.5", ["data.crop_area", "0.5", "a list of a number"]),
        ("train.eval_at_epochs=[10,x]", ["train.eval_at_epochs[1]", "'x'", "a number"]),
    ],
)
def test_wrong_type(override, fragments):
    _assert_mentions(_error([override]), *fragments)


@pytest.mark.parametrize(
    ("override", "fragments"),
    [
        ("model.posemb=foo", ["model.posemb", "'foo'", "one of 'sincos2d', 'learn', 'none'"]),
        ("model.pool=cls", ["model.pool", "'cls'", "one of 'gap', 'tok'"]),
        ("model.head=deep", ["model.head", "'deep'", "one of 'linear', 'mlp'"]),
        ("train.precision=fp16", ["train.precision", "'fp16'", "'fp32', 'bf16'"]),
    ],
)
def test_unknown_literal(override, fragments):
    _assert_mentions(_error([override]), *fragments)


def test_width_not_divisible_by_heads():
    # 388 is a multiple of 4 (so sincos2d is fine) but not of S's 6 heads.
    _assert_mentions(_error(["model.width=388", "model.num_heads=6"]), "model.width", "388",
                     "not divisible by model.num_heads=6")


def test_width_off_the_widening_rule():
    # S/16's heads are 64 wide: 400 is no whole number of them, and its mlp ratio 4 gives 1600 (fine).
    _assert_mentions(_error(["model.width=400"]), "model.width", "400", "head size 64", "fixed_heads")
    # Same 6 heads made wider: 388 is not divisible by 6.
    _assert_mentions(_error(["model.width=388", "model.widening=fixed_heads"]), "not divisible by model.num_heads=6")


def test_warmup_must_be_below_total_steps():
    _assert_mentions(
        _error(["optim.warmup_steps=112603"]), "optim.warmup_steps", "112603", "smaller than the total steps (112603)"
    )
    # One step less is the largest allowed warmup.
    assert load_config(HEADLINE, ["optim.warmup_steps=112602"]).optim.warmup_steps == 112602


@pytest.mark.parametrize(("devices", "accum"), [(3, 1), (1, 3), (2, 3)])
def test_batch_must_split_over_devices_and_accumulation(devices, accum):
    message = _error([f"train.devices={devices}", f"train.accum_steps={accum}"])
    _assert_mentions(message, "train.batch_size", "1024", f"= {devices} x {accum}")


@pytest.mark.parametrize(("devices", "low", "accum", "wanted"),
                         [(4, 3, 1, "multiple of 3"), (8, 5, 1, "multiple of 105"), (4, 2, 2, "multiple of 3")])
def test_an_elastic_device_range_must_split_every_step_evenly(devices, low, accum, wanted):
    message = _error([f"train.devices={devices}", f"train.min_devices={low}", f"train.accum_steps={accum}"])
    _assert_mentions(message, "train.min_devices", f"{low} to {devices} devices", wanted)
    assert "more than" in _error(["train.devices=2", "train.min_devices=3"])


@pytest.mark.parametrize(("devices", "low", "accum", "at_low"), [(2, 1, 1, 2), (4, 2, 3, 6), (4, 1, 3, 12)])
def test_fewer_devices_take_more_micro_batches_of_the_same_size(devices, low, accum, at_low):
    from mupvit.config import accum_steps_at

    t = load_config(HEADLINE, [f"train.devices={devices}", f"train.min_devices={low}",
                               f"train.accum_steps={accum}", "train.batch_size=1152"]).train
    assert accum_steps_at(t, low) == at_low and accum_steps_at(t, devices) == accum
    assert t.batch_size // (low * at_low) == t.batch_size // (devices * accum)  # the micro-batch stays


def test_batch_that_splits_is_accepted():
    cfg = load_config(HEADLINE, ["train.devices=8", "train.accum_steps=2", "optim.warmup_steps=1000"])
    assert cfg.train.batch_size % (cfg.train.devices * cfg.train.accum_steps) == 0


def test_unknown_variant():
    _assert_mentions(_error(["model.variant=X/16"]), "model.variant", "'X/16'", "one of Ti, S, M, B, L")


@pytest.mark.parametrize("variant", ["S/abc", "S/0", "S/-16", "S/16/2"])
def test_bad_patch_in_variant(variant):
    _assert_mentions(_error([f"model.variant={variant}"]), "model.variant", repr(variant), "positive integer")


def test_image_size_not_divisible_by_patch():
    message = _error(["data.image_size=200"])
    _assert_mentions(message, "data.image_size", "200", "not divisible by the patch size 16")


def test_eval_at_epochs_beyond_the_run():
    step = steps_for_epochs(100, 1_281_167, 1024)
    message = _error(["train.eval_at_epochs=[45,100]"])
    _assert_mentions(message, "train.eval_at_epochs", "100.0 epochs", f"step {step}", "1..112603")


@pytest.mark.parametrize("value", ["0", "-1e-3", "0.0"])
def test_lr_must_be_positive(value):
    _assert_mentions(_error([f"optim.lr={value}"]), "optim.lr", "expected a positive number")


@pytest.mark.parametrize("key", ["optim.b1", "optim.b2"])
@pytest.mark.parametrize("value", ["1.0", "1.5", "-0.1"])
def test_betas_must_be_in_unit_interval(key, value):
    _assert_mentions(_error([f"{key}={value}"]), key, str(float(value)), "0 <= beta < 1")


def test_missing_config_file(tmp_path):
    missing = tmp_path / "nope.yaml"
    _assert_mentions(_error([], missing), "config file not found", str(missing))


def test_invalid_yaml(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("data:\n  crop_area: [0.5, 1.0\n")
    _assert_mentions(_error([], path), str(path), "not valid YAML")


@pytest.mark.parametrize("text", ["optim.lr", "=3e-3", ""])
def test_override_without_equals(text):
    _assert_mentions(_error([text]), "expected KEY=VALUE")


def test_error_names_the_file():
    # Errors found inside a file say which file, so a sweep of many configs points at the culprit.
    message = _error(["optim.b2=1.0"])
    assert message.startswith(str(HEADLINE))


# ---------------------------------------------------------------- YAML round trip


@pytest.mark.parametrize("path", ALL_EXPERIMENTS, ids=lambda p: p.name)
def test_round_trip_through_yaml(path, tmp_path):
    cfg = load_config(path)
    copy = tmp_path / "copy.yaml"
    copy.write_text(cfg.to_yaml())
    assert load_config(copy) == cfg


def test_round_trip_with_overrides(tmp_path):
    overrides = ["optim.lr=3e-3", "train.eval_at_epochs=[10,20]", "optim.clip_norm=null", "data.flip=false",
                 "model.variant=null", "model.width=256", "model.depth=6", "model.num_heads=4", "model.mlp_dim=1024",
                 "model.patch_size=32"]
    cfg = load_config(HEADLINE, overrides)
    assert cfg != load_config(HEADLINE)
    copy = tmp_path / "copy.yaml"
    copy.write_text(cfg.to_yaml())
    again = load_config(copy)
    assert again == cfg
    assert again.optim.clip_norm is None and again.model.variant is None


# ---------------------------------------------------------------- model_shape


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_model_shape_resolves_every_variant(name):
    width, depth, mlp_dim, heads = VARIANTS[name]
    assert model_shape(ModelConfig(variant=f"{name}/14")) == ModelShape(width, depth, mlp_dim, heads, 14)


def test_model_shape_known_sizes():
    # big_vision's decode_variant table.
    assert model_shape(ModelConfig(variant="B/32")) == ModelShape(768, 12, 3072, 12, 32)
    assert model_shape(ModelConfig(variant="Ti/16")) == ModelShape(192, 12, 768, 3, 16)


def test_model_shape_explicit_values_win():
    shape = model_shape(ModelConfig(variant="S/16", width=512, num_heads=4, mlp_dim=1000, patch_size=8))
    assert shape == ModelShape(width=512, depth=12, mlp_dim=1000, num_heads=4, patch_size=8)
    # Unset heads and mlp_dim follow the widening rule from the variant: 64-wide heads, mlp ratio 4.
    shape = model_shape(ModelConfig(variant="S/16", width=512))
    assert (shape.num_heads, shape.mlp_dim) == (8, 2048)
    shape = model_shape(ModelConfig(variant="S/16", width=768, widening="fixed_heads"))
    assert (shape.num_heads, shape.mlp_dim) == (6, 3072)
    # A variant without a patch takes the patch from model.patch_size.
    assert model_shape(ModelConfig(variant="B", patch_size=32)).patch_size == 32


def test_model_shape_without_variant():
    cfg = ModelConfig(variant=None, width=64, depth=4, mlp_dim=256, num_heads=2, patch_size=4)
    assert model_shape(cfg) == ModelShape(64, 4, 256, 2, 4)


def test_model_shape_missing_or_negative_sizes():
    with pytest.raises(ConfigError, match=r"model\.width: missing"):
        model_shape(ModelConfig(variant=None, depth=4, mlp_dim=256, num_heads=2, patch_size=4))
    with pytest.raises(ConfigError, match=r"model\.patch_size: missing"):
        model_shape(ModelConfig(variant="S"))
    with pytest.raises(ConfigError, match=r"model\.depth: got -2, expected a positive integer"):
        model_shape(ModelConfig(variant="S/16", depth=-2))


def test_explicit_zero_size_is_an_error_not_the_variant_default():
    # 0 must not silently fall back to the variant's width.
    _assert_mentions(_error(["model.width=0"]), "model.width", "0", "positive")


def test_exponent_floats_in_yaml_files_are_numbers(tmp_path):
    path = tmp_path / "exp.yaml"
    path.write_text(HEADLINE.read_text().replace("lr: 1.0e-3", "lr: 3e-3"))
    assert load_config(path).optim.lr == 0.003


def test_headline_holds_the_augmentation_recipe():
    d = load_config(HEADLINE).data
    assert (d.crop, d.randaug_layers, d.randaug_magnitude, d.randaug_contrast, d.mixup_alpha) == (
        "tf", 2, 10, "big_vision", 0.2)


def test_departures_from_the_paper_recipe_are_named():
    from mupvit.results import departures

    def listed(path, *sets):
        return departures(load_config(path, list(sets)))

    assert listed(HEADLINE) == ["train 100% instead of 99%"]
    assert listed(HEADLINE, "data.train_split=train_minus_minival", "data.num_train_examples=null") == []
    assert listed(MLP_HEAD, "model.gelu=exact", "data.crop=torchvision") == [
        "train 100% instead of 99%", "crop=torchvision", "gelu=exact"]
    assert listed(HEADLINE, "model.width=768") == ["train 100% instead of 99%", "width=768"]
