"""The two CLIs of checkpoints that travel: `python -m mupvit.export` (to big_vision .npz and timm safetensors) and
`python -m mupvit.evaluate` (any of the three layouts through the config's eval pipeline): a trained tiny run
exported both ways evaluates to identical numbers, timm's own model reproduces our logits from the export, and
every bad input exits 2 naming the path and what is wrong."""

from __future__ import annotations

import functools
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
import timm
import torch

from mupvit.checkpoint import load_checkpoint
from mupvit.evaluate import main as evaluate_main
from mupvit.export import main as export_main
from mupvit.models.adapters.files import read_npz, read_safetensors
from mupvit.models.build import build_model
from mupvit.train import run

from .helpers import QuietLogger, damaged_npz, tiny_config


@pytest.fixture(scope="module")
def trained(digits_root, tmp_path_factory):
    """A finished tiny run: (its config file, its checkpoint, the config)."""
    folder = tmp_path_factory.mktemp("trained")
    cfg = tiny_config(digits_root, folder / "run", **{"evals": {"val": {"split": "val"}}})
    summary = run(cfg, QuietLogger())
    config_file = folder / "tiny.yaml"
    config_file.write_text(cfg.to_yaml())
    return config_file, Path(summary["checkpoint"]), cfg


def last_json(capsys) -> dict:
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def test_export_both_ways_and_every_layout_evaluates_the_same(trained, tmp_path, capsys):
    config_file, checkpoint, _ = trained
    results = {}
    for layout, name in (("big_vision", "w.npz"), ("timm", "w.safetensors")):
        assert export_main([str(checkpoint), "--to", layout, "--out", str(tmp_path / name)]) == 0
        summary = last_json(capsys)
        assert summary["layout"] == layout and summary["head"] is True and summary["step"] == 8
    for path in (checkpoint, tmp_path / "w.npz", tmp_path / "w.safetensors"):
        assert evaluate_main([str(config_file), "--checkpoint", str(path)]) == 0
        results[path.suffix] = last_json(capsys)["val"]
    assert results[".npz"] == results[".pt"] == results[".safetensors"]
    assert 0.0 < results[".pt"]["acc1"] <= 1.0


def test_a_run_folder_exports_its_newest_checkpoint_and_no_head_drops_the_classifier(trained, tmp_path, capsys):
    _, checkpoint, _ = trained
    assert export_main([str(checkpoint.parent), "--to", "big_vision", "--out", str(tmp_path / "b.npz"),
                        "--no-head"]) == 0
    assert last_json(capsys)["checkpoint"] == str(checkpoint)
    keys = set(read_npz(tmp_path / "b.npz"))
    assert "embedding/kernel" in keys and not {"head/kernel", "head/bias"} & keys


def test_timms_model_gives_our_logits_from_the_safetensors_export(trained, tmp_path, capsys):
    _, checkpoint, cfg = trained
    assert export_main([str(checkpoint), "--to", "timm", "--out", str(tmp_path / "t.safetensors")]) == 0
    tensors, recorded = read_safetensors(tmp_path / "t.safetensors")
    assert recorded["gelu"] == "tanh" and recorded["image_size"] == cfg.data.image_size
    m = cfg.model
    theirs = timm.models.vision_transformer.VisionTransformer(
        img_size=cfg.data.image_size, patch_size=m.patch_size, num_classes=m.num_classes, embed_dim=m.width,
        depth=m.depth, num_heads=m.num_heads, mlp_ratio=m.mlp_dim / m.width, class_token=False, global_pool="avg",
        fc_norm=False, qkv_bias=True, norm_layer=functools.partial(torch.nn.LayerNorm, eps=1e-6),
        act_layer=functools.partial(torch.nn.GELU, approximate="tanh")).eval()
    theirs.load_state_dict(tensors)
    ours = build_model(cfg).eval()
    ours.load_state_dict(load_checkpoint(checkpoint)["model"])
    x = torch.randn(4, 3, cfg.data.image_size, cfg.data.image_size)
    with torch.no_grad():
        assert (theirs(x) - ours(x)).abs().max() <= 1e-5


