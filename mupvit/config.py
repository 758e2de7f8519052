"""One typed config object for a whole run, loaded from YAML with dotted overrides.

Every field is declared here with its type and default; unknown keys, wrong types and impossible
values fail in `load_config` with a message naming the key, the value and what is allowed, so a bad
config never reaches data loading or training.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from mupvit.config_yaml import chain_text, parse_yaml, read_experiment, yaml_error
from mupvit.errors import ConfigError, shown
from mupvit.models.shapes import check_model


@dataclass
class DataConfig:
    # `digits` builds the embedded demo from scikit-learn's digits under `root`;
    # `imagefolder` reads root/<split>/<class>/*; `imagenet` reads torchvision's ImageNet layout.
    dataset: Literal["digits", "imagefolder", "imagenet"] = "imagefolder"
    root: str = ""
    train_split: str = "train"
    eval_splits: list[str] = field(default_factory=lambda: ["val"])
    # Declared train-set size; when set, it must match the data (lets epochs -> steps resolve early).
    num_train_examples: int | None = None
    image_size: int = 224
    eval_resize: int = 256  # shorter side before the central crop
    # Inception crop: `tf` = tf.image.sample_distorted_bounding_box (big_vision), `torchvision` = RandomResizedCrop.
    crop: Literal["tf", "torchvision"] = "tf"
    crop_area: list[float] = field(default_factory=lambda: [0.05, 1.0])
    crop_aspect: list[float] = field(default_factory=lambda: [0.75, 1.33])
    flip: bool = True
    # The train crop's resize: big_vision's decode_jpeg_and_inception_crop is bilinear without antialiasing; the
    # PyTorch reproduction antialiased (true).
    antialias: bool = False
    # Eval resize of the shorter side: `tf_area` = big_vision's resize_small (TF's area method: each output pixel
    # the area-weighted mean of the input it covers; long side rounded; truncating uint8 cast) + central_crop
    # (floored offset); `torchvision_bilinear` = the PyTorch reproduction's Resize(antialias=True) + CenterCrop.
    eval_resize_method: Literal["tf_area", "torchvision_bilinear"] = "tf_area"
    # JPEG decoding (train and eval): `tf_fast` = TF's default, libjpeg's fast integer IDCT (big_vision's pixels);
    # `accurate` = the ISLOW IDCT (Pillow's pixels, big_vision's decode(precise=True)). Other formats: Pillow.
    decode: Literal["tf_fast", "accurate"] = "tf_fast"
    # Larger images are refused from their header, naming the file (4x ImageNet's largest); mupvit.data.check
    # finds them all before a run.
    max_image_pixels: int = 50_000_000
    # A training image that does not decode (corrupt, truncated, too large): `fail` stops the run with a checkpoint
    # and the file's name; `skip` uses the next image of the pass in its place and counts it (train/skipped_images
    # in the logs and MLflow). Eval images always fail: a top-1 over fewer images is not comparable.
    on_bad_image: Literal["fail", "skip"] = "fail"
    randaug_layers: int = 2  # 0 turns RandAugment off
    randaug_magnitude: int = 10
    # big_vision's Contrast blends towards image_area/256 (a bug); `fixed` uses the true mean grey level.
    randaug_contrast: Literal["big_vision", "fixed"] = "big_vision"
    # Where the flip, RandAugment and [-1, 1] scale run: `loader` = per image in the loader workers; `device` = the
    # workers only decode, crop and draw the same random numbers, and the trainer applies them to the whole uint8
    # batch on its device (mupvit/data/batched_augment.py): the same images bit for bit, 4x less to copy. `loader` by
    # default: on a CPU trainer the device half runs in the training process instead of beside it in the workers,
    # which measured slower at batch 256 (docs/PERFORMANCE.md); `device` is for a GPU whose workers fall behind.
    augment_on: Literal["loader", "device"] = "loader"
    mixup_alpha: float = 0.2  # 0 turns MixUp off
    # Stratified held-out split of `minival_from`, usable as the split names `minival` and `train_minus_minival`.
    minival_from: str = "train"
    minival_fraction: float = 0.01
    minival_seed: int = 0
    num_workers: int = 2
    eval_batch_size: int = 256


@dataclass
class ModelConfig:
    # A big_vision variant ("S/16") sets width/depth/mlp_dim/num_heads/patch_size; explicit values win.
    variant: str | None = "S/16"
    width: int | None = None
    depth: int | None = None
    mlp_dim: int | None = None
    num_heads: int | None = None
    patch_size: int | None = None
    num_classes: int = 1000
    posemb: Literal["sincos2d", "learn", "none"] = "sincos2d"
    pool: Literal["gap", "tok"] = "gap"
    head: Literal["linear", "mlp"] = "linear"
    # big_vision's MLP uses flax nn.gelu, the tanh approximation; `exact` (erf) is the PyTorch reproduction's and
    # timm's default.
    gelu: Literal["tanh", "exact"] = "tanh"
    # `mup` = maximal update parametrization for Adam (mupvit/models/parametrization.py, docs/MUP.md), with
    # m = width / base_width; at width == base_width it is `sp` bit for bit.
    parametrization: Literal["sp", "mup"] = "sp"
    base_width: int = 384
    # How num_heads and mlp_dim follow a width that differs from the reference shape (the variant's):
    # more heads of the same size (the ViT family's rule) or the same heads made wider. mlp_dim keeps its ratio.
    widening: Literal["fixed_head_dim", "fixed_heads"] = "fixed_head_dim"
    zero_init_query: bool = False  # zero the query projection at init (either parametrization)


@dataclass
class OptimConfig:
    lr: float = 1e-3
    b1: float = 0.9
    b2: float = 0.999
    eps: float = 1e-8
    # big_vision's independent decay: each step p -= schedule(t) * weight_decay * p (not times lr).
    weight_decay: float = 1e-4
    clip_norm: float | None = 1.0
    warmup_steps: int = 10_000
    # Storage of Adam's first moment: big_vision's ImageNet configs keep it in bfloat16 (optax mu_dtype), rounded
    # after each update; float32 is optax's default.
    mu_dtype: Literal["float32", "bfloat16"] = "float32"


@dataclass
class TrainConfig:
    seed: int = 0
    epochs: float | None = 90.0
    total_steps: int | None = None  # overrides epochs when set
    batch_size: int = 1024  # global batch = per-device batch x devices x accum_steps
    devices: int = 1
    accum_steps: int = 1
    precision: Literal["fp32", "bf16"] = "fp32"
    compile: bool = False
    device: Literal["auto", "cpu", "cuda"] = "auto"
    log_every: int = 50
    eval_every: int | None = 1000
    eval_at_epochs: list[float] = field(default_factory=lambda: [90.0])
    ckpt_every: int | None = 1000
    keep_ckpts: int = 3
    out_dir: str = "runs/default"
    resume: bool = True  # continue from the newest checkpoint in out_dir when there is one
    # Start (not resume) from these weights: a mupvit .pt, a big_vision .npz or a timm-layout .safetensors.
    init_from: str | None = None
    # false: drop the file's classifier and train a fresh head (e.g. another model.num_classes)
    init_head: bool = True


@dataclass
class ClusterConfig:
    """Where `python -m orchestration.train` runs the loop (Ray Train); `python -m mupvit.train` ignores it."""

    address: str | None = None  # Ray cluster address; else $RAY_ADDRESS; else a local Ray on this machine
    num_workers: int = 1  # data-parallel workers (sets train.devices)
    use_gpu: bool = False
    cpus_per_worker: float = 1.0
    gpus_per_worker: float = 1.0  # used with use_gpu
    # Ray Train storage for checkpoints: a local folder (relative to the submit directory), a path every node
    # shares, or a bucket URI (s3://, gs://).
    storage_path: str = "ray_results"
    max_failures: int = 2  # worker failures survived by restarting from the latest checkpoint
    keep_checkpoints: int = 2
    resource_wait_s: float = 60.0  # how long to wait for busy resources before failing (never hang)
    fail_at_step: int | None = None  # testing aid: one worker raises once at this step (one-shot)


@dataclass
class TrackingConfig:
    """MLflow tracking for orchestration runs."""

    uri: str | None = None  # else $MLFLOW_TRACKING_URI; else sqlite:///<submit dir>/mlflow.db
    experiment: str = "mupvit"
    run_name: str | None = None  # also the Ray Train run name; default <config file stem>-<config hash>
    ablation: str | None = None  # the paper ablation this run belongs to (tag for the report)


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


# ---------------------------------------------------------------- building from plain data


def _describe(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(a) for a in typing.get_args(tp))
    if origin is list:
        return f"a list of {_describe(typing.get_args(tp)[0])}"
    if tp is type(None):
        return "null"
    return {int: "an integer", float: "a number", bool: "true/false", str: "a string"}.get(tp, str(tp))


# Integers beyond this are no config value (and overflow torch and numpy seeds).
MAX_INT = 2**63 - 1


def coerce_value(key: str, value: Any, tp: Any) -> Any:
    """Return `value` as type `tp`, or raise ConfigError naming `key`."""
    origin = typing.get_origin(tp)
    bad = ConfigError(f"{key}: got {shown(value)}, expected {_describe(tp)}")
    if origin is Literal:
        if value not in typing.get_args(tp):
            raise bad
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in typing.get_args(tp):
            return None
        for arg in typing.get_args(tp):
            if arg is type(None):
                continue
            try:
                return coerce_value(key, value, arg)
            except ConfigError:
                pass
        raise bad
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise bad
        (item_tp,) = typing.get_args(tp)
        return [coerce_value(f"{key}[{i}]", v, item_tp) for i, v in enumerate(value)]
    if tp is bool:
        if not isinstance(value, bool):
            raise bad
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad
        if abs(value) > MAX_INT:
            raise ConfigError(f"{key}: got {shown(value)}, expected an integer of at most {MAX_INT}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise bad
        if not math.isfinite(value):
            raise ConfigError(f"{key}: got {value}, expected a finite number")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise bad
        return value
    raise TypeError(f"unsupported config type {tp} for {key}")


def _build(cls: type, data: dict[str, Any], prefix: str) -> Any:
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix or 'config'}: expected a mapping of keys, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(data) - set(names), key=str)
    if unknown:
        where = prefix or "config"
        listed = ", ".join(shown(k, 40).strip("'") for k in unknown[:8]) + (f" (+{len(unknown) - 8} more)"
                                                                          if len(unknown) > 8 else "")
        raise ConfigError(f"{where}: unknown key(s) {listed}; allowed: {', '.join(names)}")
    kwargs = {}
    for name in names:
        if name not in data:
            continue
        key = f"{prefix}.{name}" if prefix else name
        tp = hints[name]
        if dataclasses.is_dataclass(tp):
            kwargs[name] = _build(tp, data[name], key)
        else:
            kwargs[name] = coerce_value(key, data[name], tp)
    return cls(**kwargs)


def _set_dotted(tree: dict[str, Any], dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node = tree
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"--set {dotted}: '{part}' is not a section")
    node[parts[-1]] = value


def add_set_argument(parser: argparse.ArgumentParser, example: str = "optim.lr=3e-3",
                     what: str = "a config value") -> None:
    """The `--set KEY=VALUE` flag of every CLI (repeatable; each value read by `parse_override`)."""
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help=f"override {what}, e.g. --set {example} (repeatable)")


def parse_override(text: str) -> tuple[str, Any]:
    """`optim.lr=3e-3` -> ("optim.lr", 0.003); the value is read as YAML (numbers, lists, null, ...)."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set {shown(text)}: expected KEY=VALUE, e.g. --set optim.lr=3e-3")
    try:
        return key.strip(), parse_yaml(raw) if raw.strip() else ""
    except yaml.YAMLError as err:
        raise ConfigError(f"--set {key.strip()}: value {shown(raw)} is not valid YAML: {yaml_error(err)}") from None


