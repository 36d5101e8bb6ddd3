"""The fixtures: short wrappers around SwarmLifecycle. Override any of them in a conftest.py."""

from __future__ import annotations

import shlex
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NamedTuple, TypeVar

import docker
import pytest
import testinfra

from .cluster import Cluster, Task
from .envfiles import describe
from .errors import SwarmError
from .evidence import DEPLOYED
from .lifecycle import lifecycle_of
from .providers.base import Provider
from .settings import Settings
from .stack import DeployedStack, StackSource
from .timing import DECLARED_WAIT, TOOK
from .together import wait_early

T = TypeVar("T")


def _or_fail(make: Callable[[], T]) -> T:
    """Run ``make``; a SwarmError fails the test with its message alone (it says what to do)."""
    try:
        return make()
    except SwarmError as exc:
        message = f"swarm: {exc}"
    pytest.fail(message, pytrace=False)


@pytest.fixture(scope="session")
def swarm(request: pytest.FixtureRequest) -> Iterator[Cluster]:
    """The swarm of this run: master-1 (Leader) and worker-1..N, Ready/Active and labelled.

    Yields a :class:`pytest_swarm.cluster.Cluster`: ``nodes()``, ``services()``, ``addresses``,
    ``capabilities``, ``client`` (docker SDK on the manager). Brought up once per run by
    ``--swarm-provider``; removed at the end unless ``--swarm-keep`` says otherwise.
    Override it in a conftest.py to hand the suites a cluster of your own.
    """
    lifecycle = lifecycle_of(request.config)
    cluster = _or_fail(lifecycle.cluster)
    try:
        yield cluster
    finally:
        lifecycle.finish(failed=request.session.testsfailed > 0)


@pytest.fixture(scope="session")
def swarm_stack(request: pytest.FixtureRequest, swarm: Cluster) -> DeployedStack:
    """The stack of ``--swarm-env``, deployed from ``--swarm-stacks`` and converged.

    Yields a :class:`pytest_swarm.stack.DeployedStack`: ``name`` (e.g. DEV), ``model`` (the
    rendered compose files), ``values`` (the env file), ``services()``, ``service("ui")``.
    Override it in a conftest.py to deploy something else for every suite.
    """
    lifecycle = lifecycle_of(request.config)
    env = lifecycle.settings.env
    if env is None:
        found = describe(lifecycle.settings.envs, lifecycle.settings.rootdir)
        pytest.fail(f"swarm_stack needs --swarm-env NAME (envs found: {found})", pytrace=False)
    return _or_fail(lambda: lifecycle.stack(lifecycle.source(str(env))))


@pytest.fixture
def deploy_stack(request: pytest.FixtureRequest, swarm: Cluster) -> Iterator[Callable[..., DeployedStack]]:
    """A factory: ``deploy_stack(env, compose_files, env_file, name, timeout, wait=True)``, all optional.

    Deploys another env, or other compose files (paths), on the session's cluster, under the
    env's stack name or ``name``; waits for convergence unless ``wait=False``; returns the
    :class:`DeployedStack`. Every stack it made is removed when the test ends. With
    ``wait=False`` the stack may still hold its network-join services (pytest_swarm.network_join)
    until ``stack.converge(timeout)`` is called.
    """
    lifecycle = lifecycle_of(request.config)
    made: list[DeployedStack] = request.node.stash.setdefault(DEPLOYED, [])

    def factory(
        env: str | None = None,
        compose_files: list[Path] | tuple[Path, ...] | None = None,
        env_file: Path | None = None,
        name: str | None = None,
        timeout: float | None = None,
        wait: bool = True,
    ) -> DeployedStack:
        env = env or lifecycle.settings.env
        if env is None and env_file is None:
            raise SwarmError("deploy_stack needs env= or env_file= (or --swarm-env)")
        source = StackSource(
            env=env or Path(str(env_file)).stem,
            env_file=env_file or _or_fail(lambda: lifecycle.settings.env_file_of(str(env))),
            compose_files=tuple(compose_files or lifecycle.settings.stacks),
            stack_name=name,
            overrides=tuple(sorted(lifecycle.settings.variables.items())),
        )
        return _or_fail(lambda: lifecycle.deploy(source, timeout, on_deployed=made.append, wait=wait))

    yield factory
    for stack in reversed(made):
        stack.remove()


@pytest.fixture(scope="session")
def swarm_provider(request: pytest.FixtureRequest, swarm: Cluster) -> Provider:
    """The provider behind ``swarm``: ``add_node()``, ``remove_node(name)``, ``stop_node(name)``,
    ``start_node(name)``, ``load_images(refs)``, ``address(name)``.

    A test that changes the cluster with it restores what it changed before it ends.
    """
    provider = lifecycle_of(request.config).provider
    assert provider is not None
    return provider


@pytest.fixture(scope="session")
def swarm_settings(request: pytest.FixtureRequest) -> Settings:
    """The run's effective :class:`pytest_swarm.settings.Settings` (options, ini, environment)."""
    return lifecycle_of(request.config).settings


