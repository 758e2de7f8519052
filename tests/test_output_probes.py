"""Every file a CLI writes when its work is done is probed before the work starts: `mupvit.export --out`,
`mupvit.evaluate --summary-json` and `mupvit.train --summary-json` on a read-only disk (a real read-only mount), in
an immutable folder (chattr +i), or naming a directory fail with exit 2 and one line, before any checkpoint is read
or step trained. The checkpoints named here do not exist: a CLI that read its checkpoint first would say so instead."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from mupvit.evaluate import main as evaluate_main
from mupvit.export import main as export_main
from mupvit.train import main as train_main

from .helpers import tiny_config


@pytest.fixture
def read_only_dir(tmp_path: Path) -> Iterator[Path]:
    """A folder on a read-only file system: a read-only tmpfs mounted there (as root, whom chmod does not stop),
    else a folder chmod 0o555."""
    folder = tmp_path / "read_only"
    folder.mkdir()
    if os.geteuid() != 0:
        folder.chmod(0o555)
        yield folder
        folder.chmod(0o755)
        return
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(folder)],
                             capture_output=True, text=True)
    if mounted.returncode:
        pytest.skip(f"as root, a read-only disk needs a read-only mount, refused here: {mounted.stderr.strip()}")
    yield folder
    subprocess.run(["umount", str(folder)], check=True)


@pytest.fixture
def immutable_dir(tmp_path: Path) -> Iterator[Path]:
    """A folder with the immutable attribute (chattr +i): nothing can be created in it, not even by root."""
    folder = tmp_path / "immutable"
    folder.mkdir()
    done = subprocess.run(["chattr", "+i", str(folder)], capture_output=True, text=True)
    if done.returncode:
        pytest.skip(f"chattr +i is not available on {tmp_path}: {done.stderr.strip()}")
    yield folder
    subprocess.run(["chattr", "-i", str(folder)], check=True)


def commands(digits_root: Path, tmp_path: Path) -> dict[str, tuple[Callable, list[str], str]]:
    """CLI -> (main, its arguments but the output file, the output flag)."""
    config = tmp_path / "run.yaml"
    config.write_text(tiny_config(digits_root, tmp_path / "run").to_yaml())
    missing = str(tmp_path / "no_such_checkpoint.pt")
    return {"export": (export_main, [missing, "--to", "big_vision"], "--out"),
            "evaluate": (evaluate_main, [str(config), "--checkpoint", missing], "--summary-json"),
            "train": (train_main, [str(config)], "--summary-json")}


@pytest.mark.parametrize("cli", ["export", "evaluate", "train"])
@pytest.mark.parametrize("where", ["read_only", "immutable", "directory"])
def test_an_output_that_cannot_be_written_fails_before_the_work(digits_root, tmp_path, capsys, request, cli, where):
    main, args, flag = commands(digits_root, tmp_path)[cli]
    if where == "directory":
        out = tmp_path / "out.npz"  # a directory, named as the file would be
        out.mkdir()
        expected = f"error: {flag}: {out} is a directory; name a file"
    else:
        folder = request.getfixturevalue(f"{where}_dir")
        out = folder / "out.npz"
        cause = "Read-only file system" if os.geteuid() == 0 and where == "read_only" else (
            "Operation not permitted" if where == "immutable" else "Permission denied")
        expected = f"error: {flag}: cannot write to {folder} ({cause}); choose a writable folder"
    assert main([*args, flag, str(out)]) == 2
    captured = capsys.readouterr()
    assert captured.err.startswith(expected) and captured.err.count("\n") == 1, captured.err
    assert captured.out == "" and not (tmp_path / "run").exists()  # nothing trained, nothing left