def config_from_dict(data: dict[str, Any], overrides: list[str] = ()) -> Config:
    tree = yaml.safe_load(yaml.safe_dump(data or {}))  # deep copy through plain YAML types
    for text in overrides:
        key, value = parse_override(text)
        _set_dotted(tree, key, value)
    cfg = _build(Config, tree, "")
    validate(cfg)
    return cfg


def load_config(path: str | Path, overrides: list[str] = ()) -> Config:
    """Read a YAML experiment file (and its `base:` chain), apply `--set` overrides, validate, return the Config."""
    data, chain = read_experiment(Path(path))
    try:
        return config_from_dict(data, overrides)
    except ConfigError as err:
        raise ConfigError(f"{chain_text(chain)}: {err}") from err


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """A nested config mapping as dotted keys: {"optim": {"lr": 1e-3}} -> {"optim.lr": 1e-3}."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


# ---------------------------------------------------------------- derived values and checks


def steps_for_epochs(epochs: float, num_train: int, batch_size: int) -> int:
    """big_vision's step budget: round(N_train * epochs / global batch)."""
    return round(num_train * epochs / batch_size)


def total_steps(cfg: Config, num_train: int | None = None) -> int:
    if cfg.train.total_steps is not None:
        return cfg.train.total_steps
    n = num_train if num_train is not None else cfg.data.num_train_examples
    if n is None:
        raise ConfigError("train.epochs needs the train-set size: set data.num_train_examples or train.total_steps")
    return steps_for_epochs(cfg.train.epochs, n, cfg.train.batch_size)