@pytest.fixture(scope="session")
def swarm_roles(request: pytest.FixtureRequest) -> dict[str, list[str]]:
    """role -> the services of the ``--swarm-env`` stack playing it (``ui``, ``mongo`` ...): found
    by the names the requirement profile gives each role, by service or image name, or mapped
    with the ini key ``swarm_roles = ui=frontend``. Example: ``swarm_roles["ui"] == ["ui"]``."""
    return _or_fail(lifecycle_of(request.config).roles)


@pytest.fixture(scope="session")
def swarm_role(swarm_roles: dict[str, list[str]]) -> Callable[[str], str]:
    """``swarm_role("ui")``: the service playing that role (the first by name, where several do);
    the test is skipped, saying so, when none does."""

    def service(role: str) -> str:
        found = swarm_roles.get(role) or []
        if not found:
            pytest.skip(f"no service of the stack plays {role} (map one with the ini key swarm_roles)")
        return found[0]

    return service


@pytest.fixture(scope="session")
def swarm_node_hosts(request: pytest.FixtureRequest, swarm: Cluster) -> dict[str, Any]:
    """node name -> a testinfra Host whose commands run inside that node (its kernel, its engine).

    Example: ``swarm_node_hosts["worker-1"].run("cat /proc/loadavg")``. A node the provider can
    run no command on (attach without ``NODE:host=``) is absent.
    """
    provider = lifecycle_of(request.config).provider
    assert provider is not None
    specs = {name: provider.host_spec(name) for name in swarm.addresses}
    return {name: testinfra.get_host(spec) for name, spec in specs.items() if spec}


@pytest.fixture
def swarm_node_control(request: pytest.FixtureRequest, swarm_provider: Provider) -> Provider:
    """``swarm_provider``, for a test that adds, removes, stops or starts nodes.

    The test is skipped, with the provider's reason, where the provider can't change nodes
    (attach: the swarm is someone else's). What the suites started early (stacks of their own,
    side-by-side envs) finishes first: a node leaving mid-way would change what they watch.
    """
    if not swarm_provider.can_change_nodes:
        pytest.skip(swarm_provider.fixed_nodes_reason)
    wait_early(request.config)  # what the suites started early finishes before nodes change
    return swarm_provider


class _ExecResult(NamedTuple):
    """What testinfra's CommandResult offers the suites: rc, stdout, stderr."""

    rc: int
    stdout: str
    stderr: str


def _engine_exec(engine: docker.DockerClient, container_id: str, command: str) -> _ExecResult:
    """``docker exec`` through a node's engine API (no shell on the node needed)."""
    exec_id = engine.api.exec_create(container_id, ["sh", "-c", command])
    out, err = engine.api.exec_start(exec_id, demux=True)
    code = engine.api.exec_inspect(exec_id)["ExitCode"]
    return _ExecResult(int(code if code is not None else -1), _text(out), _text(err))


def _text(data: bytes | None) -> str:
    return (data or b"").decode(errors="replace")


@pytest.fixture(scope="session")
def swarm_task_exec(swarm: Cluster, swarm_node_hosts: dict[str, Any]) -> Callable[[Task, str], Any]:
    """``swarm_task_exec(task, "shell command")``: run it inside the task's container, through the
    engine of the node the task runs on; returns testinfra's CommandResult (rc, stdout, stderr)."""

    def run(task: Task, command: str) -> Any:
        node = swarm.node_names_by_id()[task.node_id]
        if node not in swarm_node_hosts and node in swarm.engines:
            return _engine_exec(swarm.engines[node], task.container_id, command)
        if node not in swarm_node_hosts:
            pytest.skip(f"no command can be run on {node}: the provider reaches neither its host nor engine")
        return swarm_node_hosts[node].run(f"docker exec {task.container_id} sh -c {shlex.quote(command)}")

    return run


@pytest.fixture
def swarm_declared_wait(request: pytest.FixtureRequest) -> Callable[[float, str], None]:
    """``swarm_declared_wait(seconds, why)``: count ``seconds`` of this test's time as a wait the
    stack declares (update delay x batches, restart delay x attempts, monitor). The terminal
    summary splits each test's time into these waits and the rest."""

    def add(seconds: float, why: str) -> None:
        request.node.user_properties.append((DECLARED_WAIT, f"{seconds:.3f}|{why}"))

    return add


@pytest.fixture
def swarm_took(request: pytest.FixtureRequest) -> Callable[[float, str], None]:
    """``swarm_took(seconds, what)``: this test checked an operation that ran beside others
    (pytest_swarm.together), so its call time is only the wait for that operation's outcome;
    the time split uses the operation's own ``seconds`` instead."""

    def add(seconds: float, what: str) -> None:
        request.node.user_properties.append((TOOK, f"{seconds:.3f}|{what}"))

    return add
