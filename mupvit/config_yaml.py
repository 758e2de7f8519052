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
    """SafeLoader that also reads exponent floats without a dot (3e-3) as numbers, as YAML 1.2 does, and refuses
    what an experiment file never needs and what hides mistakes: a key given twice (the second would silently win)
    and aliases (`*name`: a few lines of them expand to gigabytes)."""

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            mark = self.peek_event().start_mark
            raise yaml.composer.ComposerError(None, None, "YAML aliases (*name) are not allowed in experiment files; "
                                              "use `base:` to share settings", mark)
        return super().compose_node(parent, index)

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(None, None, f"key {key!r} appears twice in one mapping",
                                                        key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep)


YamlLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def parse_yaml(text: str) -> Any:
    return yaml.load(text, YamlLoader)


def yaml_error(err: yaml.YAMLError) -> str:
    """A YAML error in one line: what and where."""
    problem = getattr(err, "problem", None) or str(err).splitlines()[0]
    mark = getattr(err, "problem_mark", None)
    return f"{problem} (line {mark.line + 1}, column {mark.column + 1})" if mark else problem


def read_yaml(path: Path) -> Any:
    """The YAML document of `path`; a missing or unreadable file or invalid YAML is a ConfigError naming the file."""
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        return parse_yaml(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as err:
        raise ConfigError(f"{path}: not UTF-8 text (byte {err.start}); save the file as UTF-8") from None
    except OSError as err:
        raise ConfigError(f"{path}: cannot read ({err.strerror})") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {yaml_error(err)}") from None


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
