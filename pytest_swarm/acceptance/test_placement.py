"""Placement: what the files declare is what swarm applied, and every running task obeys it."""

from __future__ import annotations

import pytest

from pytest_swarm import Cluster, DeployedStack, satisfies


def declared_constraints(stack: DeployedStack, service: str) -> list[str]:
    deploy = stack.declared(service).get("deploy") or {}
    return list((deploy.get("placement") or {}).get("constraints") or [])


def test_declared_constraints_are_applied(swarm_stack: DeployedStack, service: str) -> None:
    declared = sorted(declared_constraints(swarm_stack, service))
    applied = sorted(swarm_stack.service(service).constraints)
    assert applied == declared, f"{service}: declared constraints {declared}, applied {applied}"


def test_every_running_task_meets_its_constraints(
    swarm: Cluster, swarm_stack: DeployedStack, service: str
) -> None:
    nodes = {n.id: n for n in swarm.nodes()}
    spec = swarm_stack.service(service)
    tasks = spec.running_tasks()
    if not tasks:
        unmet = {n.name: satisfies(n.facts(), spec.constraints) for n in nodes.values()}
        assert not all(unmet.values()), f"{service}: no node meets its constraints: {unmet}"
        pytest.fail(f"{service}: no running task; last task error: {spec.last_error() or 'none'}")
    broken = []
    for task in tasks:
        node = nodes[task.node_id]
        for rule in satisfies(node.facts(), spec.constraints):
            broken.append(f"task {task.id[:12]} on {node.name} breaks {rule}")
    assert not broken, f"{service}:\n" + "\n".join(broken)
