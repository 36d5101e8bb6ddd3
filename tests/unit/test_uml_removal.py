"""uml's down(): a Ctrl-C during the removal restarts it, a bounded number of times (the removal
itself is replaced: no UML node is started)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from pytest_swarm import settings
from pytest_swarm.ownership import Session
from pytest_swarm.providers import uml
from pytest_swarm.providers.base import ProviderRun


def provider(tmp_path: Path, lines: list[str]) -> uml.UmlProvider:
    resolved = settings.resolve({"provider": "uml"}, {}, {}, tmp_path)
    return uml.UmlProvider(ProviderRun(resolved, Session.new(), lines.append))


def interrupting(times: int, calls: list[str]) -> Callable[[str], list[str]]:
    """A removal that a Ctrl-C interrupts ``times`` times; each call recorded in ``calls``."""

    def remove_session(session_id: str) -> list[str]:
        calls.append(session_id)
        if len(calls) <= times:
            raise KeyboardInterrupt
        return []

    return remove_session


def test_a_ctrl_c_restarts_the_removal_and_is_raised_once_it_is_done(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[str] = []
    lines: list[str] = []
    monkeypatch.setattr(uml, "remove_session", interrupting(2, calls))
    with pytest.raises(KeyboardInterrupt):
        provider(tmp_path, lines).down()
    assert len(calls) == 3  # interrupted twice, the third removal finished
    assert lines[-1].endswith(f"removing again (3/{uml.REMOVAL_ATTEMPTS})")


def test_ctrl_c_after_ctrl_c_gives_the_removal_up_after_a_few(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[str] = []
    lines: list[str] = []
    monkeypatch.setattr(uml, "remove_session", interrupting(100, calls))
    with pytest.raises(KeyboardInterrupt):
        provider(tmp_path, lines).down()
    assert len(calls) == uml.REMOVAL_ATTEMPTS
    assert f"`pytest-swarm down {calls[0]}` removes what is left" in lines[-1]