def write_bad(tmp_path: Path, name: str, content: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(content)
    return path


def torch_file(folder: Path, name: str, value: object) -> Path:
    """A torch file that holds `value`: readable by torch.load, but not a mupvit checkpoint."""
    torch.save(value, folder / name)
    return folder / name


def test_bad_checkpoints_exit_2_naming_the_file_and_the_problem(trained, tmp_path, capsys):
    config_file, checkpoint, _ = trained
    whole = checkpoint.read_bytes()
    npz = tmp_path / "w.npz"
    assert export_main([str(checkpoint), "--to", "big_vision", "--out", str(npz)]) == 0
    capsys.readouterr()
    params = dict(np.load(npz))
    params["Transformer/encoderblock_0/LayerNorm_0/scale"] = np.ones(7, np.float32)
    np.savez(tmp_path / "shapes.npz", **params)
    params = dict(np.load(npz))
    params["head/kernel"], params["head/bias"] = np.zeros((32, 1000), np.float32), np.zeros(1000, np.float32)
    np.savez(tmp_path / "classes.npz", **params)
    damaged_npz(tmp_path / "header.npz", zipfile.ZIP_DEFLATED, b"(10,), }", b"(10,,  }")  # numpy: TokenError
    damaged_npz(tmp_path / "pickled.npz", zipfile.ZIP_STORED, b"'<f4'", b"'|O' ")  # numpy: "allow_pickle=True"
    cases = {
        write_bad(tmp_path, "notes.pt", b"not a checkpoint"): "notes.pt: not a checkpoint (torch.load",
        write_bad(tmp_path, "cut.pt", whole[: len(whole) // 2]): "cut.pt: not a checkpoint (torch.load",
        torch_file(tmp_path, "tensor.pt", torch.zeros(3)): "tensor.pt: holds a Tensor, not a mupvit checkpoint",
        torch_file(tmp_path, "list.pt", [1, 2]): "list.pt: holds a list, not a mupvit checkpoint",
        torch_file(tmp_path, "bare.pt", {"format_version": 1, "model": {}}): "bare.pt: a mupvit checkpoint without",
        write_bad(tmp_path, "cut.npz", npz.read_bytes()[:200]): "not a readable .npz checkpoint",
        tmp_path / "header.npz": "not a readable .npz checkpoint (array 'w'): an array header is damaged",
        tmp_path / "pickled.npz": "not a readable .npz checkpoint (array 'w'): it holds pickled Python objects",
        write_bad(tmp_path, "junk.safetensors", b"\x00" * 12): "not a readable .safetensors checkpoint",
        tmp_path / "shapes.npz": "mis-shaped: Transformer/encoderblock_0/LayerNorm_0/scale (7, model 32)",
        tmp_path / "classes.npz": "mis-shaped: head/bias (1000, model 10)",
        write_bad(tmp_path, "model.bin", b"x"): "unknown checkpoint type .bin",
        tmp_path / "missing.npz": "checkpoint not found",
    }
    for path, message in cases.items():
        assert evaluate_main([str(config_file), "--checkpoint", str(path)]) == 2, path
        err = capsys.readouterr().err
        assert err.startswith("error: ") and str(path) in err and message in err, (path, err)
        assert "weights_only" not in err and err.count("\n") == 1  # never torch's advice to run the file's code
        assert "allow_pickle" not in err  # nor numpy's


def test_a_safetensors_export_refuses_a_config_with_another_gelu(trained, tmp_path, capsys):
    config_file, checkpoint, _ = trained
    out = tmp_path / "t.safetensors"
    assert export_main([str(checkpoint), "--to", "timm", "--out", str(out)]) == 0
    capsys.readouterr()
    assert evaluate_main([str(config_file), "--checkpoint", str(out), "--set", "model.gelu=exact"]) == 2
    err = capsys.readouterr().err
    assert "model.gelu: 'tanh' in the file, 'exact' in the config" in err and "--set model.gelu=tanh" in err


@pytest.mark.parametrize("args, message", [
    (["--to", "timm", "--out", "x.npz"], "a timm export is a .safetensors file"),
    (["--to", "big_vision", "--out", "/nonexistent/dir/x.npz"], "folder /nonexistent/dir does not exist"),
])
def test_export_refuses_a_wrong_output_before_reading_anything(trained, args, message, capsys):
    _, checkpoint, _ = trained
    assert export_main([str(checkpoint), *args]) == 2
    assert message in capsys.readouterr().err


def test_export_of_a_folder_without_checkpoints(tmp_path, capsys):
    assert export_main([str(tmp_path), "--to", "big_vision", "--out", str(tmp_path / "x.npz")]) == 2
    assert "a folder without checkpoints" in capsys.readouterr().err


@pytest.mark.parametrize("init_head", [True, False])
def test_a_run_can_start_from_an_exported_checkpoint_with_or_without_its_head(trained, digits_root, tmp_path,
                                                                                capsys, init_head):
    from mupvit.train import setup

    _, checkpoint, _ = trained
    npz = tmp_path / "w.npz"
    assert export_main([str(checkpoint), "--to", "big_vision", "--out", str(npz)]) == 0
    cfg = tiny_config(digits_root, tmp_path / "finetune", **{"train.init_from": str(npz),
                                                             "train.init_head": init_head})
    state = setup(cfg, None, None)
    source = load_checkpoint(checkpoint)["model"]
    got = state.model.state_dict()
    assert all(torch.equal(got[k], v) for k, v in source.items() if not k.startswith("head."))
    assert torch.equal(got["head.weight"], source["head.weight"]) == init_head
    if not init_head:
        assert torch.count_nonzero(got["head.weight"]) == 0  # a fresh zero-initialised head
    assert state.start == 0  # a start, not a resume
