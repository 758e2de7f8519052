"""deploy/: the image, the KubeRay RayJob and the `ray up` cluster agree with each other, with the pins and with the
README; the cluster file passes Ray's own validation; requirements.lock holds the pins and is what is installed."""

from __future__ import annotations

import re
import tomllib
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
DEPLOY = REPO / "deploy"
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
IMAGE = f"mupvit:{PYPROJECT['project']['version']}"
README = (REPO / "README.md").read_text()


def pins() -> dict[str, str]:
    """{package: version} of every `==` pin in pyproject.toml (dependencies and extras)."""
    specs = [*PYPROJECT["project"]["dependencies"],
             *(s for extra in PYPROJECT["project"]["optional-dependencies"].values() for s in extra)]
    found = {}
    for spec in specs:
        match = re.fullmatch(r"([A-Za-z0-9_.-]+)(\[[^]]*\])?==([^;\s]+)", spec.strip())
        if match:
            found[canonical(match[1])] = match[3]
    return found


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def locked() -> dict[str, str]:
    lines = [line for line in (REPO / "requirements.lock").read_text().splitlines() if line and line[0] != "#"]
    return {canonical(name): v for name, v in (line.split("==") for line in lines)}


def test_the_lock_holds_every_pin_and_is_what_this_install_has():
    lock = locked()
    assert {name: lock.get(name) for name in pins()} == pins()
    wrong = {}
    for name, want in lock.items():
        try:
            have = version(name)
        except PackageNotFoundError:
            wrong[name] = (want, None)
            continue
        if have != want:
            wrong[name] = (want, have)
    assert not wrong, f"installed versions differ from requirements.lock (make lock after a pin change): {wrong}"


def test_the_image_is_rays_own_with_the_pinned_ray_and_installs_from_the_lock():
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    ray = pins()["ray"]
    assert re.search(rf"^FROM rayproject/ray:{re.escape(ray)}-py311-gpu$", dockerfile, re.M), dockerfile
    assert "pip install --no-cache-dir -c requirements.lock '.[platform]'" in dockerfile
    assert f"docker build -f deploy/Dockerfile -t {IMAGE} ." in README and IMAGE in dockerfile


def test_the_rayjob_runs_the_readmes_reproduction_on_the_image():
    job = yaml.safe_load((DEPLOY / "rayjob.yaml").read_text())
    assert (job["apiVersion"], job["kind"]) == ("ray.io/v1", "RayJob")
    entrypoint = job["spec"]["entrypoint"]
    assert entrypoint in README.replace(" \\\n    ", " "), entrypoint  # the README shows it (its lines joined)
    cluster = job["spec"]["rayClusterSpec"]
    assert cluster["rayVersion"] == pins()["ray"]
    groups = [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]
    assert {c["image"] for g in groups for c in g["template"]["spec"]["containers"]} == {IMAGE}
    labels = {g["groupName"]: g["rayStartParams"].get("labels") for g in cluster["workerGroupSpecs"]}
    assert labels == {"gpu": "node-type=gpu", "cpu": "node-type=cpu"}  # README's worker_labels / data_labels
    # From zero nodes, started by the v2 autoscaler (the one that honours the labels the run asks for).
    assert cluster["enableInTreeAutoscaling"] and cluster["autoscalerOptions"]["version"] == "v2"
    assert all(g["minReplicas"] == 0 for g in cluster["workerGroupSpecs"])


def test_the_cluster_file_passes_rays_validation_and_runs_the_image():
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = yaml.safe_load((DEPLOY / "cluster.yaml").read_text())
    validate_config(prepare_config(config))
    assert config["docker"]["image"] == IMAGE
    types = config["available_node_types"]
    assert types["head"]["resources"] == {"CPU": 0}  # the head trains nothing
    assert {name: t.get("labels") for name, t in types.items() if name != "head"} == \
        {"gpu": {"node-type": "gpu"}, "cpu": {"node-type": "cpu"}}
    assert all(t["min_workers"] == 0 for name, t in types.items() if name != "head")
    assert any("RAY_enable_autoscaler_v2=1 ray start --head" in c for c in config["head_start_ray_commands"])
    broken = {**config, "available_node_types": {**types, "cpu": {**types["cpu"], "labelz": {}}}}
    with pytest.raises(Exception, match="labelz"):  # the validation is real: a misspelt key fails it
        validate_config(prepare_config(broken))
