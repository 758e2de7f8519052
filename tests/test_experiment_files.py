"""Experiment files: `base:` inheritance, and the proof that no setting moves unnoticed. The fixture
tests/data/resolved_experiments.json holds every shipped experiment's fully resolved config (and each sweep's base
config and first trial). It was recorded before the ablations became `base:` diffs, and is re-recorded only with a
deliberate change of a default or an experiment, whose fixture diff then shows exactly which settings moved."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from mupvit.config import LAUNCHER_SECTIONS, ConfigError, EvalConfig, load_config
from orchestration.launch_config import load_launch
from orchestration.sweep_spec import load_sweep

REPO = Path(__file__).resolve().parent.parent
RECORDED = json.loads((REPO / "tests" / "data" / "resolved_experiments.json").read_text())


def test_every_shipped_experiment_is_recorded():
    shipped = sorted(str(p.relative_to(REPO)) for p in (REPO / "experiments").rglob("*.yaml"))
    assert shipped == sorted(RECORDED)


def with_evals(recorded: dict) -> dict:
    """A recorded experiment with its data.eval_splits written as the evaluators that replaced them: one per split,
    named by it, the first the headline."""
    out = json.loads(json.dumps(recorded))
    splits = out["data"].pop("eval_splits")
    out["evals"] = {name: {**dataclasses.asdict(EvalConfig()), "split": name, "headline": i == 0}
                    for i, name in enumerate(splits)}
    return out


def as_resolved(recorded: dict) -> dict:
    """A recorded experiment as it resolves for orchestration today: one device per worker, the storage path
    absolute (the two values launch resolution derives, orchestration.launch_config)."""
    out = with_evals(recorded)
    out["train"]["devices"] = out["cluster"]["num_workers"]
    if "://" not in out["cluster"]["storage_path"]:
        out["cluster"]["storage_path"] = str((REPO / out["cluster"]["storage_path"]).resolve())
    return out


def run_part(recorded: dict) -> dict:
    return {k: v for k, v in recorded.items() if k not in LAUNCHER_SECTIONS}


@pytest.mark.parametrize("path", sorted(p for p in RECORDED if "/sweeps/" not in p))
def test_resolved_config_is_unchanged(path):
    assert load_config(REPO / path).to_dict() == run_part(with_evals(RECORDED[path]))
    assert load_launch(REPO / path, base_dir=REPO).to_dict() == as_resolved(RECORDED[path])


@pytest.mark.parametrize("path", sorted(p for p in RECORDED if "/sweeps/" in p))
def test_sweep_base_and_first_trial_are_unchanged(path, monkeypatch):
    monkeypatch.chdir(REPO)  # sweep files name their base relative to the repository
    spec = load_sweep(path)
    assert spec.trial_launch({}, REPO).to_dict() == as_resolved(RECORDED[path]["base"])
    assert spec.trial_launch(spec.points()[0], REPO).to_dict() == as_resolved(RECORDED[path]["first_trial"])


def test_the_ablations_are_diffs_of_the_recipe():
    for path in (REPO / "experiments" / "ablations").glob("*.yaml"):
        lines = [line for line in path.read_text().splitlines() if line.strip() and not line.startswith("#")]
        assert lines[0].startswith("base: "), path
        assert len(lines) <= 12, f"{path} should list only what it changes"


def write(folder: Path, name: str, text: str) -> Path:
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_a_child_overrides_and_merges_section_by_section(tmp_path):
    write(tmp_path, "base.yaml", "data: {dataset: digits}\nmodel: {variant: S/16, head: mlp}\noptim: {lr: 2e-3}\n"
                                 "train: {total_steps: 20000, eval_at_epochs: [1, 2]}\n")
    child = write(tmp_path, "sub/child.yaml", "base: ../base.yaml\nmodel: {head: linear}\n"
                                              "train: {eval_at_epochs: []}\n")
    cfg = load_config(child)
    assert (cfg.model.variant, cfg.model.head, cfg.optim.lr) == ("S/16", "linear", 2e-3)
    assert cfg.train.total_steps == 20000 and cfg.train.eval_at_epochs == []  # lists replace, never append
    grandchild = write(tmp_path, "grandchild.yaml", "base: sub/child.yaml\noptim: {lr: 1e-4}\n")
    assert load_config(grandchild, ["model.head=mlp"]).model.head == "mlp"  # --set comes last
    assert load_config(grandchild).optim.lr == 1e-4


def test_a_cycle_fails_with_the_chain(tmp_path):
    a = write(tmp_path, "a.yaml", "base: b.yaml\n")
    write(tmp_path, "b.yaml", "base: a.yaml\n")
    with pytest.raises(ConfigError, match=r"a\.yaml <- .*b\.yaml <- .*a\.yaml: base files form a cycle"):
        load_config(a)
    selfish = write(tmp_path, "self.yaml", "base: self.yaml\n")
    with pytest.raises(ConfigError, match="cycle"):
        load_config(selfish)


def test_a_missing_base_fails_naming_the_file_that_names_it(tmp_path):
    write(tmp_path, "mid.yaml", "base: nowhere.yaml\n")
    child = write(tmp_path, "child.yaml", "base: mid.yaml\n")
    with pytest.raises(ConfigError, match=r"child\.yaml <- .*mid\.yaml: base: .*nowhere\.yaml not found"):
        load_config(child)


def test_a_key_unknown_to_the_config_fails_with_the_chain(tmp_path):
    write(tmp_path, "base.yaml", "data: {dataset: digits}\ntrain: {total_steps: 20000}\n")
    child = write(tmp_path, "child.yaml", "base: base.yaml\nmodel: {heads: 7}\n")
    with pytest.raises(ConfigError, match=r"child\.yaml <- .*base\.yaml: model: unknown key\(s\) heads; allowed:"):
        load_config(child)


@pytest.mark.parametrize("text, message", [
    ("base: 3\n", "base: got 3, expected the path of another experiment file"),
    ("base: ''\n", "expected the path of another experiment file"),
    ("- a\n- b\n", "expected a mapping of config sections, got list"),
])
def test_a_bad_base_value_or_document_is_named(tmp_path, text, message):
    with pytest.raises(ConfigError, match=message):
        load_config(write(tmp_path, "x.yaml", text))
