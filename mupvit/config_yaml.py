"""Reading experiment YAML: numbers as YAML 1.2 reads them, and `base:` inheritance.

An experiment may start from another one and list only what it changes:

    base: ../vit_s16_i1k_90ep.yaml     # relative to this file
    model: {head: mlp}                 # mappings merge key by key; any other value replaces the base's

A base may have a base of its own. A missing base, a cycle or an invalid file fails with the chain of files.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from mupvit.errors import ConfigError

BASE_KEY = "base"


class YamlLoader(yaml.SafeLoader):
    """SafeLoader that also reads exponent floats without a dot (3e-3) as numbers, as YAML 1.2 does."""


YamlLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def parse_yaml(text: str) -> Any:
    return yaml.load(text, YamlLoader)


def read_yaml(path: Path) -> Any:
    """The YAML document of `path`; a missing file or invalid YAML is a ConfigError naming the file."""
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        return parse_yaml(path.read_text())
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from err


def merge(base: dict[str, Any], child: dict[str, Any]) -> dict[str, Any]:
    """`child` over `base`: mappings merge recursively, every other value (lists included) replaces."""
    out = dict(base)
    for key, value in child.items():
        out[key] = merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def chain_text(chain: list[Path]) -> str:
    """How a message names a file and the bases it came through: child <- base <- base's base."""
    return " <- ".join(str(p) for p in chain)


def read_experiment(path: Path, _chain: tuple[Path, ...] = ()) -> tuple[dict[str, Any], list[Path]]:
    """The merged settings of `path` and its bases, with the chain of files read (the given file first)."""
    chain = [*_chain, path]
    resolved = path.resolve()
    if resolved in (p.resolve() for p in _chain):
        raise ConfigError(f"{chain_text(chain)}: base files form a cycle; remove one of the `base:` lines")
    if _chain and not path.is_file():
        raise ConfigError(f"{chain_text(chain[:-1])}: base: {path} not found (a base path is relative to the file "
                          "that names it)")
    data = read_yaml(path)
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{chain_text(chain)}: expected a mapping of config sections, got {type(data).__name__}")
    if BASE_KEY not in data:
        return data, chain
    base = data.pop(BASE_KEY)
    if not isinstance(base, str) or not base:
        raise ConfigError(f"{chain_text(chain)}: base: got {base!r}, expected the path of another experiment file")
    inherited, full_chain = read_experiment(path.parent / base, tuple(chain))
    return merge(inherited, data), full_chain
