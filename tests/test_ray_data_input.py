"""data.pipeline ray_data (orchestration/ray_data_input.py) on the session's shared head: one rank's batches from Ray
Data tasks are train_loader's, bit for bit, over steps that span an epoch boundary and a hand-over between two of
the pipeline's datasets, in both data.augment_on modes; a file that does not decode stops it with the loader's
line."""

from __future__ import annotations

import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow

# A driver that compares rank 1 of 2's batches of steps 43..45 (batch 32: positions 1376..1471; the digits train
# split has 1,438 images, so step 44 ends in the second pass) from both pipelines; two steps per dataset.
COMPARE = """
import dataclasses, sys, ray, torch
from pathlib import Path
from mupvit.data import DataError, build_splits, train_loader
from orchestration import ray_data_input
from orchestration.ray_data_input import Placement, budget_bytes, ray_data_batches, stream_dataset
from tests.helpers import tiny_config

ray.init(logging_level="ERROR", log_to_driver=False)
ray_data_input.WINDOW_STEPS = 2
here = {"ray.io/node-id": ray.get_runtime_context().get_node_id()}
for augment_on in ("loader", "device"):
    cfg = tiny_config(Path(sys.argv[1]), Path(sys.argv[2]), **{"data.augment_on": augment_on})
    split = build_splits(cfg)[cfg.data.train_split]
    assert len(split) == 1438
    local = list(train_loader(cfg, split, 43, 46, rank=1, world=2))
    placement = Placement(cpus=1, label=here)
    remote = list(ray_data_batches(cfg, split, 43, 46, rank=1, world=2, placement=placement))
    assert len(local) == len(remote) == 3
    for a, b in zip(local, remote):
        for name, x, y in zip(a._fields, a, b):
            assert x.dtype == y.dtype and x.shape == y.shape and torch.equal(x, y), (augment_on, name)
    assert local[0].plan.shape == ((16, 9) if augment_on == "device" else (16, 0))
    limits = stream_dataset(cfg, split, 43, 46, 1, 2, placement).context.execution_options.resource_limits
    assert limits.object_store_memory == budget_bytes(cfg, 2) == 32 * 2**20 and limits.cpu == 1
# A file that does not decode stops both alike, with mupvit's one line (data.on_bad_image fail).
gone = dataclasses.replace(split, samples=[(f"{path}.gone", label) for path, label in split.samples])
errors = []
for batches in (train_loader(cfg, gone, 43, 46, 1, 2), ray_data_batches(cfg, gone, 43, 46, 1, 2)):
    try:
        next(iter(batches))
    except DataError as err:
        errors.append(str(err))
assert len(errors) == 2 and errors[0] == errors[1] and ".gone" in errors[0], errors
print("same batches")
"""


def test_ray_data_batches_are_the_local_loaders(ray_env, digits_root, tmp_path):
    done = subprocess.run([sys.executable, "-c", COMPARE, str(digits_root), str(tmp_path / "run")], env=ray_env,
                          capture_output=True, text=True, timeout=240)
    assert done.returncode == 0 and done.stdout.strip().endswith("same batches"), done.stderr[-4000:]
