"""Every bad input answered: each case exits 2 with one line naming the key (or file), the value and what is
allowed, with no traceback and nothing trained or written."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from mupvit.train import main as train_main
from orchestration.sweep import main as sweep_main

REPO = Path(__file__).resolve().parent.parent
DEMO = str(REPO / "experiments" / "demo_digits.yaml")


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    assert len(err) < 600, err
    return err


SET_CASES = {
    "optim.lr=.nan": "optim.lr: got nan, expected a finite number",
    "optim.lr=.inf": "optim.lr: got inf, expected a finite number",
    "optim.lr=-.inf": "optim.lr: got -inf, expected a finite number",
    "optim.weight_decay=.nan": "optim.weight_decay: got nan",
    "data.mixup_alpha=.inf": "data.mixup_alpha: got inf",
    "optim.clip_norm=.nan": "optim.clip_norm: got nan",
    "optim.eps=.inf": "optim.eps: got inf",
    "train.epochs=.inf": "train.epochs: got inf",
    "train.epochs=.nan": "train.epochs: got nan",
    "optim.b1=.nan": "optim.b1: got nan",
    "data.image_size=0": "data.image_size: got 0, expected a positive number",
    "data.image_size=-32": "data.image_size: got -32, expected a positive number",
    "data.eval_resize=0": "data.eval_resize: got 0",
    "train.seed=-1": "train.seed: got -1, expected a non-negative number",
    "train.seed=99999999999999999999999": "train.seed: got 99999999999999999999999, expected an integer of at most",
    "data.minival_seed=-3": "data.minival_seed: got -3",
    "optim.lr=[1": "--set optim.lr: value '[1' is not valid YAML",
    "optim.lr={a: [}": "--set optim.lr: value '{a: [}' is not valid YAML",
    "optim.lr": "--set 'optim.lr': expected KEY=VALUE",
    "=3": "expected KEY=VALUE",
    "optim.lr=[0.1, 0.2]": "optim.lr: got [0.1, 0.2], expected a number",
    "optim=3": "optim: expected a mapping of keys, got 3",
    "optim.lr.x=3": "'lr' is not a section",
    "optim.lrr=3": "optim: unknown key(s) lrr",
    "model.gelu=erf": "model.gelu: got 'erf', expected one of 'tanh', 'exact'",
    "data.decode=pil": "data.decode: got 'pil', expected one of 'tf_fast', 'accurate'",
    "data.eval_resize_method=area": "data.eval_resize_method: got 'area'",
    "data.pipeline=ray": "data.pipeline: got 'ray', expected one of 'local', 'ray_data'",
    "data.pipeline=ray_data": "data.pipeline: ray_data runs the input as Ray Data tasks on a Ray cluster, which "
                              "needs orchestration.train",
    "optim.mu_dtype=fp16": "optim.mu_dtype: got 'fp16'",
    "train.batch_size=1.5": "train.batch_size: got 1.5, expected an integer",
    "train.batch_size=true": "train.batch_size: got True, expected an integer",
    "data.flip=1": "data.flip: got 1, expected true/false",
    f"model.variant={'S' * 500}": "model.variant: got 'SSSS",
    "train.init_from=weights.bin": "unknown checkpoint type .bin",
    "train.init_from=/nonexistent/w.npz": "checkpoint not found: /nonexistent/w.npz",
}


@pytest.mark.parametrize("text", sorted(SET_CASES))
def test_bad_set_values(text, tmp_path, capsys):
    assert train_main([DEMO, "--set", text, "--set", f"train.out_dir={tmp_path / 'run'}"]) == 2
    assert SET_CASES[text] in one_line_error(capsys)
    assert not list((tmp_path / "run").glob("ckpt_*"))


FILE_CASES = {
    "duplicate": ("optim:\n  lr: 1.0e-3\n  lr: 2.0e-3\n", "key 'lr' appears twice in one mapping (line 3"),
    "alias": ("a: &x [1, 2]\nb: *x\n", "YAML aliases (*name) are not allowed"),
    "bomb": ("a: &a ['lol','lol']\nb: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]\nc: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]\n",
             "YAML aliases (*name) are not allowed"),
    "list": ("- data\n- model\n", "expected a mapping of config sections, got list"),
    "scalar": ("just text\n", "expected a mapping of config sections, got str"),
    "tabs": ("optim:\n\tlr: 1\n", "not valid YAML"),
    "unclosed": ("optim: {lr: 1\n", "not valid YAML"),
    "many_unknown": ("".join(f"key{i}: 1\n" for i in range(50)), "(+42 more)"),
    "base_missing": ("base: nowhere.yaml\n", "base: "),
    "base_number": ("base: 7\n", "base: got 7"),
}


@pytest.mark.parametrize("name", sorted(FILE_CASES))
def test_bad_experiment_files(name, tmp_path, capsys):
    text, message = FILE_CASES[name]
    path = tmp_path / f"{name}.yaml"
    path.write_text(text)
    assert train_main([str(path)]) == 2
    assert message in one_line_error(capsys)


def test_a_non_utf8_file_and_a_missing_one(tmp_path, capsys):
    latin = tmp_path / "latin1.yaml"
    latin.write_bytes("optim:\n  # réglage\n  lr: 1.0e-3\n".encode("latin-1"))
    assert train_main([str(latin)]) == 2
    assert "not UTF-8 text" in one_line_error(capsys)
    assert train_main([str(tmp_path / "none.yaml")]) == 2
    assert "config file not found" in one_line_error(capsys)


def write_sweep(tmp_path: Path, **fields) -> Path:
    sweep = {"name": "s", "base": DEMO, "space": {"optim.lr": {"grid": [0.001]}}, **fields}
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(sweep))
    return path


SWEEP_CASES = {
    "seed": ({"search": {"algorithm": "random", "seed": "abc"}}, "search.seed: got 'abc', expected an integer"),
    "samples": ({"num_samples": 2.5}, "num_samples: got 2.5, expected an integer"),
    "cpus": ({"trial_cpus": "two"}, "trial_cpus: got 'two', expected a number"),
    "reduction": ({"scheduler": {"type": "asha", "reduction_factor": float("nan")}},
                  "scheduler.reduction_factor: got nan, expected a finite number"),
    "search_list": ({"search": ["grid"]}, "search: expected a mapping"),
    "space_list": ({"space": ["optim.lr"]}, "space: expected a mapping"),
    "name": ({"name": 3}, "name: got 3, expected a string"),
    "name_path": ({"name": "../../x"}, "name: got '../../x', expected a plain name"),
    "ray_data": ({"overrides": {"data.pipeline": "ray_data"}}, "data.pipeline ray_data: sweep trials read their "
                 "data with the local loader"),
}


@pytest.mark.parametrize("name", sorted(SWEEP_CASES))
def test_bad_sweep_files(name, tmp_path, capsys):
    fields, message = SWEEP_CASES[name]
    assert sweep_main([str(write_sweep(tmp_path, **fields))]) == 2
    assert message in one_line_error(capsys)


def test_a_sweep_set_that_is_not_yaml(tmp_path, capsys):
    assert sweep_main([str(write_sweep(tmp_path)), "--set", "optim.lr=[0.1"]) == 2
    assert "--set optim.lr: value '[0.1' is not valid YAML" in one_line_error(capsys)


def test_an_empty_out_dir_is_refused(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # were it taken, the checkpoints would land here
    assert train_main([DEMO, "--set", "train.out_dir="]) == 2
    assert "train.out_dir: empty; name the folder for the checkpoints" in one_line_error(capsys)
    assert not list(tmp_path.iterdir())


def test_a_sweep_set_of_a_searched_key_is_refused(tmp_path, capsys):
    assert sweep_main([str(write_sweep(tmp_path)), "--set", "optim.lr=0.5"]) == 2
    assert "--set optim.lr: the sweep searches optim.lr (space.optim.lr)" in one_line_error(capsys)


@pytest.mark.parametrize("name", ["../../x", "a/b", ".hidden", "", "/abs"])
def test_a_run_name_that_is_not_one_folder_is_refused_before_any_cluster_work(name, tmp_path, capsys):
    from orchestration.train import main as orchestrate_main

    assert orchestrate_main([DEMO, "--set", f"tracking.run_name={name!r}" if name else "tracking.run_name=''",
                             "--set", f"cluster.storage_path={tmp_path / 'storage'}"]) == 2
    assert "tracking.run_name: got" in one_line_error(capsys)
    assert not (tmp_path / "storage").exists() and not (tmp_path / "x").exists()
