"""Monitoring: prometheus scrapes every task of the services it monitors, node-exporter on every
node, and sees each of them up.

Prometheus is asked from inside its own task container (bash and /dev/tcp to its local API), so
the check needs neither the routing mesh nor a published port. Targets are matched to the
stack's tasks by address, so the jobs may be named anything: a service prometheus scrapes is
checked for every running task, whatever its scrape config calls it.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest

from pytest_swarm import DeployedStack, Poll, Settings, Task, wait_for

# Prometheus finds a new task by DNS and scrapes it on its own intervals: this check runs after
# the other reads of the stack, by when that has mostly happened.
READS_LATE = True
API = (
    "exec 3<>/dev/tcp/127.0.0.1/9090 && "
    "printf 'GET /api/v1/targets?state=active HTTP/1.0\\r\\n\\r\\n' >&3 && cat <&3"
)


def targets(task_exec: Callable[[Task, str], Any], task: Task) -> dict[str, str] | None:
    """address -> health of each active target, as prometheus reports them; None while it
    does not answer with them yet (starting, or no bash in its image)."""
    result = task_exec(task, f"bash -c {json.dumps(API)}")
    if result.rc != 0:
        return None
    try:
        active = json.loads(result.stdout.split("\r\n\r\n", 1)[-1])["data"]["activeTargets"]
    except (ValueError, KeyError, TypeError):
        return None  # not ready: an empty or partial answer
    return {str(t["labels"].get("instance", "")).rsplit(":", 1)[0]: str(t["health"]) for t in active}


def task_addresses(task: Task) -> set[str]:
    return {
        address.split("/", 1)[0]
        for attachment in task.attrs.get("NetworksAttachments") or []
        for address in attachment.get("Addresses") or []
    }


def test_prometheus_scrapes_every_task_it_monitors_and_sees_it_up(
    swarm_stack: DeployedStack,
    swarm_task_exec: Callable[[Task, str], Any],
    swarm_settings: Settings,
    swarm_roles: dict[str, list[str]],
) -> None:
    prometheus = next(iter(swarm_roles.get("prometheus") or []), None)
    if prometheus is None:
        pytest.skip(
            "no service of the stack plays prometheus (map one with swarm_roles = prometheus=SERVICE)"
        )
    running = swarm_stack.service(prometheus).running_tasks()
    assert running, f"{prometheus} has no running task"
    exporters = set(swarm_roles.get("node-exporter") or [])

    def probe() -> Poll[dict[str, Any]]:
        seen = targets(swarm_task_exec, running[0])
        if seen is None:
            return Poll(False, "prometheus does not answer with its targets yet")
        report: dict[str, Any] = {}
        for service in swarm_stack.declared_services:
            tasks = swarm_stack.service(service).running_tasks()
            scraped = {task.id[:12]: seen.get(a) for task in tasks for a in task_addresses(task) if a in seen}
            if scraped or service in exporters:
                report[service] = {"tasks": len(tasks), "scraped": scraped}
        done = bool(report) and all(
            len(r["scraped"]) == r["tasks"] > 0 and set(r["scraped"].values()) == {"up"}
            for r in report.values()
        )
        return Poll(
            done, f"per service: running tasks and the health prometheus gives each: {report}", report
        )

    wait_for(probe, what="prometheus targets up", timeout=swarm_settings.timeout, interval=2)
