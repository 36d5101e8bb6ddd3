"""Rolling updates and rollback, as update_config declares them.

The update goes to the ``-next`` version of the service's image and the failing one to its
``-broken`` version (same code, a healthcheck that fails), both built before the cluster started.
Each test restores the service to its original image before it ends.
"""

from __future__ import annotations

import itertools
import math
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from pytest_swarm import declared, mesh
from pytest_swarm.cluster import Cluster, Service, seconds
from pytest_swarm.commands import run_docker
from pytest_swarm.images import variant_ref
from pytest_swarm.stack import DeployedStack
from pytest_swarm.waiting import Poll, wait_for

START_ALLOWANCE = 20.0  # seconds a new task gets to start and pass its healthcheck
DONE = ("completed", "paused", "rollback_completed", "rollback_paused")


def variant_or_skip(swarm: Cluster, service: Service, variant: str) -> str:
    ref = variant_ref(service.image, variant)
    missing = [n for n, engine in swarm.engines.items() if not engine.images.list(name=ref)]
    if missing or not swarm.engines:
        pytest.skip(f"{service.name}: no {ref} on the nodes (its Dockerfile declares no ARG BROKEN)")
    return ref


def update_deadline(spec: dict[str, Any], config: declared.UpdateConfig) -> float:
    """How long the declared update may take: every batch's start, delay and monitor, with margin."""
    replicas = declared.replicas(spec) or 1
    batches = math.ceil(replicas / max(config.parallelism, 1))
    return batches * (START_ALLOWANCE + config.delay) + config.monitor + 60


def update_image(stack: DeployedStack, service: Service, image: str) -> None:
    run_docker(
        ["service", "update", "--detach", "--image", image, service.name],
        host=stack.cluster.manager_url,
        timeout=60,
    )


def wait_update(service: Service, deadline: float, done: tuple[str, ...] = DONE) -> str:
    def probe() -> Poll[str]:
        state = service.reload().update_state
        return Poll(state in done, f"UpdateStatus {state or 'none'}", state)

    poll = wait_for(probe, what=f"{service.name} update to end", timeout=deadline, interval=0.5)
    return str(poll.value)


def restore(stack: DeployedStack, service: Service, image: str, timeout: float) -> None:
    """Back to ``image`` with every task running it, whatever state the update ended in."""
    if service.reload().image != image:
        # A rollback returns to the previous spec under rollback_config (no update delay).
        previous = (service.attrs.get("PreviousSpec") or {}).get("TaskTemplate", {}).get("ContainerSpec", {})
        if str(previous.get("Image", "")).split("@")[0] == image:
            run_docker(
                ["service", "rollback", "--detach", service.name], host=stack.cluster.manager_url, timeout=60
            )
        else:
            update_image(stack, service, image)
    wait_for(
        lambda: Poll(
            service.reload().update_state not in ("updating", "rollback_started")
            and {t.image.split("@")[0] for t in service.running_tasks()} == {image}
            and len(service.running_tasks()) == service.replicas,
            f"{service.update_state}, images {sorted({t.image for t in service.running_tasks()})}",
        ),
        what=f"{service.name} restored to {image}",
        timeout=timeout,
        interval=0.5,
    )


