"""Scaling and a new node (the lesson's homework): replicas follow `service scale`, spread stays even,
a new worker gets every global task at once, no replicated task moves to it, and the next new
replicas go to it first. Every test puts the replicas and the nodes back as they were. Each
service is scaled at the same time as the others (pytest_swarm.together): they share no task.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial

import pytest

from pytest_swarm import (
    Cluster,
    DeployedStack,
    Poll,
    Provider,
    Service,
    Settings,
    Together,
    eligible,
    run_docker,
    selected_params,
    wait_for,
)


def per_node(swarm: Cluster, service: Service) -> Counter[str]:
    names = swarm.node_names_by_id()
    return Counter(names.get(t.node_id, t.node_id) for t in service.running_tasks())


def spread(swarm: Cluster, service: Service) -> dict[str, int]:
    """Running tasks on each eligible Ready node (0 included)."""
    nodes = [f.hostname for f in eligible([n.facts() for n in swarm.nodes() if n.ready], service.constraints)]
    counts = per_node(swarm, service)
    return {n: counts.get(n, 0) for n in sorted(nodes)}


def scale(stack: DeployedStack, service: Service, replicas: int, timeout: float) -> None:
    run_docker(
        ["service", "scale", "--detach", f"{service.name}={replicas}"],
        host=stack.cluster.manager_url,
        timeout=60,
    )
    wait_for(
        lambda: Poll(
            # the service's own count too: it includes tasks still stopping
            len(service.reload().running_tasks()) == replicas == service.replicas == service.running,
            f"{len(service.running_tasks())}/{replicas} running ({service.running} with those stopping)",
        ),
        what=f"{service.name} scaled to {replicas}",
        timeout=timeout,
        interval=0.5,
    )


@contextmanager
def scaled_back(stack: DeployedStack, service: Service, timeout: float) -> Iterator[int]:
    """Yield the current replicas; scale back to them at the end, whatever happened."""
    original = service.replicas
    assert original is not None
    try:
        yield original
    finally:
        scale(stack, service, original, timeout)


def capacity(swarm: Cluster, service: Service) -> int | None:
    """How many tasks of ``service`` the Ready nodes can hold (None: no limit declared): its
    ``max_replicas_per_node`` times the eligible nodes."""
    most = service.max_replicas_per_node
    return None if most is None else most * len(spread(swarm, service))


def scale_up_and_down(swarm: Cluster, stack: DeployedStack, name: str, timeout: float) -> list[str]:
    """Scale ``name`` up by 2 (as far as its max_replicas_per_node lets it; else down by 2) and
    back; what was uneven after each step (empty: all even)."""
    service = stack.service(name)
    uneven = []
    with scaled_back(stack, service, timeout) as original:
        room = capacity(swarm, service)
        change = 2 if room is None else min(2, room - original)
        if change <= 0:
            change = -min(2, original - 1)
        if change == 0:
            pytest.skip(f"{name}: 1 replica at its max_replicas_per_node on every node: no room to scale")
        for replicas, step in ((original + change, "scaled to"), (original, "scaled back to")):
            scale(stack, service, replicas, timeout)
            counts = spread(swarm, service)
            if max(counts.values()) - min(counts.values()) > 1:
                uneven.append(f"{name} {step} {replicas}: tasks per eligible node {counts}")
    return uneven


@pytest.fixture(scope="module")
def scaled(
    request: pytest.FixtureRequest, swarm: Cluster, swarm_stack: DeployedStack, swarm_settings: Settings
) -> Iterator[Together[str, list[str]]]:
    """Every selected stateless service scaled up and down at the same time (each its own)."""
    wanted = set().union(*selected_params(request, ("stateless_service",)).values())
    together: Together[str, list[str]] = Together(
        {
            name: partial(scale_up_and_down, swarm, swarm_stack, name, swarm_settings.timeout)
            for name in wanted
        },
        name="scale",
    )
    try:
        yield together
    finally:
        together.close()


def test_scale_up_and_down_converges_evenly(scaled: Together[str, list[str]], stateless_service: str) -> None:
    uneven = scaled.outcome(stateless_service, timeout=1800).get()
    assert not uneven, "; ".join(uneven)


def one_more_goes_where_fewest(swarm: Cluster, stack: DeployedStack, service: Service, timeout: float) -> str:
    """Scale ``service`` up by one and back: where the new task went, if not to a node among
    the eligible ones with the fewest of its tasks (swarm's spread: any of them is right)."""
    with scaled_back(stack, service, timeout) as original:
        before = spread(swarm, service)
        fewest = sorted(n for n, count in before.items() if count == min(before.values()))
        known = {t.id for t in service.running_tasks()}
        scale(stack, service, original + 1, timeout)
        names = swarm.node_names_by_id()
        new = [t for t in service.running_tasks() if t.id not in known]
        landed = sorted({names.get(t.node_id, t.node_id) for t in new})
    if len(landed) == 1 and landed[0] in fewest:
        return ""
    return (
        f"{service.name} scaled to {original + 1}: the new task went to {landed or 'no node'}; "
        f"expected one of the nodes with the fewest of its tasks {fewest} (tasks per node before {before})"
    )


def wait_running_on(swarm: Cluster, service: Service, node: str, timeout: float) -> None:
    def probe() -> Poll[None]:
        where = per_node(swarm, service.reload())
        return Poll(where.get(node, 0) == 1, f"tasks per node {dict(where)}")

    wait_for(probe, what=f"{service.name} running on {node}", timeout=timeout, interval=0.5)


def wait_whole_without(service: Service, node_id: str, timeout: float) -> None:
    """Whole again, counting only tasks swarm wants running: a task of a node that left still
    counts in the service's running tasks until the manager marks it orphaned."""

    def probe() -> Poll[None]:
        running = service.reload().running_tasks()
        gone = not [t for t in running if t.node_id == node_id]
        return Poll(len(running) == service.desired > 0 and gone, f"{len(running)}/{service.desired} running")

    wait_for(probe, what=f"{service.name} whole after its node left", timeout=timeout, interval=0.5)


def test_a_new_worker_gets_global_tasks_and_the_next_replicas(
    swarm: Cluster,
    swarm_stack: DeployedStack,
    swarm_node_control: Provider,
    swarm_settings: Settings,
    scaled: Together[str, list[str]],
) -> None:
    """Skipped where the provider can't add nodes (attach: someone else's swarm)."""
    scaled.close()  # the scale checks of this module are done before a node joins
    swarm_provider = swarm_node_control
    # A service with no running task never came up: its own tests say so; here it would only
    # be waited for until the timeout.
    services = [s for s in swarm_stack.services() if s.running > 0]
    replicated = [s for s in services if s.mode == "replicated"]
    before = {s.name: {t.id for t in s.running_tasks()} for s in replicated}
    worker = swarm_provider.add_node()
    worker_id = swarm.node(worker).id
    node = swarm.node(worker).facts()
    try:
        for service in (s for s in services if s.mode == "global" and eligible([node], s.constraints)):
            wait_running_on(swarm, service, worker, swarm_settings.timeout)
        moved = {
            s.name: sorted(before[s.name] ^ {t.id for t in s.reload().running_tasks()}) for s in replicated
        }
        assert not any(moved.values()), f"replicated tasks changed when {worker} joined: {moved}"

        growing = [
            s
            for s in replicated
            if not swarm_stack.declared(s.name.removeprefix(f"{swarm_stack.name}_")).get("volumes")
            and eligible([node], s.constraints)
        ]
        placed = Together(
            {
                s.name: partial(one_more_goes_where_fewest, swarm, swarm_stack, s, swarm_settings.timeout)
                for s in growing
            },
            name="grow",
        )
        placed.close()
        wrong = [placed.outcome(s.name, timeout=0).get() for s in growing]
        assert not any(wrong), "; ".join(w for w in wrong if w)
    finally:
        swarm_provider.remove_node(worker)
    for service in services:
        wait_whole_without(service, worker_id, swarm_settings.timeout)
    for service in replicated:
        counts = spread(swarm, service.reload())
        assert max(counts.values()) - min(counts.values()) <= 1, (
            f"{service.name} after {worker} left: tasks per eligible node {counts}"
        )
