"""`--runtime-env-json` of orchestration.train and orchestration.sweep: a Ray runtime environment given by the user
(e.g. {"env_vars": {"NCCL_DEBUG": "INFO"}}), merged into the one the run gives every Ray process it starts
(orchestration.cluster.job_runtime_env), and checked before any cluster work."""

from __future__ import annotations

import argparse
import json
from typing import Any

from ray.runtime_env import RuntimeEnv

from mupvit.errors import ConfigError


def add_runtime_env_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--runtime-env-json", metavar="JSON", dest="runtime_env",
                        help="a Ray runtime env for every process of the run, e.g. "
                             "'{\"env_vars\": {\"NCCL_DEBUG\": \"INFO\"}}' (the AWS and MLflow login variables of "
                             "this shell travel without it)")


def parse_runtime_env(text: str | None) -> dict[str, Any] | None:
    """The checked value of --runtime-env-json (None: not given). Ray's RuntimeEnv checks the fields' values; it
    takes unknown fields for plugins, so a misspelt field is refused here, naming Ray's."""
    if text is None:
        return None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise ConfigError(f"--runtime-env-json: not JSON ({err.msg} at character {err.pos}): {text[:80]!r}") \
            from None
    if not isinstance(value, dict):
        raise ConfigError(f"--runtime-env-json: expected a JSON object of runtime env fields, got {text[:80]!r}")
    unknown = sorted(set(value) - {f for f in RuntimeEnv.known_fields if not f.startswith("_")})
    if unknown:
        raise ConfigError(f"--runtime-env-json: unknown field(s) {', '.join(unknown)}; Ray's are "
                          f"{', '.join(sorted(f for f in RuntimeEnv.known_fields if not f.startswith('_')))}")
    try:
        RuntimeEnv(**value)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"--runtime-env-json: {err}") from None
    return value