class TaskLog:
    """Each task's running time and end time, by slot, on swarm's clock, while an update runs."""

    def __init__(self, service: Service) -> None:
        self.service = service
        self.running: dict[str, tuple[float, int | None, str]] = {}
        self.ended: dict[str, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        while not self._stop.wait(0.2):
            for task in self.service.tasks():
                if task.state == "running":
                    self.running.setdefault(task.id, (seconds(task.timestamp), task.slot, task.image))
                elif task.state in ("shutdown", "failed", "complete", "rejected") and task.id in self.running:
                    self.ended.setdefault(task.id, seconds(task.timestamp))

    @contextmanager
    def recording(self) -> Iterator[TaskLog]:
        for task in self.service.running_tasks():
            self.running[task.id] = (0.0, task.slot, task.image)  # before the update: start unknown
        self._thread.start()
        try:
            yield self
        finally:
            self._stop.set()
            self._thread.join(timeout=10)


def batches(starts: list[float], delay: float) -> list[list[float]]:
    """Group start times: a new batch begins when a start comes at least ``delay`` after the last."""
    groups: list[list[float]] = []
    for start in sorted(starts):
        if groups and start - groups[-1][-1] < max(delay / 2, 0.5):
            groups[-1].append(start)
        else:
            groups.append([start])
    return groups


def declared_update_wait(spec: dict[str, Any], config: declared.UpdateConfig) -> tuple[float, str]:
    batches = math.ceil((declared.replicas(spec) or 1) / max(config.parallelism, 1))
    return (batches - 1) * config.delay + config.monitor, (
        f"update delay {config.delay:g} s x {batches - 1} + monitor {config.monitor:g} s"
    )


def test_rolling_update_follows_update_config(
    swarm: Cluster,
    swarm_stack: DeployedStack,
    updated_service: str,
    swarm_declared_wait: Callable[[float, str], None],
) -> None:
    spec = swarm_stack.declared(updated_service)
    config = declared.update_config(spec)
    swarm_declared_wait(*declared_update_wait(spec, config))
    service = swarm_stack.service(updated_service)
    original = service.image
    target = variant_or_skip(swarm, service, "next")
    deadline = update_deadline(spec, config)
    log = TaskLog(service)
    try:
        with log.recording():
            update_image(swarm_stack, service, target)
            state = wait_update(service, deadline)
        assert state == "completed", f"{updated_service}: update to {target} ended {state}"

        new = {t: v for t, v in log.running.items() if v[2].split("@")[0] == target}
        old = {t: v for t, v in log.running.items() if v[2].split("@")[0] == original}
        assert len(new) == service.replicas, f"{updated_service}: {len(new)} tasks on {target}"
        groups = batches([v[0] for v in new.values()], config.delay)
        sizes = [len(g) for g in groups]
        assert max(sizes) <= config.parallelism, (
            f"{updated_service}: declared parallelism {config.parallelism}, batches seen {sizes}"
        )
        if config.delay > 0:
            gaps = [b[0] - a[-1] for a, b in itertools.pairwise(groups)]
            assert all(g >= config.delay for g in gaps), (
                f"{updated_service}: declared delay {config.delay:g} s, gaps between batches {gaps}"
            )
        by_slot_old = {v[1]: log.ended.get(t) for t, v in old.items()}
        for _task_id, (started, slot, _) in new.items():
            stopped = by_slot_old.get(slot)
            assert stopped is not None, f"{updated_service}: slot {slot}'s old task never stopped"
            if config.order == "stop-first":
                assert stopped <= started, (
                    f"{updated_service} slot {slot}: stop-first, new task ran before old ended"
                )
            else:
                assert started <= stopped, f"{updated_service} slot {slot}: start-first, old task ended first"
    finally:
        restore(swarm_stack, service, original, deadline)


def test_a_failing_version_is_rolled_back_or_paused(
    swarm: Cluster, swarm_stack: DeployedStack, updated_service: str
) -> None:
    spec = swarm_stack.declared(updated_service)
    config = declared.update_config(spec)
    if config.failure_action == "continue":
        pytest.skip(f"{updated_service} declares failure_action continue: a failing version is kept")
    service = swarm_stack.service(updated_service)
    original = service.image
    broken = variant_or_skip(swarm, service, "broken")
    deadline = update_deadline(spec, config)
    expected = "rollback_completed" if config.failure_action == "rollback" else "paused"
    try:
        update_image(swarm_stack, service, broken)
        state = wait_update(service, deadline)
        assert state == expected, (
            f"{updated_service}: declared failure_action {config.failure_action}; an update to {broken} "
            f"(failing healthcheck) ended {state!r}, expected {expected!r} within {deadline:g} s"
        )
        if expected == "rollback_completed":
            images = sorted({t.image.split("@")[0] for t in service.running_tasks()})
            assert images == [original], f"{updated_service}: after rollback tasks run {images}"
    finally:
        restore(swarm_stack, service, original, deadline)


@pytest.mark.needs_routing_mesh
def test_the_published_port_keeps_answering_during_an_update(
    swarm: Cluster, swarm_stack: DeployedStack, published_updated_service: str, record_property: Any
) -> None:
    name = published_updated_service
    port = swarm_stack.published_port(name)
    if port is None:
        pytest.skip(f"{name} publishes no port")
    spec = swarm_stack.declared(name)
    config = declared.update_config(spec)
    service = swarm_stack.service(name)
    original = service.image
    target = variant_or_skip(swarm, service, "next")
    deadline = update_deadline(spec, config)
    answers: list[mesh.Answer] = []
    try:
        update_image(swarm_stack, service, target)
        end = time.monotonic() + deadline
        while service.reload().update_state not in DONE and time.monotonic() < end:
            for address in swarm.addresses.values():
                answers += mesh.probe(address, port, count=1, timeout=2)
        failures = [a for a in answers if a.status != 200]
        record_property("requests_during_update", len(answers))
        record_property("failed_requests_during_update", len(failures))
        print(f"{name} ({config.order}): {len(failures)} of {len(answers)} requests failed")
        if config.order == "start-first":
            assert not failures, f"{name}: start-first, yet {len(failures)} requests failed"
        assert service.update_state == "completed", f"{name}: update ended {service.update_state}"
    finally:
        restore(swarm_stack, service, original, deadline)
