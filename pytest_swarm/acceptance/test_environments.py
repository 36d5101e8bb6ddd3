"""Several environments side by side in one cluster (DEV, STAGE, PROD from envs/*.env).

The envs of ``--swarm-side-by-side`` (default: every other env file), and EXTRA (a copy of the
main env to remove, when that test is selected), are deployed beside ``--swarm-env`` all at the
same time, in the background from the session's start when one of these tests is selected (its
deploy is mostly waiting: first healthchecks, overlay joins), and removed after this module.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator, Mapping
from dataclasses import replace
from functools import partial
from pathlib import Path

import pytest

from pytest_swarm import (
    STACK_LABEL,
    Cluster,
    DeployedStack,
    PortClash,
    StackError,
    StackSource,
    SwarmLifecycle,
    Together,
    lifecycle_of,
    mesh,
    port_clashes,
    published_ports,
    remove_all,
    render,
    shifted_env,
    take_early,
)


def side_by_side_sources(
    lifecycle: SwarmLifecycle, main: StackSource, folder: Path, extra: bool = True
) -> dict[str, StackSource]:
    """The envs of --swarm-side-by-side, and (``extra``) EXTRA: a copy of the main env on other
    ports, to remove."""
    sources = {env: lifecycle.source(env) for env in lifecycle.settings.side_by_side}
    if sources and extra:
        env_file = shifted_env(main.env_file, folder, "EXTRA", 100, main.compose_files)
        sources["EXTRA"] = replace(main, env="EXTRA", env_file=env_file)
    return sources


class SideBySide:
    """``sources`` (env name -> stack source) being deployed, each until it converges."""

    def __init__(self, lifecycle: SwarmLifecycle, sources: Mapping[str, StackSource]) -> None:
        self.envs = list(sources)
        self.made: list[DeployedStack] = []  # removed even if its convergence fails
        self._deploying: Together[str, DeployedStack] = Together(
            {
                env: partial(lifecycle.deploy, source, on_deployed=self.made.append)
                for env, source in sources.items()
            },
            name="deploy",
        )

    def stacks(self) -> dict[str, DeployedStack]:
        """Wait for every deploy; the converged stacks, or the first deploy's error. Envs whose
        own files publish the same port can't run side by side: a skip saying so (the finding
        is test_published_ports_are_distinct's, made from the files alone)."""
        self._deploying.close()
        for env in self.envs:
            error = self._deploying.outcome(env, timeout=0).error
            if isinstance(error, PortClash):
                pytest.skip(f"the envs can't run side by side: {error}")
        return {env: self._deploying.outcome(env, timeout=0).get() for env in self.envs}

    def wait(self) -> None:
        """Until every deploy has converged or failed."""
        self._deploying.close()

    def close(self) -> None:
        self.remove()

    def remove(self) -> None:
        """Remove every stack made, at the same time; raise if one could not be removed."""
        self._deploying.close()
        made, self.made = self.made, []
        remove_all(made)


@pytest.fixture(scope="module")
def side_by_side(
    request: pytest.FixtureRequest, swarm_stack: DeployedStack, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, DeployedStack]]:
    """The side-by-side envs and EXTRA, each converged (deployed at the same time, from the
    session's start when acceptance/conftest.py started them); all removed after this module."""
    deploying = take_early(request) or start_early(request, swarm_stack, tmp_path_factory.mktemp("extra"))
    if deploying is None:
        pytest.skip("no other env to deploy side by side (env files: swarm_env_files; --swarm-side-by-side)")
    try:
        yield deploying.stacks()
    finally:
        deploying.remove()


def start_early(request: pytest.FixtureRequest, main: DeployedStack, folder: Path) -> SideBySide | None:
    """Deploy the side-by-side envs and EXTRA, all at once (acceptance/conftest.py calls this at
    the session's start when a test of this module is selected)."""
    lifecycle = lifecycle_of(request.config)
    if not lifecycle.settings.side_by_side:
        return None
    extra = any(
        item.originalname == test_removing_one_env_leaves_the_others_untouched.__name__
        for item in request.session.items
        if isinstance(item, pytest.Function) and item.module is sys.modules[__name__]
    )  # EXTRA only when the removal is checked: a small machine may hold two stacks, not three
    return SideBySide(lifecycle, side_by_side_sources(lifecycle, main.source, folder, extra))


@pytest.fixture(scope="module")
def environments(swarm_stack: DeployedStack, side_by_side: dict[str, DeployedStack]) -> list[DeployedStack]:
    """The main stack and the side-by-side ones, all converged."""
    return [swarm_stack, *(stack for env, stack in side_by_side.items() if env != "EXTRA")]


