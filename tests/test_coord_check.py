"""The coordinate check: µP keeps every layer's activation size flat in width; SP's logits grow (negative control)."""

from __future__ import annotations

import csv

import pytest

from mupvit.config import load_config
from mupvit.coord_check import coord_check, main
from mupvit.coord_results import LAYERS, slopes

SMALL = ["data.image_size=16", "data.eval_resize=16", "model.depth=2", "train.batch_size=32", "optim.lr=1e-3",
         "train.total_steps=100", "data.num_workers=0"]
WIDTHS = [64, 128, 256, 512]


@pytest.fixture(scope="module")
def rows(digits_root):
    cfg = load_config("experiments/demo_digits.yaml", [*SMALL, f"data.root={digits_root}"])
    return coord_check(cfg, WIDTHS, steps=4, parametrizations=["sp", "mup"], seeds=1, log=lambda text: None)


def test_rows_cover_every_width_step_and_layer(rows):
    keys = {(r["parametrization"], r["width"], r["step"], r["layer"]) for r in rows}
    assert keys == {(p, w, t, layer) for p in ("sp", "mup") for w in WIDTHS for t in (1, 2, 3, 4) for layer in LAYERS}
    assert all(r["l1"] > 0 for r in rows)


def test_mup_activations_do_not_grow_with_width(rows):
    fitted = slopes(rows)
    for layer in LAYERS:
        for step in (3, 4):
            assert abs(fitted["mup", step, layer]) <= 0.15, (layer, step, fitted["mup", step, layer])


def test_sp_logits_blow_up_with_width(rows):
    fitted = slopes(rows)
    for step in (3, 4):
        assert fitted["sp", step, "logits"] > 0.3, (step, fitted["sp", step, "logits"])


def test_cli_writes_csv_and_png(digits_root, tmp_path, capsys):
    sets = [arg for s in [*SMALL, f"data.root={digits_root}", "model.depth=1"] for arg in ("--set", s)]
    code = main(["experiments/demo_digits.yaml", "--widths", "32", "64", "--steps", "2", "--seeds", "1",
                 "--parametrization", "mup", "--out", str(tmp_path), *sets])
    assert code == 0
    with (tmp_path / "coord.csv").open() as f:
        table = list(csv.DictReader(f))
    assert list(table[0]) == ["parametrization", "width", "step", "layer", "l1"]
    assert len(table) == 2 * 2 * len(LAYERS) and {r["parametrization"] for r in table} == {"mup"}
    assert (tmp_path / "coord.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "log-log slope" in capsys.readouterr().out


@pytest.mark.parametrize("args, message", [
    (["--widths", "64"], "at least two different positive widths"),
    (["--widths", "64", "80"], "80 is not a multiple of the head size 32"),
    (["--steps", "0"], "--steps and --seeds"),
    (["--set", "model.parametrization=xp"], "model.parametrization"),
])
def test_cli_bad_input_fails_before_training(tmp_path, capsys, args, message):
    code = main(["experiments/demo_digits.yaml", "--out", str(tmp_path / "never"), *args])
    assert code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "never").exists()