def _positive(key: str, value: float | None, allow_zero: bool = False) -> None:
    if value is None:
        return
    if (value < 0) if allow_zero else (value <= 0):
        raise ConfigError(f"{key}: got {value}, expected a {'non-negative' if allow_zero else 'positive'} number")


# Numbers that must be > 0 (None passes: an unset optional), and those that must be >= 0.
_POSITIVE = ("data.image_size", "data.eval_resize", "data.max_image_pixels", "optim.lr", "optim.eps",
             "optim.clip_norm", "train.batch_size",
             "train.devices", "train.accum_steps",
             "train.log_every", "train.eval_every", "train.ckpt_every", "train.keep_ckpts", "train.epochs",
             "train.total_steps", "data.num_train_examples", "data.eval_batch_size", "cluster.num_workers",
             "cluster.cpus_per_worker", "cluster.keep_checkpoints", "cluster.gpus_per_worker", "cluster.fail_at_step")
_NON_NEGATIVE = ("train.seed", "data.minival_seed", "optim.weight_decay", "optim.warmup_steps", "data.num_workers",
                 "data.randaug_layers",
                 "data.mixup_alpha", "cluster.max_failures", "cluster.resource_wait_s")


def _value(cfg: Config, dotted: str) -> Any:
    section, _, name = dotted.partition(".")
    return getattr(getattr(cfg, section), name)


