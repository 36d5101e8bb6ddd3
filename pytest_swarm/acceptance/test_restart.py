"""Restart policy: swarm restarts a failing task as declared, gives up after max_attempts, waits
``delay`` between attempts, and (on-failure) leaves a clean exit alone.

Killing the stack's own tasks over and over would use up their attempts, so each check deploys
a stack of its own: one task of the service's image and placement whose process exits at once,
under exactly the restart policy the service declares. Every check's stack is deployed and
watched at the same time (pytest_swarm.together), from the session's start when a test of this
module is selected (acceptance/conftest.py), and removed after this module. Each run's start
and end come from the ``start``/``die`` events of the engine it ran on, so no run is missed
however short it is.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from functools import partial
from itertools import pairwise
from pathlib import Path
from typing import Any

import docker
import pytest
import yaml

from pytest_swarm import (
    DeployedStack,
    Together,
    declared,
    early_work_so_far,
    lifecycle_of,
    remove_all,
    selected_params,
    show_on_failure,
    take_early,
)

RESTARTS = "test_failures_are_restarted_up_to_max_attempts_with_the_delay"
CLEAN = "test_a_clean_exit_is_not_restarted_on_failure"
MARGIN = 1.0  # seconds past delay + the slowest start seen, in which no further run may start
WINDOW_QUIET = 10.0  # the same, for a policy with a window (a restart can come after a slow start)
EXIT_CODES = {RESTARTS: 3, CLEAN: 0}


def crasher(path: Path, spec: dict[str, Any], exit_code: int) -> Path:
    """A compose file: the service's image and placement, its restart policy, a process that
    exits at once with ``exit_code``. On the host network: a restart policy doesn't depend on
    networks, and joining an overlay network costs every start about 0.3 s (measured on dind)."""
    deploy = declared.deploy_section(spec)
    service = {
        "image": spec["image"],
        "entrypoint": ["sh", "-c", f"exit {exit_code}"],
        "deploy": {
            "replicas": 1,
            "restart_policy": deploy["restart_policy"],
            "placement": deploy.get("placement", {}),
        },
    }
    service["networks"] = ["hostnet"]
    nets = {"hostnet": {"external": True, "name": "host"}}
    path.write_text(yaml.safe_dump({"version": "3.8", "services": {"crasher": service}, "networks": nets}))
    return path


@dataclass(frozen=True)
class Run:
    node: str
    started: float  # the engine's clock, seconds
    ended: float
    exit_code: int


@dataclass
class Watched:
    """Every run of one crasher stack, and the waits its policy declares."""

    stack: DeployedStack
    runs: list[Run]
    waits: list[tuple[float, str]]
    seconds: float  # from its deploy to the end of its watch
    stopped: bool  # no run came after the last within its delay (else the watch ran out)


class RunLog:
    """The runs of one service's containers, from the ``start``/``die`` events of every engine.

    An engine replays only its last 256 events to a ``since`` query, and the healthchecks of a
    busy node (three execs per check) push older ones out within seconds; so each look asks
    only for the events since the previous one (with a second's overlap, deduplicated) and the
    log keeps them."""

    def __init__(self, engines: dict[str, docker.DockerClient], service: str) -> None:
        self.engines = engines
        self.service = service
        self.since = time.time() - 1
        self._seen: set[tuple[str, str, int]] = set()
        self._started: dict[str, tuple[str, float]] = {}
        self.runs: list[Run] = []

    def look(self) -> list[Run]:
        """Read the new events; every finished run so far, in order of start."""
        until = time.time()
        for node, engine in list(self.engines.items()):  # a node may join or leave meanwhile
            events = engine.api.events(
                since=self.since - 1,
                until=until,
                filters={
                    "type": "container",
                    "event": ["start", "die"],
                    "label": f"com.docker.swarm.service.name={self.service}",
                },
                decode=True,
            )
            for event in events:
                key = (event["id"], event["Action"], event["timeNano"])
                if key in self._seen:
                    continue
                self._seen.add(key)
                at = event["timeNano"] / 1e9
                if event["Action"] == "start":
                    self._started[event["id"]] = (node, at)
                elif event["id"] in self._started:
                    where, started = self._started.pop(event["id"])
                    code = int(event["Actor"]["Attributes"].get("exitCode", -1))
                    self.runs.append(Run(where, started, at, code))
        self.since = until
        self.runs.sort(key=lambda r: r.started)
        return list(self.runs)


class Crashers:
    """One crasher stack per (check, service), deployed and watched at the same time."""

    def __init__(
        self,
        request: pytest.FixtureRequest,
        main: DeployedStack,
        folder: Path,
        after: Callable[[], None] = lambda: None,
    ) -> None:
        """``after``: what to wait for before deploying (work whose load would slow the restarts)."""
        self._after = after
        self.lifecycle = lifecycle_of(request.config)
        self.swarm = main.cluster
        self.main = main
        self.folder = folder
        self.made: list[DeployedStack] = []
        wanted = selected_params(request, ("restarting_service",), module=sys.modules[__name__])
        self.together: Together[tuple[str, str], Watched] = Together(
            {
                (test, str(service)): partial(self.watch, test, str(service))
                for test, services in wanted.items()
                for service in services
            },
            name="restart",
            start=False,
        )
        self.together.start()  # the operations use self.together

    def watch(self, test: str, service: str) -> Watched:
        policy = declared.restart_policy(self.main.declared(service))
        assert policy is not None
        skip_unless_checkable(test, service, policy)
        unreached = [n for n in self.swarm.addresses if n not in self.swarm.engines]
        if unreached:
            pytest.skip(f"runs are read from each node's engine events; no engine reached on {unreached}")
        self._after()
        started = time.monotonic()
        name = f"{'R' if test == RESTARTS else 'C'}{service[:20]}"
        compose = crasher(self.folder / f"{name}.yml", self.main.declared(service), EXIT_CODES[test])
        main = self.main.source
        source = replace(main, compose_files=(compose,), stack_name=name)
        log = RunLog(self.swarm.engines, f"{name}_crasher")  # from before its first run
        stack = self.lifecycle.deploy(source, on_deployed=self.made.append, wait=False)
        expected = 1 + (policy.max_attempts or 0) if test == RESTARTS else 1
        budget = expected * (policy.delay + 10) + 30
        if test == RESTARTS and policy.window > 0:  # it may restart forever: enough to judge windows
            budget = min(budget, 2 * policy.window + 10 * (policy.delay + 1) + 10)
        # The policy's budget counts from the first run; the deploy and the first start before it
        # get what a stack gets to converge (on slow nodes, UML, several times dind's).
        first_by = time.monotonic() + self.lifecycle.settings.timeout
        deadline: float | None = None
        runs: list[Run] = []
        stopped = False
        while not stopped:
            self.together.sleep(0.2)
            runs = log.look()
            now = time.monotonic()
            if deadline is None and runs:
                deadline = now + budget
            # Stopped: no further run within the delay and the slowest start seen, plus a margin.
            slowest = max([0.0, *(b.started - a.ended - policy.delay for a, b in pairwise(runs))])
            # with a window it may stop at any run: only a long silence says it did
            quiet = policy.delay + slowest + (MARGIN if policy.window <= 0 else WINDOW_QUIET)
            enough = len(runs) >= expected or policy.window > 0
            stopped = bool(runs) and enough and time.time() > runs[-1].ended + quiet
            if deadline is not None and len(runs) == expected and policy.window <= 0:
                # all that is left to see is the silence after the last run: it gets its length
                deadline = max(deadline, now + runs[-1].ended + quiet - time.time() + MARGIN)
            if not stopped and now > (first_by if deadline is None else deadline):
                break
        runs = log.look()
        why = f"restart delay {policy.delay:g} s x {len(runs)} (no run after the last)"
        waits = [(policy.delay * max(len(runs), 1), why)]
        if test == CLEAN:
            waits = [(policy.delay, f"restart delay {policy.delay:g} s (no run after a clean exit)")]
        return Watched(stack, runs, waits, time.monotonic() - started, stopped)

    def wait(self) -> None:
        """Until every check's runs are over (its stack stays until close)."""
        self.together.close()

    def close(self) -> None:
        self.together.close()
        remove_all(self.made)


def skip_unless_checkable(test: str, service: str, policy: declared.RestartPolicy) -> None:
    if test == RESTARTS and policy.condition == "none":
        pytest.skip(f"{service} declares condition none: swarm never restarts it")
    if test == RESTARTS and policy.max_attempts is None:
        pytest.skip(f"{service} declares no max_attempts: swarm restarts it forever")
    if test == CLEAN and policy.condition != "on-failure":
        pytest.skip(f"{service} declares condition {policy.condition}, not on-failure")


# Started early after the other suites' early work: beside three stack deploys (the side-by-side
# envs) each restart cost swarm up to 2 s more; their stacks deploy once those have converged.
START_EARLY_ORDER = 1


def start_early(request: pytest.FixtureRequest, main: DeployedStack, folder: Path) -> Crashers:
    """Deploy and watch every selected check's stack (acceptance/conftest.py calls this at the
    session's start when a test of this module is selected), once the work started before it
    is done."""
    return Crashers(request, main, folder, after=early_work_so_far(request.config))


@pytest.fixture(scope="module")
def crashers(
    request: pytest.FixtureRequest, swarm_stack: DeployedStack, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Crashers]:
    running = take_early(request) or start_early(request, swarm_stack, tmp_path_factory.mktemp("crashers"))
    try:
        yield running
    finally:
        running.close()


def watched(
    crashers: Crashers,
    request: pytest.FixtureRequest,
    service: str,
    declared_wait: Callable[[float, str], None],
    took: Callable[[float, str], None],
) -> Watched:
    outcome = crashers.together.outcome((request.node.originalname, service), timeout=1800)
    if outcome.value is not None:
        show_on_failure(request.node, outcome.value.stack)
        took(outcome.value.seconds, "its stack deployed and watched, beside the other checks' stacks")
        for wait in outcome.value.waits:
            declared_wait(*wait)
    return outcome.get()


def test_failures_are_restarted_up_to_max_attempts_with_the_delay(
    crashers: Crashers,
    request: pytest.FixtureRequest,
    restarting_service: str,
    swarm_declared_wait: Callable[[float, str], None],
    swarm_took: Callable[[float, str], None],
) -> None:
    seen = watched(crashers, request, restarting_service, swarm_declared_wait, swarm_took)
    policy = declared.restart_policy(crashers.main.declared(restarting_service))
    assert policy is not None and policy.max_attempts is not None
    codes = {r.exit_code for r in seen.runs}
    assert codes == {3}, f"{restarting_service}: every attempt should exit 3, saw exit codes {codes}"
    problems = declared.restart_problems(policy, [(r.started, r.ended) for r in seen.runs], seen.stopped)
    if not seen.stopped and policy.window <= 0:
        problems.append(f"still restarting after {len(seen.runs)} runs when the watch ended")
    shown = f"max_attempts {policy.max_attempts}, delay {policy.delay:g} s, window {policy.window:g} s"
    assert not problems, f"{restarting_service}: declared {shown}: " + "; ".join(problems)


def test_a_clean_exit_is_not_restarted_on_failure(
    crashers: Crashers,
    request: pytest.FixtureRequest,
    restarting_service: str,
    swarm_declared_wait: Callable[[float, str], None],
    swarm_took: Callable[[float, str], None],
) -> None:
    seen = watched(crashers, request, restarting_service, swarm_declared_wait, swarm_took)
    outcomes = [r.exit_code for r in seen.runs]
    assert outcomes == [0], (
        f"{restarting_service}: condition on-failure must not restart a clean exit; "
        f"exit codes of its runs {outcomes}"
    )
