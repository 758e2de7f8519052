"""Checkpoint files of the three layouts, read and written with their own libraries: our `.pt` (torch, written by
mupvit.checkpoint), big_vision's `.npz` (numpy; "/"-joined parameter names) and timm's `.safetensors`
(safetensors, with the model config in its metadata). A file that is not what its name says, or is cut short,
is an AdapterError naming the path."""

from __future__ import annotations

import json
import tokenize
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from mupvit.models.adapters.base import AdapterError

LAYOUTS = {".pt": "mupvit", ".npz": "big_vision", ".safetensors": "timm"}
CONFIG_KEY = "mupvit.model_config"  # safetensors metadata: the model config the weights belong to


def layout_of(path: Path) -> str:
    """The layout a checkpoint file's name says it holds."""
    if path.suffix not in LAYOUTS:
        raise AdapterError(f"{path}: unknown checkpoint type {path.suffix or '(no suffix)'}; expected "
                           + ", ".join(f"{suffix} ({layout})" for suffix, layout in LAYOUTS.items()))
    return LAYOUTS[path.suffix]


def _tensor(array: np.ndarray) -> torch.Tensor:
    # numpy stores bfloat16 as 2-byte void (big_vision's utils.recover_dtype reads it back the same way)
    if array.dtype.type is np.void and array.itemsize == 2:
        return torch.from_numpy(array.view(np.int16).copy()).view(torch.bfloat16)
    return torch.from_numpy(np.ascontiguousarray(array))


def _npz_damage(err: BaseException) -> str:
    """Why numpy could not read a member, in our words: numpy's own text may span lines, quote a whole garbled
    header, or advise allow_pickle=True, which would let a hostile file run code."""
    text = str(err)
    if "allow_pickle" in text:
        return "it holds pickled Python objects or an oversized array header, never loaded (they could run code)"
    if isinstance(err, TypeError):  # torch refuses the dtype (strings, structured records)
        return "an array holds values that are not numbers"
    if isinstance(err, MemoryError):
        return "an array header declares more data than fits in memory"
    if isinstance(err, (tokenize.TokenError, RecursionError)) or text.startswith(("Cannot parse header", "Header ")):
        return "an array header is damaged"
    first = " ".join(text.split())
    return f"{type(err).__name__}: {first[:120]}"


def read_npz(path: Path) -> dict[str, torch.Tensor]:
    member = ""
    try:
        loaded = np.load(path, allow_pickle=False)
        if not isinstance(loaded, np.lib.npyio.NpzFile):  # a .npy file (one array) under an .npz name
            raise AdapterError(f"{path}: a single array, not a big_vision .npz of named parameters")
        with loaded:
            tensors = {}
            for member in loaded.files:
                tensors[member] = _tensor(loaded[member])
            return tensors
    except AdapterError:
        raise
    # numpy parses each member's header with ast and tokenize: a damaged one raises more than ValueError
    except (OSError, ValueError, TypeError, zipfile.BadZipFile, EOFError, tokenize.TokenError, RecursionError,
            MemoryError) as err:
        where = f" (array {member!r})" if member else ""
        raise AdapterError(f"{path}: not a readable .npz checkpoint{where}: {_npz_damage(err)}; "
                           "download or export it again") from None


def write_npz(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    arrays = {key: value.detach().cpu().float().numpy() for key, value in tensors.items()}
    with path.open("wb") as f:
        np.savez(f, **arrays)


def read_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any] | None]:
    """The tensors and, when the file carries one, the model config they belong to."""
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {key: f.get_tensor(key) for key in f.keys()}
        config = json.loads(meta[CONFIG_KEY]) if CONFIG_KEY in meta else None
    except (OSError, SafetensorError, ValueError) as err:
        raise AdapterError(f"{path}: not a readable .safetensors checkpoint ({type(err).__name__}: {err})") from None
    return tensors, config


def write_safetensors(path: Path, tensors: dict[str, torch.Tensor], model_config: dict[str, Any]) -> None:
    save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(path),
              metadata={CONFIG_KEY: json.dumps(model_config)})
