"""Acceptance suites: expectations come from the rendered stack (what the files declare).

Tests that take ``service`` run once per declared service; ``replicated_service`` and
``global_service`` once per service of that mode. The ids are the service names, so a report
says which service broke a promise.
"""

from __future__ import annotations

import pytest

from pytest_swarm.lifecycle import lifecycle_of

PARAMETERS = {"service": None, "replicated_service": "replicated", "global_service": "global"}


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    wanted = [name for name in PARAMETERS if name in metafunc.fixturenames]
    if not wanted:
        return
    model = lifecycle_of(metafunc.config).declared_model()  # rendered at session start
    for name in wanted:
        mode = PARAMETERS[name]
        services = sorted(
            service
            for service, spec in (model.get("services") or {}).items()
            if mode is None or ((spec.get("deploy") or {}).get("mode") or "replicated") == mode
        )
        metafunc.parametrize(name, services, ids=services)
