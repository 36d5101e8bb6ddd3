"""Replicas and spread: running equals desired; replicated tasks spread evenly; global = one per node."""

from __future__ import annotations

from collections import Counter

from pytest_swarm import Cluster, DeployedStack, Service, declared, eligible


def running_per_node(swarm: Cluster, service: Service) -> Counter[str]:
    names = swarm.node_names_by_id()
    return Counter(names.get(t.node_id, t.node_id) for t in service.running_tasks())


def eligible_nodes(swarm: Cluster, service: Service) -> list[str]:
    ready = [n for n in swarm.nodes() if n.ready]
    facts = eligible([n.facts() for n in ready], service.constraints)
    return sorted(f.hostname for f in facts)


def test_declared_replicas_are_running(swarm_stack: DeployedStack, replicated_service: str) -> None:
    declared_replicas = declared.replicas(swarm_stack.declared(replicated_service))
    service = swarm_stack.service(replicated_service)
    assert (service.replicas, service.running) == (declared_replicas, declared_replicas), (
        f"{replicated_service}: declared replicas {declared_replicas}, applied {service.replicas}, "
        f"running {service.running}; last task error: {service.last_error() or 'none'}"
    )


def test_replicated_tasks_spread_evenly(
    swarm: Cluster, swarm_stack: DeployedStack, replicated_service: str
) -> None:
    service = swarm_stack.service(replicated_service)
    nodes = eligible_nodes(swarm, service)
    counts = running_per_node(swarm, service)
    assert nodes, f"{replicated_service}: no Ready node meets its constraints {service.constraints}"
    per_node = {n: counts.get(n, 0) for n in nodes}
    outside = sorted(set(counts) - set(nodes))
    assert not outside, f"{replicated_service}: tasks on ineligible nodes {outside}"
    assert max(per_node.values()) - min(per_node.values()) <= 1, (
        f"{replicated_service}: tasks per eligible node {per_node} (max - min must be <= 1)"
    )


def test_global_service_runs_once_on_every_eligible_node(
    swarm: Cluster, swarm_stack: DeployedStack, global_service: str
) -> None:
    service = swarm_stack.service(global_service)
    expected = {n: 1 for n in eligible_nodes(swarm, service)}
    actual = dict(running_per_node(swarm, service))
    assert actual == expected, (
        f"{global_service}: expected one task on each of {sorted(expected)}, got {actual}"
    )
