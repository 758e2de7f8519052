"""Export a training checkpoint to another layout:

    python -m mupvit.export runs/demo_digits/ckpt_000000428.pt --to big_vision --out demo.npz
    python -m mupvit.export runs/demo_digits --to timm --out demo.safetensors      # a run folder: its newest

`big_vision` writes the flattened parameter tree (`/`-joined names, flax shapes) that big_vision's
utils.load_params reads; `timm` writes a timm `VisionTransformer` state dict as safetensors, with the model config
in its metadata (build timm's model with the same GELU: `act_layer=GELU(approximate="tanh")` for gelu tanh).
`--no-head` leaves the classifier out, for fine-tuning on another label set. The last stdout line is a JSON summary.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

from mupvit.checkpoint import latest_checkpoint
from mupvit.config import ConfigError, config_from_dict
from mupvit.models.adapters import ADAPTERS, adapter_for
from mupvit.models.adapters.base import HEAD, full_state
from mupvit.models.adapters.files import LAYOUTS, write_npz, write_safetensors
from mupvit.models.build import build_model
from mupvit.models.weights import read_training_checkpoint
from mupvit.outputs import check_output_file
from mupvit.results import emit_summary

SUFFIX = {layout: suffix for suffix, layout in LAYOUTS.items()}


def resolve_checkpoint(path: Path) -> Path:
    """A checkpoint file, or the newest checkpoint of a run folder."""
    if path.is_dir():
        newest = latest_checkpoint(path)
        if newest is None:
            raise ConfigError(f"{path}: a folder without checkpoints (ckpt_*.pt); pass a checkpoint file")
        return newest
    if not path.is_file():
        raise ConfigError(f"checkpoint not found: {path}")
    return path


def export(checkpoint: Path, layout: str, out: Path, no_head: bool = False) -> dict:
    if not out.parent.is_dir():
        raise ConfigError(f"--out {out}: folder {out.parent} does not exist")
    check_output_file(out.resolve(), "--out")  # before the checkpoint is read
    if out.suffix != SUFFIX[layout]:
        raise ConfigError(f"--out {out}: a {layout} export is a {SUFFIX[layout]} file")
    checkpoint = resolve_checkpoint(checkpoint)
    state = read_training_checkpoint(checkpoint)
    cfg = config_from_dict(state["config"])
    model = build_model(cfg)
    model.load_state_dict(state["model"])
    adapter = adapter_for(layout, cfg.model, cfg.data.image_size)
    tensors = adapter.to_foreign(full_state(model))
    if no_head:
        head = adapter.to_foreign({k: model.state_dict()[k] for k in HEAD})
        tensors = {k: v for k, v in tensors.items() if k not in head}
    if layout == "big_vision":
        write_npz(out, tensors)
    else:
        model_cfg = dataclasses.asdict(cfg.model) | {"image_size": cfg.data.image_size}
        write_safetensors(out, tensors, model_cfg)
    return {"exported": str(out), "layout": layout, "tensors": len(tensors), "head": not no_head,
            "checkpoint": str(checkpoint), "step": state["step"]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mupvit.export", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", type=Path, help="a mupvit.train checkpoint (.pt) or a run folder")
    parser.add_argument("--to", required=True, choices=sorted(ADAPTERS), help="the layout to write")
    parser.add_argument("--out", required=True, type=Path, help="the file to write (.npz or .safetensors)")
    parser.add_argument("--no-head", action="store_true", help="leave the classifier out")
    args = parser.parse_args(argv)
    try:
        summary = export(args.checkpoint, args.to, args.out, args.no_head)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"exported {summary['checkpoint']} (step {summary['step']}) as {args.to}: {args.out}", file=sys.stderr)
    emit_summary(summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
