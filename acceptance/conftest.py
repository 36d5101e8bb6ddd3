"""Acceptance suites: expectations come from the rendered stack (what the files declare).

A test that takes one of the parameters below runs once per declared service that has what it
checks (e.g. ``limited_service``: every service declaring resource limits). The ids are the
service names, so a report says which service broke which promise.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any

import pytest

from pytest_swarm import declared
from pytest_swarm.lifecycle import lifecycle_of
from pytest_swarm.side_by_side import SIDE_BY_SIDE, SideBySide, side_by_side_sources
from pytest_swarm.stack import DeployedStack

Spec = Mapping[str, Any]
PARAMETERS: dict[str, Callable[[Spec], bool]] = {
    "service": lambda spec: True,
    "replicated_service": lambda spec: declared.replicas(spec) is not None,
    "global_service": lambda spec: declared.replicas(spec) is None,
    "limited_service": lambda spec: declared.limits(spec) != declared.Limits(None, None),
    "restarting_service": lambda spec: declared.restart_policy(spec) is not None,
    "updated_service": lambda spec: "update_config" in declared.deploy_section(spec),
    # scaled up and down: replicated, and no volume its replicas would share
    "stateless_service": lambda spec: declared.replicas(spec) is not None and not spec.get("volumes"),
    # requests sent through the published port while an update runs
    "published_updated_service": lambda spec: (
        "update_config" in declared.deploy_section(spec) and bool(spec.get("ports"))
    ),
}


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    wanted = [name for name in PARAMETERS if name in metafunc.fixturenames]
    if not wanted:
        return
    model = lifecycle_of(metafunc.config).declared_model()  # rendered at session start
    services: dict[str, Spec] = model.get("services") or {}
    for name in wanted:
        chosen = sorted(s for s, spec in services.items() if PARAMETERS[name](spec))
        metafunc.parametrize(name, chosen, ids=chosen)


@pytest.fixture(scope="session", autouse=True)
def _side_by_side_from_the_start(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[None]:
    """When a selected test uses ``side_by_side``, start deploying those envs once the main
    stack is up, so their waits overlap the other suites (pytest_swarm.side_by_side)."""
    lifecycle = lifecycle_of(request.config)
    wanted = any("side_by_side" in getattr(item, "fixturenames", ()) for item in request.session.items)
    if wanted and lifecycle.settings.side_by_side and SIDE_BY_SIDE not in request.config.stash:
        try:
            main: DeployedStack = request.getfixturevalue("swarm_stack")
        except BaseException:
            main = None
        if main is not None:
            sources = side_by_side_sources(lifecycle, main.source, tmp_path_factory.mktemp("extra"))
            request.config.stash[SIDE_BY_SIDE] = SideBySide(lifecycle, sources)
    yield
    left = request.config.stash.get(SIDE_BY_SIDE, None)  # the module never ran (e.g. -x stopped it)
    if left is not None:
        del request.config.stash[SIDE_BY_SIDE]
        left.remove()
