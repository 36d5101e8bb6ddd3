"""Monitoring: prometheus scrapes node-exporter on every node and the app services' /metrics.

Prometheus is asked from inside its own task container (bash and /dev/tcp to its local API), so
the check needs neither the routing mesh nor a published port.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest

from pytest_swarm.cluster import Cluster, Task
from pytest_swarm.settings import Settings
from pytest_swarm.stack import DeployedStack
from pytest_swarm.waiting import Poll, wait_for

API = (
    "exec 3<>/dev/tcp/127.0.0.1/9090 && "
    "printf 'GET /api/v1/targets?state=active HTTP/1.0\\r\\n\\r\\n' >&3 && cat <&3"
)


def targets(task_exec: Callable[[Task, str], Any], task: Task) -> dict[str, list[str]]:
    """job -> the health of each of its active targets, as prometheus reports them."""
    result = task_exec(task, f"bash -c {json.dumps(API)}")
    if result.rc != 0:
        return {}
    body = result.stdout.split("\r\n\r\n", 1)[-1]
    jobs: dict[str, list[str]] = {}
    for target in json.loads(body)["data"]["activeTargets"]:
        jobs.setdefault(target["labels"]["job"], []).append(target["health"])
    return jobs


def test_prometheus_sees_every_node_exporter_and_app_target_up(
    swarm: Cluster,
    swarm_stack: DeployedStack,
    swarm_task_exec: Callable[[Task, str], Any],
    swarm_settings: Settings,
) -> None:
    if "prometheus" not in swarm_stack.declared_services:
        pytest.skip("the stack declares no prometheus service")
    running = swarm_stack.service("prometheus").running_tasks()
    assert running, "prometheus has no running task"
    expected = {"node": len([n for n in swarm.nodes() if n.ready])}
    for job in ("ui", "post", "comment"):
        if job in swarm_stack.declared_services:
            expected[job] = swarm_stack.service(job).running

    def probe() -> Poll[dict[str, list[str]]]:
        jobs = targets(swarm_task_exec, running[0])
        seen = {job: jobs.get(job, []) for job in expected}
        done = all(len(seen[j]) == n and set(seen[j]) == {"up"} for j, n in expected.items())
        return Poll(done, f"targets per job (health): {seen}; expected up: {expected}", seen)

    wait_for(probe, what="prometheus targets up", timeout=swarm_settings.timeout, interval=2)
