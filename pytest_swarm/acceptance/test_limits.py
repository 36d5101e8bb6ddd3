"""Resource limits: declared = applied (service spec) = enforced (the task container's cgroup)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from pytest_swarm import DeployedStack, Poll, Settings, Task, declared, wait_for

NANO = 1_000_000_000


def one_running_task(swarm_stack: DeployedStack, service: str) -> Task:
    tasks = swarm_stack.service(service).running_tasks()
    assert tasks, f"{service}: no running task to inspect"
    return tasks[0]


def cgroup_limits(task_exec: Callable[[Task, str], Any], task: Task) -> tuple[int | None, float | None]:
    """(memory bytes, cpus) the kernel enforces on the task's container; cgroup v1 or v2."""
    script = (
        "if [ -f /sys/fs/cgroup/memory.max ]; then cat /sys/fs/cgroup/memory.max /sys/fs/cgroup/cpu.max; "
        "else cat /sys/fs/cgroup/memory/memory.limit_in_bytes /sys/fs/cgroup/cpu/cpu.cfs_quota_us "
        "/sys/fs/cgroup/cpu/cpu.cfs_period_us; fi"
    )
    result = task_exec(task, script)
    assert result.rc == 0, f"reading the cgroup of {task.container_id[:12]} failed: {result.stderr}"
    words = result.stdout.split()
    memory = None if words[0] == "max" or int(words[0]) >= 2**60 else int(words[0])
    quota, period = words[1], words[2]
    cpus = None if quota in ("max", "-1") else int(quota) / int(period)
    return memory, cpus


def test_declared_limits_are_applied(swarm_stack: DeployedStack, limited_service: str) -> None:
    want = declared.limits(swarm_stack.declared(limited_service))
    spec = (
        swarm_stack.service(limited_service)
        .attrs["Spec"]["TaskTemplate"]
        .get("Resources", {})
        .get("Limits", {})
    )
    applied = declared.Limits(
        cpus=spec["NanoCPUs"] / NANO if "NanoCPUs" in spec else None,
        memory=spec.get("MemoryBytes"),
    )
    assert applied == want, f"{limited_service}: declared {want}, applied {applied}"


def test_limits_are_enforced_by_the_node(
    swarm_stack: DeployedStack, swarm_task_exec: Callable[[Task, str], Any], limited_service: str
) -> None:
    want = declared.limits(swarm_stack.declared(limited_service))
    task = one_running_task(swarm_stack, limited_service)
    memory, cpus = cgroup_limits(swarm_task_exec, task)
    assert memory == want.memory, (
        f"{limited_service}: declared memory {want.memory}, cgroup enforces {memory}"
    )
    assert cpus == pytest.approx(want.cpus) if want.cpus else cpus is None, (
        f"{limited_service}: declared cpus {want.cpus}, cgroup enforces {cpus}"
    )


def test_allocating_past_the_memory_limit_is_oom_killed(
    swarm_stack: DeployedStack,
    swarm_task_exec: Callable[[Task, str], Any],
    swarm_settings: Settings,
    limited_service: str,
) -> None:
    """A process in the task container holding more than the limit is killed by the kernel (137)."""
    want = declared.limits(swarm_stack.declared(limited_service))
    if want.memory is None:
        pytest.skip(f"{limited_service} declares no memory limit (only cpus)")
    task = one_running_task(swarm_stack, limited_service)
    size = want.memory + 64 * 2**20
    # tail keeps its unterminated input line in memory: it grows until it holds `size` bytes.
    result = swarm_task_exec(task, f"head -c {size} /dev/zero | tail >/dev/null")
    assert result.rc == 137, (
        f"{limited_service}: a process holding {size} bytes past the {want.memory}-byte limit "
        f"exited {result.rc}, expected 137 (OOM-killed)"
    )
    # The kernel may also have picked the app; the service must be whole again for the next test.
    service = swarm_stack.service(limited_service)
    wait_for(
        lambda: Poll(service.whole(), f"{service.running}/{service.desired} running"),
        what=f"{limited_service} whole again",
        timeout=swarm_settings.timeout,  # the kernel may have killed the app: a restart, a convergence
        interval=0.5,
    )
