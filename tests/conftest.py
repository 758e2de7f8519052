"""Shared fixtures: the digits demo data is built once per test session."""

from __future__ import annotations

from pathlib import Path

import pytest

from mupvit.data.digits import build_digits


@pytest.fixture(scope="session")
def digits_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_digits(tmp_path_factory.mktemp("data") / "digits")
