"""The layers of the README's Layout (imports only point downward: dashboards -> orchestration -> mupvit), checked
for every module: statically on each import statement (function-level ones included), and by importing the modules
in a fresh interpreter and looking at what got loaded."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PLATFORM = {"ray", "mlflow", "optuna", "pandas"}
# The mupvit modules that load no torch: what orchestration's checks and the dashboards may read.
TORCH_FREE = {"mupvit", "mupvit.config", "mupvit.config_yaml", "mupvit.errors", "mupvit.results", "mupvit.models",
              "mupvit.models.shapes", "mupvit.models.parametrization", "mupvit.coord_results", "mupvit.outputs"}
# package -> top-level names it must never import
FORBIDDEN = {"mupvit": PLATFORM | {"orchestration", "dashboards"}, "orchestration": {"dashboards"},
             "dashboards": {"torch", "torchvision"}}


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path, module: str | None = None) -> set[str]:
    """Every absolute module an import statement in `path` (the module `module`) names, relative ones resolved."""
    found = set()
    module = module or module_name(path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            found.add(base)
            found |= {f"{base}.{alias.name}" for alias in node.names}  # `from pkg import module`
    return found


def modules(package: str) -> list[Path]:
    return sorted((REPO / package).rglob("*.py"))


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_no_module_imports_against_the_layers(package):
    bad = {}
    for path in modules(package):
        names = imports(path)
        wrong = sorted(n for n in names if n.split(".")[0] in FORBIDDEN[package])
        if package == "dashboards":  # the report reads results, never the training loop
            wrong += sorted(n for n in names if n.startswith("mupvit") and n not in TORCH_FREE
                            and n.rsplit(".", 1)[0] not in TORCH_FREE - {"mupvit", "mupvit.models"})
        if wrong:
            bad[str(path.relative_to(REPO))] = wrong
    assert not bad, f"imports against the layers (README.md, Layout): {bad}"


def test_the_static_check_sees_function_level_and_relative_imports(tmp_path):
    sample = tmp_path / "probe.py"
    sample.write_text("def f():\n    from dashboards.report import build_report\n    from .tracking import LOSS\n")
    assert {"dashboards.report", "orchestration.tracking", "orchestration.tracking.LOSS"} <= imports(
        sample, "orchestration.probe")


def loaded_after_importing(names: list[str]) -> set[str]:
    """Top-level packages loaded by importing `names` in a fresh interpreter."""
    code = ("import importlib, json, sys\nfor name in json.loads(sys.argv[1]):\n    importlib.import_module(name)\n"
            "print(json.dumps(sorted({m.split('.')[0] for m in sys.modules})))")
    done = subprocess.run([sys.executable, "-c", code, json.dumps(names)], cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    return set(json.loads(done.stdout.strip().splitlines()[-1]))


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_importing_every_module_of_a_package_loads_nothing_its_layer_forbids(package):
    names = [module_name(p) for p in modules(package)]
    assert len(names) > 8
    assert not loaded_after_importing(names) & FORBIDDEN[package]


def test_the_torch_free_modules_load_no_torch():
    assert not loaded_after_importing(sorted(TORCH_FREE)) & {"torch", "torchvision"}


def test_experiments_hold_yaml_only():
    files = [p for p in (REPO / "experiments").rglob("*") if p.is_file()]
    assert files and all(p.suffix == ".yaml" for p in files), [str(p) for p in files if p.suffix != ".yaml"]


def test_a_driver_and_a_data_probe_load_no_torchvision():
    """torchvision imports torch._dynamo (~1.3 s here) at every start of a driver and of each data probe task;
    only the non-default eval method `torchvision_bilinear` needs it, and imports it where it is used."""
    assert "torchvision" not in loaded_after_importing(["orchestration.train", "mupvit.data"])
