"""The seam between the model's state dict and a foreign checkpoint layout (cf. torchtitan's state-dict adapters).

An adapter is a named, two-way mapping: `to_foreign(state)` turns the model's full state (`full_state`: its
state_dict plus the constant buffers a foreign layout may store, such as a fixed position embedding) into the
foreign layout, and `from_foreign(tensors)` turns a foreign checkpoint back into a state_dict for the model;
`normalise` first brings a checkpoint's variants (prefixes, stacked layers, another position grid) to the one
layout `to_foreign` writes. `load_foreign` loads strictly: every foreign tensor used, every expected tensor present,
every shape checked, the errors in the foreign layout's own names.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod

import torch
from torch import nn

from mupvit.errors import ConfigError


class AdapterError(ConfigError):
    """A foreign checkpoint does not fit the model; the message names the keys and shapes."""


def full_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """state_dict plus the non-persistent buffers (constants the model computes but a foreign layout may store)."""
    return {**dict(model.named_buffers()), **model.state_dict()}


class KeyMap:
    """Two-way renaming by templates: ("blocks.{i}.attn.out.{p}", "blocks.{i}.attn.proj.{p}") maps each way, a
    placeholder standing for one dotted component. The first matching pair wins."""

    def __init__(self, pairs: list[tuple[str, str]]) -> None:
        self.pairs = pairs
        self.forward = [(self._pattern(ours), foreign) for ours, foreign in pairs]
        self.backward = [(self._pattern(foreign), ours) for ours, foreign in pairs]

    @staticmethod
    def _pattern(template: str) -> re.Pattern:
        parts = re.split(r"\{(\w+)\}", template)
        regex = "".join(re.escape(p) if i % 2 == 0 else f"(?P<{p}>[^.]+)" for i, p in enumerate(parts))
        return re.compile(f"^{regex}$")

    @staticmethod
    def _apply(rules: list[tuple[re.Pattern, str]], key: str) -> str | None:
        for pattern, template in rules:
            match = pattern.match(key)
            if match:
                return template.format(**match.groupdict())
        return None

    def to_foreign(self, key: str) -> str | None:
        return self._apply(self.forward, key)

    def to_ours(self, key: str) -> str | None:
        return self._apply(self.backward, key)


class StateDictAdapter(ABC):
    """A foreign checkpoint layout for one model config."""

    name: str

    @abstractmethod
    def to_foreign(self, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The model's full state (see `full_state`) in the foreign layout."""

    @abstractmethod
    def from_foreign(self, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """A foreign checkpoint as the model's state_dict; raises AdapterError for keys it cannot place."""

    def normalise(self, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """A checkpoint in any variant of the layout, as the variant `to_foreign` writes."""
        return tensors


def shape_text(tensor: torch.Tensor) -> str:
    return "x".join(map(str, tensor.shape)) or "scalar"


def check_state(state: dict[str, torch.Tensor], expected: dict[str, torch.Tensor], source: str) -> None:
    """`state` must hold exactly the tensors of `expected`, shape for shape; the error lists every difference."""
    missing = sorted(expected.keys() - state.keys())
    unexpected = sorted(state.keys() - expected.keys())
    misshaped = sorted(f"{k} ({shape_text(state[k])}, model {shape_text(expected[k])})"
                       for k in expected.keys() & state.keys() if state[k].shape != expected[k].shape)
    problems = [f"{label}: {', '.join(keys[:8])}{f' (+{len(keys) - 8} more)' if len(keys) > 8 else ''}"
                for label, keys in (("missing", missing), ("unexpected", unexpected), ("mis-shaped", misshaped))
                if keys]
    if problems:
        raise AdapterError(f"{source} does not fit the model: " + "; ".join(problems))


HEAD = ("head.weight", "head.bias")


def load_foreign(model: nn.Module, tensors: dict[str, torch.Tensor], adapter: StateDictAdapter,
                 source: str = "checkpoint", keep_head: bool = False) -> None:
    """Load a foreign checkpoint into `model` strictly (see `check_state`). `keep_head`: the checkpoint's
    classifier is dropped and the model keeps its own (freshly initialised, of its own num_classes)."""
    where = f"{source} ({adapter.name} layout)"
    model_state = model.state_dict()
    expected = adapter.to_foreign(full_state(model))
    tensors = adapter.normalise(tensors)
    if keep_head:
        head = adapter.to_foreign({k: model_state[k] for k in HEAD})
        tensors = {k: v for k, v in tensors.items() if k not in head}
        expected = {k: v for k, v in expected.items() if k not in head}
    check_state(tensors, expected, where)
    state = adapter.from_foreign(tensors)
    if keep_head:
        state.update({k: model_state[k] for k in HEAD})
    check_state(state, model_state, where)
    model.load_state_dict(state)
