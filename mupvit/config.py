"""One typed config object for what a run computes (data, model, optim, train), loaded from YAML with dotted
overrides.

Every field is declared here with its type and default; unknown keys, wrong types and impossible
values fail in `load_config` with a message naming the key, the value and what is allowed, so a bad
config never reaches data loading or training. Fields declared `resumable` may change between a checkpoint and
its resume; every other field names the run (`run_fingerprint`) and is refused on resume (`changed_settings`).

An experiment file also holds where and how the run is launched and recorded (LAUNCHER_SECTIONS): orchestration
reads those sections; `python -m mupvit.train` leaves them unread.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from mupvit.config_yaml import chain_text, parse_yaml, read_experiment, yaml_error
from mupvit.errors import ConfigError, shown
from mupvit.memory import MAX_DEVICE_BYTES, check_memory
from mupvit.models.shapes import check_model
from mupvit.schema import build, check_signs, matches, resumable, resumable_keys
from mupvit.urls import check_url, is_url

# The held-out split names (mupvit/data/minival.py makes them from data.minival_from).
MINIVAL, TRAIN_MINUS_MINIVAL = "minival", "train_minus_minival"


@dataclass
class DataConfig:
    # `digits` builds the embedded demo from scikit-learn's digits under `root`;
    # `imagefolder` reads root/<split>/<class>/*; `imagenet` reads torchvision's ImageNet layout.
    dataset: Literal["digits", "imagefolder", "imagenet"] = "imagefolder"
    # Where the data lives, not what it is: a folder, or a URL (s3://bucket/prefix, gs://..., any fsspec URL) whose
    # splits are listed once into <root>/<split>.manifest.json.gz (mupvit/data/manifest.py).
    root: str = resumable("")
    train_split: str = "train"
    # Declared train-set size; when set, it must match the data (lets epochs -> steps resolve early).
    num_train_examples: int | None = None
    image_size: int = 224
    eval_resize: int = 256  # shorter side before the central crop (every evaluator's default)
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
    # Where the loader's share (read, decode, crop, plan) runs: `local` = DataLoader workers in the trainer's
    # process tree; `ray_data` = Ray Data tasks on any node of the cluster with CPUs (orchestration.train only:
    # orchestration/ray_data_input.py). The same samples either way, so it may change on resume.
    pipeline: Literal["local", "ray_data"] = resumable("local")
    mixup_alpha: float = 0.2  # 0 turns MixUp off
    # Stratified held-out split of `minival_from`, usable as the split names `minival` and `train_minus_minival`.
    minival_from: str = "train"
    minival_fraction: float = 0.01
    minival_seed: int = 0
    num_workers: int = resumable(2)
    eval_batch_size: int = resumable(256)
    # A URL root's node-local read-through cache ('' = none): objects read once are kept here, shared by every
    # loader worker and process on the node, the least recently used evicted past cache_max_gb.
    cache_dir: str = resumable("")
    cache_max_gb: float = resumable(100.0)


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
    # An elastic run (orchestration's cluster.num_workers: [min, max]) goes on with any device count from
    # min_devices to devices: the same global batch (accum_steps, given for `devices`, grows as devices shrink), the
    # same samples and the same MixUp pairs (mixed within each 1/devices of the batch). None: exactly `devices`.
    min_devices: int | None = None
    precision: Literal["fp32", "bf16"] = "fp32"
    compile: bool = resumable(False)
    device: Literal["auto", "cpu", "cuda"] = resumable("auto")
    log_every: int = resumable(50)
    eval_every: int | None = resumable(1000)
    eval_at_epochs: list[float] = field(default_factory=lambda: [90.0])
    ckpt_every: int | None = resumable(1000)
    keep_ckpts: int = resumable(3)
    out_dir: str = resumable("runs/default")
    resume: bool = resumable(True)  # continue from the newest checkpoint in out_dir when there is one
    # Start (not resume) from these weights: a mupvit .pt, a big_vision .npz or a timm-layout .safetensors.
    init_from: str | None = None
    # false: drop the file's classifier and train a fresh head (e.g. another model.num_classes)
    init_head: bool = True


@dataclass
class EvalConfig:
    """One evaluator, as big_vision's config.evals.<name> declares one: what data, which resize, how often, and
    whether it is the headline (the evaluator behind acc1_at_<N>ep). Unset values are the data section's."""

    split: str = "val"  # a split of `root` (of data.root: also minival / train_minus_minival)
    # Another dataset root (e.g. ImageNet-v2's) and its layout; default data.root in data.dataset's layout.
    root: str | None = resumable(None)
    layout: Literal["imagefolder", "imagenet", "imagenet_v2"] | None = None
    # ImageNet-ReaL: the public real.json (per val image, in file-name order, the list of correct labels); the
    # evaluator then reports top-1 against those sets over the images whose set is not empty.
    real_labels: str | None = resumable(None)
    resize: int | None = None  # shorter side before the central crop; default data.eval_resize
    resize_method: Literal["tf_area", "torchvision_bilinear"] | None = None  # default data.eval_resize_method
    every: int | None = resumable(None)  # steps between evaluations; default train.eval_every
    headline: bool = False  # at most one; none marked: the first evaluator is the headline


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    # name -> evaluator; metrics are logged as <name>/acc1, <name>/acc5, <name>/loss
    evals: dict[str, EvalConfig] = field(default_factory=lambda: {"val": EvalConfig(headline=True)})

    def headline(self) -> str | None:
        """The evaluator behind acc1_at_<N>ep: the one marked headline, else the first; None without evaluators."""
        marked = [name for name, e in self.evals.items() if e.headline]
        return marked[0] if marked else next(iter(self.evals), None)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


