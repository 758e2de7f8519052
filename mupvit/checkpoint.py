"""Atomic checkpoints (write to a temporary file, fsync, rename), keeping the last few.

Files hold only tensors and plain Python values, so they load with torch.load(weights_only=True).
"""

from __future__ import annotations

import io
import os
import pickle
import re
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from mupvit.errors import ConfigError, OutputError

FORMAT_VERSION = 1
# What torch.load raises for a file that is cut short, not a torch file or holds other than tensors and plain values
# (its legacy unpickler: KeyError or AttributeError on junk bytes).
_TORCH_LOAD_ERRORS = (RuntimeError, EOFError, ValueError, KeyError, AttributeError, pickle.UnpicklingError,
                      zipfile.BadZipFile)
# What load_checkpoint raises for a file that is not a readable mupvit checkpoint.
UNREADABLE = (OSError, ValueError)
_REQUIRED = ("step", "model", "optimizer", "rng", "config", "results", "eval")
_NAME = re.compile(r"^ckpt_(\d{9})\.pt$")


def checkpoint_path(directory: str | Path, step: int) -> Path:
    return Path(directory) / f"ckpt_{step:09d}.pt"


def checkpoint_step(path: Path) -> int:
    """The step of a checkpoint file named by checkpoint_path."""
    return int(_NAME.match(path.name).group(1))


def list_checkpoints(directory: str | Path) -> list[Path]:
    """Checkpoints in `directory`, oldest first."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in directory.iterdir() if (m := _NAME.match(p.name))]
    return [p for _, p in sorted(found)]


def latest_checkpoint(directory: str | Path) -> Path | None:
    found = list_checkpoints(directory)
    return found[-1] if found else None


def save_checkpoint(directory: str | Path, step: int, state: dict[str, Any], keep: int) -> Path:
    """Write `state` as the checkpoint of `step`, then delete all but the newest `keep`."""
    path = checkpoint_path(directory, step)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    # Serialised in memory first: torch's zip writer turns a failed write (a full disk) into an unreadable
    # "enforce fail at inline_container.cc" RuntimeError, a plain write says "No space left on device".
    buffer = io.BytesIO()
    torch.save({"format_version": FORMAT_VERSION, "step": step, **state}, buffer)
    try:
        with open(tmp, "wb") as f:
            f.write(buffer.getbuffer())
            f.flush()
            os.fsync(f.fileno())
    except OSError as err:
        tmp.unlink(missing_ok=True)  # a full disk keeps no half-written file
        kept = list_checkpoints(directory)
        cause = err.strerror or type(err).__name__
        raise OutputError(f"cannot write checkpoint {path} ({cause}); nothing older was removed "
                          f"({'newest kept: ' + str(kept[-1]) if kept else 'no earlier checkpoint'}): free space "
                          "or fix the folder and run the same command to resume") from None
    os.replace(tmp, path)
    # Only this step's and older ones are pruned: a file named for a later step (another run's, a stray copy, an
    # unreadable one) proves nothing about ours, so it never pushes our newest checkpoints out.
    for old in [p for p in list_checkpoints(directory) if checkpoint_step(p) <= step][:-keep]:
        old.unlink(missing_ok=True)
    return path


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """The state of a checkpoint that save_checkpoint wrote. Anything else (cut short, not a torch file, a torch file
    holding a tensor, a list or a dict without the run's state, another format version) is a ValueError naming the
    file, in our words: torch's own would advise loading with weights_only=False, which runs the file's code."""
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except _TORCH_LOAD_ERRORS as err:
        raise ValueError(f"{path}: not a checkpoint (torch.load: {type(err).__name__})") from None
    if not isinstance(state, dict):
        raise ValueError(f"{path}: holds a {type(state).__name__}, not a mupvit checkpoint")
    if state.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{path}: checkpoint format {state.get('format_version')!r} is not {FORMAT_VERSION}")
    missing = [key for key in _REQUIRED if key not in state]
    if missing:
        raise ValueError(f"{path}: a mupvit checkpoint without {', '.join(missing)}")
    return state


def load_latest_valid(directory: str | Path, map_location: str | torch.device = "cpu",
                      warn: Callable[[str], None] = print) -> tuple[Path, dict[str, Any]] | None:
    """The newest checkpoint in `directory` that loads, and its state; each newer one that does not (truncated, not
    a checkpoint) is reported through `warn` and left on disk. None without checkpoints; a ConfigError naming the
    files when none of them loads."""
    found = list_checkpoints(directory)
    for path in reversed(found):
        try:
            return path, load_checkpoint(path, map_location)
        except UNREADABLE as err:
            why = str(err).removeprefix(f"{path}: ")
            warn(f"warning: skipping {path}: not a readable checkpoint ({why}); trying the one before")
    if found:
        raise ConfigError(f"train.out_dir: none of the checkpoints in {directory} loads "
                          f"({', '.join(p.name for p in found)}); move them away to start over, or set "
                          "train.resume=false with a new train.out_dir")
    return None
