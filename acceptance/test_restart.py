"""Restart policy: swarm restarts a failing task as declared, gives up after max_attempts, waits
``delay`` between attempts, and (on-failure) leaves a clean exit alone.

Killing the stack's own tasks over and over would use up their attempts, so each check deploys
a stack of its own: one task of the service's image and placement whose process exits after a
second, under exactly the restart policy the service declares.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from itertools import pairwise
from pathlib import Path
from typing import Any

import pytest
import yaml

from pytest_swarm import declared
from pytest_swarm.cluster import seconds
from pytest_swarm.stack import DeployedStack

LIFETIME = 1.0  # seconds each attempt runs before it exits
SETTLE = 4.0  # seconds past the policy's delay in which no further attempt may start


def crasher(tmp_path: Path, spec: dict[str, Any], exit_code: int) -> Path:
    """A compose file: the service's image and placement, its restart policy, a short-lived process."""
    deploy = declared.deploy_section(spec)
    service = {
        "image": spec["image"],
        "entrypoint": ["sh", "-c", f"sleep {LIFETIME:g}; exit {exit_code}"],
        "deploy": {
            "replicas": 1,
            "restart_policy": deploy["restart_policy"],
            "placement": deploy.get("placement", {}),
        },
    }
    path = tmp_path / "crasher.yml"
    path.write_text(yaml.safe_dump({"version": "3.8", "services": {"crasher": service}}))
    return path


class Attempts:
    """Every task of one service seen while polling: when it ran and how it ended (swarm's clock)."""

    def __init__(self, stack: DeployedStack) -> None:
        self.service = stack.service("crasher")
        self.started: dict[str, float] = {}
        self.ended: dict[str, tuple[float, str, int | None]] = {}

    def poll(self) -> None:
        for task in self.service.tasks():
            if task.state in ("starting", "running"):  # "starting": its healthcheck hasn't passed yet
                self.started.setdefault(task.id, seconds(task.timestamp))
            elif task.state in ("complete", "failed", "shutdown", "rejected"):
                self.ended.setdefault(task.id, (seconds(task.timestamp), task.state, task.exit_code))

    def watch(self, until_quiet_for: float, deadline: float) -> None:
        """Poll until no new attempt appeared for ``until_quiet_for`` s, or the deadline (bounded)."""
        quiet_since, seen = time.monotonic(), 0
        while time.monotonic() < deadline:
            self.poll()
            if len(self.started) != seen:
                quiet_since, seen = time.monotonic(), len(self.started)
            elif seen and time.monotonic() - quiet_since >= until_quiet_for and len(self.ended) >= seen:
                return
            time.sleep(0.2)
        raise AssertionError(f"attempts never settled: {len(self.started)} started, {len(self.ended)} ended")

    def in_order(self) -> list[str]:
        return sorted(self.started, key=self.started.__getitem__)


def policy_of(swarm_stack: DeployedStack, service: str) -> declared.RestartPolicy:
    policy = declared.restart_policy(swarm_stack.declared(service))
    assert policy is not None
    return policy


def test_failures_are_restarted_up_to_max_attempts_with_the_delay(
    swarm_stack: DeployedStack,
    deploy_stack: Callable[..., DeployedStack],
    tmp_path: Path,
    restarting_service: str,
    swarm_declared_wait: Callable[[float, str], None],
) -> None:
    policy = policy_of(swarm_stack, restarting_service)
    if policy.condition == "none":
        pytest.skip(f"{restarting_service} declares condition none: swarm never restarts it")
    if policy.max_attempts is None:
        pytest.skip(f"{restarting_service} declares no max_attempts: swarm restarts it forever")
    stack = deploy_stack(
        env_file=swarm_stack.source.env_file,
        compose_files=[crasher(tmp_path, swarm_stack.declared(restarting_service), exit_code=3)],
        name=f"R{restarting_service[:20]}",
        wait=False,
    )
    attempts = Attempts(stack)
    expected = 1 + policy.max_attempts
    swarm_declared_wait(
        policy.max_attempts * policy.delay, f"restart delay {policy.delay:g} s x {policy.max_attempts}"
    )
    budget = expected * (LIFETIME + policy.delay + 5) + 30
    attempts.watch(until_quiet_for=policy.delay + SETTLE, deadline=time.monotonic() + budget)

    order = attempts.in_order()
    assert len(order) == expected, (
        f"{restarting_service}: declared max_attempts {policy.max_attempts} -> {expected} runs expected, "
        f"swarm ran it {len(order)} times"
    )
    codes = {attempts.ended[t][2] for t in order}
    assert codes == {3}, f"{restarting_service}: every attempt should exit 3, saw exit codes {codes}"
    gaps = [attempts.started[b] - attempts.ended[a][0] for a, b in pairwise(order)]
    short = [round(g, 2) for g in gaps if g < policy.delay]
    assert not short, (
        f"{restarting_service}: declared delay {policy.delay:g} s between attempts; "
        f"gaps seen {[round(g, 2) for g in gaps]}"
    )


def test_a_clean_exit_is_not_restarted_on_failure(
    swarm_stack: DeployedStack,
    deploy_stack: Callable[..., DeployedStack],
    tmp_path: Path,
    restarting_service: str,
) -> None:
    policy = policy_of(swarm_stack, restarting_service)
    if policy.condition != "on-failure":
        pytest.skip(f"{restarting_service} declares condition {policy.condition}, not on-failure")
    stack = deploy_stack(
        env_file=swarm_stack.source.env_file,
        compose_files=[crasher(tmp_path, swarm_stack.declared(restarting_service), exit_code=0)],
        name=f"C{restarting_service[:20]}",
        wait=False,
    )
    attempts = Attempts(stack)
    attempts.watch(until_quiet_for=policy.delay + SETTLE, deadline=time.monotonic() + policy.delay + 60)
    outcomes = [attempts.ended[t][1:] for t in attempts.in_order()]
    assert outcomes == [("complete", 0)], (
        f"{restarting_service}: condition on-failure must not restart a clean exit; runs seen {outcomes}"
    )