# ---------------------------------------------------------------- building from plain data


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


# Sections of an experiment file that say where and how a run is launched and recorded: orchestration reads them
# (orchestration/launch_config.py); the run's config leaves them out.
LAUNCHER_SECTIONS = ("cluster", "tracking")


def with_overrides(data: dict[str, Any], overrides: list[str] = ()) -> dict[str, Any]:
    """A deep copy of an experiment's tree with `--set` overrides applied."""
    tree = yaml.safe_load(yaml.safe_dump(data or {}, sort_keys=False))  # deep copy through plain YAML types, in order
    for text in overrides:
        key, value = parse_override(text)
        _set_dotted(tree, key, value)
    return tree


def run_sections(tree: dict[str, Any]) -> dict[str, Any]:
    """The run's part of an experiment tree: everything but LAUNCHER_SECTIONS."""
    if not isinstance(tree, dict):
        raise ConfigError(f"config: expected a mapping of sections, got {shown(tree)}")
    return {k: v for k, v in tree.items() if k not in LAUNCHER_SECTIONS}


def build_config(tree: dict[str, Any]) -> Config:
    """The typed Config of a run tree, without the cross-field checks (for callers that derive values first and
    then `validate` once)."""
    return build(Config, run_sections(tree))


def config_from_dict(data: dict[str, Any], overrides: list[str] = ()) -> Config:
    """The validated Config of an experiment tree (launcher sections left out) with `--set` overrides."""
    cfg = build_config(with_overrides(data, overrides))
    validate(cfg)
    return cfg


def load_config(path: str | Path, overrides: list[str] = ()) -> Config:
    """Read a YAML experiment file (and its `base:` chain), apply `--set` overrides, validate, return the Config."""
    data, chain = read_experiment(Path(path))
    try:
        return config_from_dict(data, overrides)
    except ConfigError as err:
        raise ConfigError(f"{chain_text(chain)}: {err}") from err


# ---------------------------------------------------------------- the run's identity

# Keys that may change between a checkpoint and its resume without changing the optimisation (declared on the
# fields with `resumable`); every other key names the run.
RESUMABLE_KEYS = resumable_keys(Config)


def optimisation_settings(tree: dict[str, Any]) -> dict[str, Any]:
    """The dotted settings of a run config's mapping that change the optimisation (sections outside the run's,
    such as the launch sections of checkpoints written by older versions, are left out)."""
    sections = {f.name for f in dataclasses.fields(Config)}
    return {k: v for k, v in flatten(tree).items() if not matches(k, RESUMABLE_KEYS) and k.split(".")[0] in sections}


def run_fingerprint(cfg: Config) -> str:
    """8 hex digits that change exactly when a setting that changes the optimisation does."""
    settings = json.dumps(optimisation_settings(cfg.to_dict()), sort_keys=True, default=str)
    return hashlib.sha1(settings.encode()).hexdigest()[:8]


def changed_settings(saved: dict[str, Any], cfg: Config) -> list[str]:
    """The optimisation settings in which a checkpoint's config (`saved`) and `cfg` differ, as "key: old -> new"."""
    old, new = optimisation_settings(saved), optimisation_settings(cfg.to_dict())
    return [f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in sorted(old.keys() | new.keys())
            if old.get(k) != new.get(k)]


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


# Numbers that must be > 0 (None passes: an unset optional), and those that must be >= 0.
_POSITIVE = ("data.image_size", "data.eval_resize", "data.max_image_pixels", "optim.lr", "optim.eps",
             "optim.clip_norm", "train.batch_size",
             "train.devices", "train.accum_steps", "train.min_devices",
             "train.log_every", "train.eval_every", "train.ckpt_every", "train.keep_ckpts", "train.epochs",
             "train.total_steps", "data.num_train_examples", "data.eval_batch_size", "data.cache_max_gb")