def _check_data(d: DataConfig, eval_every: int | None) -> None:
    if not 0 <= d.randaug_magnitude <= 10:
        raise ConfigError(f"data.randaug_magnitude: got {d.randaug_magnitude}, expected 0..10 (big_vision's max level)")
    if not 0.0 < d.minival_fraction < 1.0:
        raise ConfigError(f"data.minival_fraction: got {d.minival_fraction}, expected a fraction in (0, 1)")
    if d.train_split == "minival":
        raise ConfigError("data.train_split: 'minival' is the held-out split; train on 'train_minus_minival'")
    if d.eval_resize < d.image_size:
        raise ConfigError(f"data.eval_resize: {d.eval_resize} must be >= data.image_size={d.image_size}")
    pairs = (("data.crop_area", d.crop_area, 0.0, 1.0), ("data.crop_aspect", d.crop_aspect, 0.0, math.inf))
    for key, pair, lo, hi in pairs:
        if len(pair) != 2 or not (lo < pair[0] <= pair[1] <= hi):
            raise ConfigError(f"{key}: got {pair}, expected [min, max] with {lo} < min <= max <= {hi}")
    if d.dataset != "digits" and not d.root:
        raise ConfigError(f"data.root: required for dataset '{d.dataset}' (the folder holding the splits)")
    if not d.eval_splits and eval_every:
        raise ConfigError("data.eval_splits: empty, but train.eval_every is set; name a split or set eval_every: null")


def _check_numbers(cfg: Config) -> None:
    for key in _POSITIVE:
        _positive(key, _value(cfg, key))
    for key in _NON_NEGATIVE:
        _positive(key, _value(cfg, key), allow_zero=True)
    for key, beta in (("optim.b1", cfg.optim.b1), ("optim.b2", cfg.optim.b2)):
        if not 0.0 <= beta < 1.0:
            raise ConfigError(f"{key}: got {beta}, expected 0 <= beta < 1")


def _check_budget(cfg: Config, num_train: int | None) -> None:
    """Steps, warmup and epoch-equivalents, as far as the train-set size is known."""
    o, t = cfg.optim, cfg.train
    if t.epochs is None and t.total_steps is None:
        raise ConfigError("train: set train.epochs or train.total_steps")
    if t.batch_size % (t.devices * t.accum_steps):
        raise ConfigError(
            f"train.batch_size: {t.batch_size} is not divisible by train.devices x train.accum_steps "
            f"= {t.devices} x {t.accum_steps}; choose a batch that splits evenly"
        )
    n = num_train if num_train is not None else cfg.data.num_train_examples
    if t.total_steps is None and n is None:
        return  # the step checks run again once the dataset is loaded
    steps = total_steps(cfg, n)
    if steps <= 0:
        raise ConfigError(f"train.epochs: {t.epochs} epochs of {n} images at batch {t.batch_size} is 0 steps")
    if o.warmup_steps >= steps:
        raise ConfigError(
            f"optim.warmup_steps: {o.warmup_steps} must be smaller than the total steps ({steps}); "
            "lower the warmup or train longer"
        )
    if n is None:
        return  # epoch-equivalents are checked once the dataset is loaded
    for ep in t.eval_at_epochs:
        if ep <= 0 or steps_for_epochs(ep, n, t.batch_size) > steps:
            raise ConfigError(
                f"train.eval_at_epochs: {ep} epochs is step {steps_for_epochs(ep, n, t.batch_size)}, "
                f"outside this run's 1..{steps} steps; list only epoch-equivalents the run reaches"
            )


def validate(cfg: Config, num_train: int | None = None) -> None:
    """Check cross-field constraints; `num_train` (the loaded dataset's size) enables the step checks."""
    _check_numbers(cfg)
    check_model(cfg.model, cfg.data.image_size)
    _check_data(cfg.data, cfg.train.eval_every)
    _check_budget(cfg, num_train)