def networks_of(stack: DeployedStack) -> set[str]:
    names = {n["Id"]: n["Name"] for n in stack.cluster.client.api.networks()}
    found = set()
    for service in stack.services():
        for attachment in service.attrs["Spec"]["TaskTemplate"].get("Networks") or []:
            found.add(names.get(attachment["Target"], attachment["Target"]))
    return found


def volumes_of(stack: DeployedStack) -> set[str]:
    return {
        mount["Source"]
        for service in stack.services()
        for mount in service.attrs["Spec"]["TaskTemplate"]["ContainerSpec"].get("Mounts") or []
        if mount.get("Type") == "volume"
    }


def test_every_env_is_a_converged_stack_of_its_own(environments: list[DeployedStack]) -> None:
    names = [s.name for s in environments]
    assert len(set(names)) == len(names), f"stack names clash: {names}"
    for stack in environments:
        counts = {s.name: f"{s.running}/{s.desired}" for s in stack.services()}
        assert all(s.running == s.desired > 0 for s in stack.services()), f"{stack.name}: {counts}"


def test_networks_and_volumes_are_separate(environments: list[DeployedStack]) -> None:
    for i, one in enumerate(environments):
        for other in environments[i + 1 :]:
            shared = (networks_of(one) & networks_of(other)) - {"ingress"}
            assert not shared, f"{one.name} and {other.name} share networks {shared}"
            assert not volumes_of(one) & volumes_of(other), f"{one.name} and {other.name} share volumes"


def test_published_ports_are_distinct(request: pytest.FixtureRequest, swarm_stack: DeployedStack) -> None:
    """From the env files alone: two envs that publish one host port can't share a cluster."""
    lifecycle = lifecycle_of(request.config)
    others = [lifecycle.source(env) for env in lifecycle.settings.side_by_side]
    if not others:
        pytest.skip("no other env to deploy side by side (env files: swarm_env_files; --swarm-side-by-side)")
    models = {swarm_stack.name: swarm_stack.model, **{source.name(): render(source) for source in others}}
    clashes = port_clashes(models)
    assert not clashes, (
        "published ports claimed twice: "
        + "; ".join(clashes)
        + " (give each env its own port in its env file: "
        + ", ".join(str(source.env_file) for source in others)
        + ")"
    )


@pytest.mark.needs_routing_mesh
def test_each_env_answers_on_its_own_port_with_its_env(
    swarm: Cluster, environments: list[DeployedStack], swarm_role: Callable[[str], str]
) -> None:
    ui = swarm_role("ui")
    for stack in environments:
        port = stack.published_port(ui)
        if port is None:
            pytest.skip(f"{ui} publishes no port on the routing mesh")
        shown = (stack.declared(ui).get("environment") or {}).get("ENV")
        for node, address in swarm.addresses.items():
            first = mesh.first_answer(address, port)
            assert first.status == 200, (
                f"{node}:{port} ({stack.name}'s ui) gave no answer in {mesh.READY_TIMEOUT:g} s: {first}"
            )
            answers = mesh.probe(address, port, count=3)
            envs = {a.env for a in answers if a.status == 200}
            assert envs == {shown}, (
                f"{node}:{port} answered {answers}, expected {stack.name}'s page (ENV {shown!r})"
            )


def test_removing_one_env_leaves_the_others_untouched(
    environments: list[DeployedStack], side_by_side: dict[str, DeployedStack]
) -> None:
    extra = side_by_side["EXTRA"]
    before = {s.name: sorted(t.id for t in s.running_tasks()) for e in environments for s in e.services()}
    networks = {e.name: networks_of(e) for e in environments}
    extra.remove()
    client = extra.cluster.client
    assert not client.api.services(filters={"label": f"{STACK_LABEL}=EXTRA"}), "EXTRA's services remain"
    after = {s.name: sorted(t.id for t in s.running_tasks()) for e in environments for s in e.services()}
    assert after == before, "tasks of the other environments changed when EXTRA was removed"
    assert {e.name: networks_of(e) for e in environments} == networks


def test_a_port_clash_is_named_before_deploying(
    request: pytest.FixtureRequest, environments: list[DeployedStack], tmp_path: Path
) -> None:
    lifecycle = lifecycle_of(request.config)
    main = environments[0]
    ports = published_ports(main.model)
    if not ports:
        pytest.skip(f"{main.name} publishes no port: no other stack can clash with it")
    clashing = shifted_env(main.source.env_file, tmp_path, "CLASH", 0, main.source.compose_files)
    source = replace(main.source, env="clash", env_file=clashing, stack_name=None)
    with pytest.raises(StackError) as info:
        lifecycle.deploy(source)
    port, service = min(ports.items())
    assert f"port {port}: {main.name} {service} and CLASH {service}" in str(info.value), str(info.value)
    assert not main.cluster.client.api.services(filters={"label": f"{STACK_LABEL}=CLASH"})
