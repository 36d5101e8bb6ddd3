"""Plugin tests run pytest in pytest: the settings they check must not come from this shell."""

from __future__ import annotations

import os

import pytest


@pytest.fixture(autouse=True)
def clean_swarm_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No SWARM_* variable of the outer environment reaches the runs under test."""
    for name in list(os.environ):
        if name.startswith("SWARM_"):
            monkeypatch.delenv(name)
