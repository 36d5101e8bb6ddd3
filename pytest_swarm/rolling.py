"""What a declared update_config implies, and what an update does to a service's tasks.

The rolling-update suite (acceptance/test_updates.py) holds an update to these: the batches
``parallelism`` makes, the deadline its declared values give (each batch's start, first
healthcheck and delay, then the monitor), the waits it spends by declaration, and a log of each
task's start and end while it runs. A team's own update check can use the same.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml

from . import declared, externals
from .cluster import Service, Task, seconds

START_ALLOWANCE = 20.0  # seconds a new task gets to start, beyond its first healthcheck
ENDED = ("shutdown", "failed", "complete", "rejected", "orphaned", "remove")  # a task's last states
Wait = tuple[float, str]  # seconds, and why they are spent by declaration


def batch_count(tasks: int, config: declared.UpdateConfig) -> int:
    """Batches an update of ``tasks`` tasks takes (a global service: one task per node)."""
    return math.ceil(max(tasks, 1) / config.parallelism) if config.parallelism > 0 else 1


def update_deadline(tasks: int, config: declared.UpdateConfig, health: declared.Healthcheck | None) -> float:
    """How long the declared update may take: every batch's start, delay and monitor, with margin."""
    first_check = health.interval if health else 0.0
    unhealthy = health.seconds_to_unhealthy() if health else 0.0
    per_batch = START_ALLOWANCE + first_check + config.delay
    return batch_count(tasks, config) * per_batch + max(config.monitor, unhealthy) + 60


def declared_update_waits(
    tasks: int, config: declared.UpdateConfig, health: declared.Healthcheck | None
) -> list[Wait]:
    """The waits a rolling update (and its restore) spends by declaration: the delay between
    batches, the monitor after the last, and each batch's first healthcheck (restore: one batch)."""
    count = batch_count(tasks, config)
    waits = [(config.delay * (count - 1), f"update delay {config.delay:g} s x {count - 1}")]
    waits.append((config.monitor, f"monitor {config.monitor:g} s"))
    if health:
        checks = count + 1  # the restore replaces every task in one batch
        waits.append((health.interval * checks, f"first healthcheck {health.interval:g} s x {checks}"))
    return waits


def failure_waits(
    config: declared.UpdateConfig,
    failing: declared.Healthcheck | None,
    health: declared.Healthcheck | None,
    rollback: declared.UpdateConfig | None = None,
) -> list[Wait]:
    """A failing version is found out when its (``failing``) healthcheck gives up; a rollback then
    runs under rollback_config, whose monitor it waits out; the restored tasks wait their first
    check (``health``: the service's own)."""
    if failing is None:
        return []
    rollback = rollback or config
    waits = [(failing.seconds_to_unhealthy(), "healthcheck: start period, then retries x interval")]
    if config.failure_action == "rollback":
        waits.append((rollback.monitor, f"rollback monitor {rollback.monitor:g} s"))
        if config.order == "stop-first" and health is not None:
            waits.append((health.interval, f"first healthcheck {health.interval:g} s of the restored task"))
    return waits


def copies_of(path: Path, specs: dict[str, dict[str, Any]], model: dict[str, Any]) -> Path:
    """A compose file of copies: each spec without its published ports, networks (the copies get
    their stack's default network) and named volumes (they would share the data); its bind
    mounts, secrets and configs (declared here as the stack declares them), deploy section and
    healthcheck as declared."""
    services = {}
    for name, spec in specs.items():
        copy_ = {k: v for k, v in spec.items() if k not in ("ports", "networks", "volumes")}
        binds = [v for v in spec.get("volumes") or [] if isinstance(v, dict) and v.get("type") == "bind"]
        services[name] = {**copy_, **({"volumes": binds} if binds else {})}
    document: dict[str, Any] = {"version": model.get("version", "3.8"), "services": services}
    for kind in externals.KINDS:
        used = set().union(*(externals.used(spec, kind) for spec in services.values()))
        if used:
            document[kind] = {n: d for n, d in (model.get(kind) or {}).items() if n in used}
    path.write_text(yaml.safe_dump(document))
    return path


class TaskLog:
    """Each task's running time and end time, by place (its slot; a global task's node), on
    swarm's clock, while an update runs."""

    def __init__(self, service: Service) -> None:
        self.service = service
        self.running: dict[str, tuple[float, str, str]] = {}
        self.ended: dict[str, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        while not self._stop.wait(0.2):
            for task in self.service.tasks():
                if task.state == "running":
                    self.running.setdefault(task.id, (seconds(task.timestamp), place(task), task.image))
                elif task.state in ENDED and task.id in self.running:
                    self.ended.setdefault(task.id, seconds(task.timestamp))

    @contextmanager
    def recording(self) -> Iterator[TaskLog]:
        for task in self.service.running_tasks():
            self.running[task.id] = (0.0, place(task), task.image)  # before the update: start unknown
        self._thread.start()
        try:
            yield self
        finally:
            self._stop.set()
            self._thread.join(timeout=10)


def place(task: Task) -> str:
    """Where a task runs for its service: its slot (replicated) or its node (global)."""
    return f"slot {task.slot}" if task.slot else f"node {task.node_id[:12]}"
