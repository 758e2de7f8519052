"""Small shared builders for the tests."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from mupvit.config import Config, config_from_dict
from mupvit.logger import RunLogger


class QuietLogger(RunLogger):
    """Records what the loop reports instead of printing it."""

    def __init__(self) -> None:
        self.events: list[tuple[str, Any]] = []

    def metrics(self, step: int, values: dict[str, float]) -> None:
        self.events.append(("metrics", (step, values)))

    def checkpoint(self, step: int, path: str) -> None:
        self.events.append(("checkpoint", (step, path)))


def tiny_config(digits_root: Path, out_dir: Path, **overrides: Any) -> Config:
    """A seconds-long run on the digits demo: 16x16 input, one block, 8 steps of batch 32."""
    data = {
        "data": {"dataset": "digits", "root": str(digits_root), "image_size": 16, "eval_resize": 16,
                 "crop_area": [0.5, 1.0], "flip": False, "num_workers": 0, "eval_batch_size": 400},
        "model": {"variant": None, "width": 32, "depth": 1, "num_heads": 2, "mlp_dim": 64, "patch_size": 4,
                  "num_classes": 10},
        "optim": {"lr": 2e-3, "warmup_steps": 2},
        "train": {"total_steps": 8, "epochs": None, "batch_size": 32, "log_every": 2, "eval_every": 4,
                  "eval_at_epochs": [], "ckpt_every": 4, "keep_ckpts": 3, "out_dir": str(out_dir)},
    }
    return config_from_dict(data, [f"{k}={json.dumps(v)}" for k, v in overrides.items()])
