"""Acceptance suites: expectations come from the rendered stack (what the files declare).

A test that takes one of the parameters below runs once per declared service that has what it
checks (e.g. ``limited_service``: every service declaring resource limits). The ids are the
service names, so a report says which service broke which promise.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any

import pytest

from pytest_swarm import EARLY, DeployedStack, declared, early_work_last, lifecycle_of

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
# Why a test of one of these parameters checks nothing on a stack (its skip reason).
NONE_DECLARES = {
    "service": "the stack declares no service",
    "replicated_service": "the stack declares no replicated service",
    "global_service": "the stack declares no global service",
    "limited_service": "the stack declares no resource limits",
    "restarting_service": "the stack declares no restart_policy",
    "updated_service": "the stack declares no update_config",
    "stateless_service": "the stack declares no replicated service without volumes",
    "published_updated_service": "the stack declares no update_config on a service that publishes a port",
}


def pytest_collectstart(collector: pytest.Collector) -> None:
    """The suites check a deployed env: without one, say so once and stop, as a usage error."""
    settings = lifecycle_of(collector.config).settings
    if settings.env is None:
        pytest.exit(
            "swarm: the acceptance suites deploy an env: give --swarm-env NAME "
            f"(envs found: {settings.envs_found()}) or --swarm-env-file PATH",
            returncode=pytest.ExitCode.USAGE_ERROR,
        )


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Modules run in four groups around the early work (below): those that only read the
    main stack, those that started early work, those that need the cluster to themselves,
    those on a cluster of their own; each group in the order it was given (pytest-randomly
    shuffles it)."""
    early_work_last(items)


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    wanted = [name for name in PARAMETERS if name in metafunc.fixturenames]
    if not wanted:
        return
    model = lifecycle_of(metafunc.config).declared_model()  # rendered at session start
    services: dict[str, Spec] = model.get("services") or {}
    for name in wanted:
        chosen = sorted(s for s, spec in services.items() if PARAMETERS[name](spec))
        if chosen:
            metafunc.parametrize(name, chosen, ids=chosen)
        else:
            skip = pytest.mark.skip(reason=NONE_DECLARES[name])
            metafunc.parametrize(name, [pytest.param(None, marks=skip, id="none")])


@pytest.fixture(scope="session", autouse=True)
def _started_early(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[None]:
    """A suite whose checks mostly wait on things of their own (stacks of their own, other envs)
    defines ``start_early(request, main_stack, folder)``, returning a handle with ``wait()`` and
    ``close()``. When one of its tests is selected, it is started as soon as the main stack is
    up, so its waits overlap the other suites; the suite's module fixture takes the handle
    (take_early).

    A suite on a cluster of its own (``OWN_CLUSTER = True``) needs no main stack (it gets None
    when no other early suite asks for one) and is started early only when tests of other
    suites run too: alone, there is nothing to overlap, and its fixture starts it."""
    # An xdist worker collects every test but runs only the files it is given: it can't know
    # which early work it will need, so each module starts its own when it runs.
    under_xdist = hasattr(request.config, "workerinput")
    selected = {
        item.module.__name__: item.module
        for item in request.session.items
        if isinstance(item, pytest.Function) and item.module is not None
    }
    early = {n: m for n, m in selected.items() if hasattr(m, "start_early") and not under_xdist}
    own = {n: m for n, m in early.items() if getattr(m, "OWN_CLUSTER", False)}
    shared = {n: m for n, m in early.items() if n not in own}
    if len(own) == len(selected):
        own = {}
    started = request.config.stash.setdefault(EARLY, {})
    main: DeployedStack | None = None
    if shared:
        try:
            main = request.getfixturevalue("swarm_stack")
        except (Exception, pytest.fail.Exception, pytest.skip.Exception):
            main = None  # the tests that need the stack say why it is missing
    # in the order the modules ask (START_EARLY_ORDER, default 0), then by name; the suites on a
    # cluster of their own last (the run's cluster is up by then: theirs don't slow its start)
    order = sorted(shared.items(), key=lambda kv: (getattr(kv[1], "START_EARLY_ORDER", 0), kv[0]))
    order = [kv for kv in order if main is not None] + sorted(own.items())
    for name, module in order:
        handle = module.start_early(request, main, tmp_path_factory.mktemp(name.rpartition(".")[2]))
        if handle is not None:
            started[name] = handle
    yield
    while started:  # a module that never ran (e.g. -x stopped the run) leaves nothing behind
        started.popitem()[1].close()