_NON_NEGATIVE = ("train.seed", "data.minival_seed", "optim.weight_decay", "optim.warmup_steps", "data.num_workers",
                 "data.randaug_layers",
                 "data.mixup_alpha")


def _check_data(d: DataConfig) -> None:
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
    _check_root("data.root", d.root)
    if d.dataset == "digits" and is_url(d.root):
        raise ConfigError(f"data.root: {d.root!r} is a URL; dataset 'digits' builds its images in a local folder")


def _check_root(key: str, root: str | None) -> None:
    """A URL root needs a filesystem for its scheme: one line naming the package to install, before any work."""
    if root and is_url(root):
        try:
            check_url(root)
        except ValueError as err:
            raise ConfigError(f"{key}: {err}") from None


def _check_evals(cfg: Config) -> None:
    if not cfg.evals and cfg.train.eval_every:
        raise ConfigError("evals: empty, but train.eval_every is set; declare an evaluator or set eval_every: null")
    marked = [name for name, e in cfg.evals.items() if e.headline]
    if len(marked) > 1:
        raise ConfigError(f"evals: {', '.join(marked)} are all marked headline; mark one")
    for name, e in cfg.evals.items():
        key = f"evals.{name}"
        check_signs(e, ("resize", "every"), prefix=f"{key}.")
        if e.resize is not None and e.resize < cfg.data.image_size:
            raise ConfigError(f"{key}.resize: {e.resize} must be >= data.image_size={cfg.data.image_size}")
        _check_root(f"{key}.root", e.root)
        if e.root is None and e.layout is not None:
            raise ConfigError(f"{key}.layout: {e.layout!r} describes {key}.root, which is not set; set the root "
                              "or drop the layout (the data section's dataset applies)")
        if e.layout == "imagenet_v2" and e.real_labels:
            raise ConfigError(f"{key}.real_labels: ReaL labels belong to ImageNet's val split, not to ImageNet-v2")
        if e.root is not None and e.split in (MINIVAL, TRAIN_MINUS_MINIVAL):
            raise ConfigError(f"{key}.split: {e.split!r} is held out of data.root's {cfg.data.minival_from!r} "
                              f"split; it has no meaning under {key}.root")


def _check_outputs(t: TrainConfig) -> None:
    if not t.out_dir.strip():
        raise ConfigError("train.out_dir: empty; name the folder for the checkpoints, e.g. runs/<experiment>")


def _check_numbers(cfg: Config) -> None:
    check_signs(cfg, _POSITIVE, _NON_NEGATIVE)
    for key, beta in (("optim.b1", cfg.optim.b1), ("optim.b2", cfg.optim.b2)):
        if not 0.0 <= beta < 1.0:
            raise ConfigError(f"{key}: got {beta}, expected 0 <= beta < 1")


def accum_steps_at(t: TrainConfig, devices: int) -> int:
    """The micro-batches each of `devices` devices takes per step, so that the global batch and its micro-batch
    stay those of train.devices x train.accum_steps (an elastic run with fewer devices)."""
    return t.devices * t.accum_steps // devices


def _check_elastic(t: TrainConfig) -> None:
    """Every device count of an elastic run must split the global batch's micro-batches evenly."""
    if t.min_devices is None:
        return
    if t.min_devices > t.devices:
        raise ConfigError(f"train.min_devices: {t.min_devices} is more than train.devices ({t.devices}); an elastic "
                          "run goes on with min_devices to devices devices")
    micro_batches = t.devices * t.accum_steps
    uneven = [n for n in range(t.min_devices, t.devices + 1) if micro_batches % n]
    if uneven:
        counts = math.lcm(*range(t.min_devices, t.devices + 1))
        raise ConfigError(
            f"train.min_devices: an elastic run of {t.min_devices} to {t.devices} devices (cluster.num_workers: "
            f"[{t.min_devices}, {t.devices}]) cannot split the "
            f"{micro_batches} micro-batches of a step (train.devices x train.accum_steps) evenly over "
            f"{', '.join(map(str, uneven))} device(s); set train.accum_steps to a multiple of "
            f"{counts // math.gcd(counts, t.devices)}, or narrow the range"
        )


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
    _check_elastic(t)
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


def validate(cfg: Config) -> None:
    """Check cross-field constraints, as far as they are known before the data is read."""
    _check_numbers(cfg)
    check_model(cfg.model, cfg.data.image_size)
    _check_data(cfg.data)
    _check_evals(cfg)
    _check_outputs(cfg.train)
    _check_budget(cfg, None)
    # what fits nowhere, before any launcher's work; the device's own memory is compared at setup
    check_memory(cfg, MAX_DEVICE_BYTES, "no single device has more than")


def check_budget(cfg: Config, num_train: int) -> None:
    """The step budget against the loaded train set's size (steps, warmup, epoch-equivalents)."""
    _check_budget(cfg, num_train)
