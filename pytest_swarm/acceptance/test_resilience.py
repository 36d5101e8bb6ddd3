"""Resilience: what swarm promises when nodes fail, checked on a cluster of its own (no other
suite sees a node die) with the --swarm-env stack deployed on it.

The scenarios run one after the other, in this order, each leaving the cluster whole (every
node Ready/Active, the stack converged) for the next:

1. a worker is killed (not drained, not left): the manager marks it Down; every replicated
   service is back to its declared count on the survivors; its constraints still hold (a
   service that only the lost node could run stays pending, and the report says so); where
   the nodes have IPVS, the published ports answer on every survivor throughout;
2. the worker comes back: Ready again, its global tasks return, no replica moves back to it;
3. a worker is drained: it runs no task, the replicated counts hold; set active again, its
   global tasks return;
4. a worker is cut off from the others' swarm traffic inside its own network namespace: it
   goes Down and its tasks are replaced; healed, it rejoins and stops the tasks swarm replaced;
5. with 3 managers or more (--swarm-managers 3): the leader is killed, another is elected and
   the stack keeps running; then a majority of managers is lost: the managers refuse changes
   with a clear error while the running tasks keep running; then quorum is back.

Every wait's deadline comes from the swarm's own timers (its spec) and the services' declared
values (pytest_swarm.resilience); each figure and its deadline go to the report's Resilience
table and the test's JUnit properties. A failed check shows the node states over time and the
tasks' moves from swarm's task history. The scenarios run in a thread started as soon as the
run's stack is up (beside the other suites), and the tests of this module run last.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import docker
import pytest
import requests

from pytest_swarm import (
    STACK_LABEL,
    Cluster,
    ConvergenceTimeout,
    DeployedStack,
    Node,
    Poll,
    Service,
    SwarmError,
    Together,
    declared,
    disruption,
    eligible,
    judged_on,
    lifecycle_of,
    mesh,
    resilience,
    show_on_failure,
    show_text_on_failure,
    take_early,
    wait_for,
)

pytestmark = pytest.mark.disruptive
# acceptance/conftest.py: its work is on a cluster of its own, so it starts early beside the
# other suites (not alone: there is nothing to overlap), nothing waits for it, and it runs last.
OWN_CLUSTER = True
PURPOSE = "resilience"

WORKER = "worker"  # the steps, in the order they run
DRAIN = "drain"
PARTITION = "partition"
MANAGERS = "managers"
STEPS = (WORKER, DRAIN, PARTITION, MANAGERS)
# what each test checks: (step, the scenario of that step)
LOST = "test_a_killed_worker_goes_down_and_its_replicas_return_on_the_survivors"
MESH = "test_the_published_ports_answer_on_every_survivor_while_a_worker_is_lost"
BACK = "test_a_worker_back_gets_its_global_tasks_and_no_replica_moves_back"
DRAINED = "test_a_drained_worker_runs_no_task_and_the_replicas_hold"
CUT = "test_a_cut_off_worker_goes_down_is_replaced_and_rejoins_when_healed"
LEADER = "test_a_lost_leader_is_replaced_and_the_stack_keeps_running"
QUORUM = "test_without_quorum_changes_are_refused_and_tasks_keep_running"
CHECKS = {
    LOST: (WORKER, "worker lost"),
    MESH: (WORKER, "worker lost"),
    BACK: (WORKER, "node back"),
    DRAINED: (DRAIN, "drain"),
    CUT: (PARTITION, "partition"),
    LEADER: (MANAGERS, "leader lost"),
    QUORUM: (MANAGERS, "quorum lost"),
}
SCENARIOS = {scenario: step for step, scenario in CHECKS.values()}
# What a manager, a node or a socket throws while the node behind it is down or restarting.
TRANSIENT = (SwarmError, docker.errors.DockerException, requests.exceptions.RequestException, OSError)
POLL = 0.25  # seconds between two looks while a figure is measured
PROBE_TIMEOUT = 2.0  # one request through a published port


@dataclass
class Seen:
    """What one scenario showed: its figures, the promises it saw broken, notes for the report
    and the evidence (node states over time, the tasks' moves)."""

    scenario: str
    timeline: resilience.Timeline
    origin: float  # POSIX time the scenario began: the tasks' moves are shown from there
    figures: list[resilience.Figure] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    moves: list[str] = field(default_factory=list)
    # "survivor:port" -> (seconds from the start, answered) of each request while a worker was lost
    answers: dict[str, list[tuple[float, bool]]] | None = None
    end: float = 0.0  # seconds from the scenario's start when the answers were last looked at


class Unwhole(SwarmError):
    """The cluster did not get whole again after a scenario: the next ones can't run."""


class Disruptions:
    """The selected scenarios, run in order in a thread on a cluster of their own; each test
    waits for the scenario it checks."""

    def __init__(self, request: pytest.FixtureRequest, folder: Path) -> None:
        self.lifecycle = lifecycle_of(request.config)
        self.settings = self.lifecycle.settings
        self.folder = folder
        wanted = {
            item.originalname
            for item in request.session.items
            if isinstance(item, pytest.Function)
            and item.module is not None
            and item.module.__name__ == __name__
        }
        self.steps = [step for step in STEPS if any(CHECKS[t][0] == step for t in wanted if t in CHECKS)]
        self.seen: dict[str, Future[Seen]] = {scenario: Future() for scenario in SCENARIOS}
        self.up: Future[Cluster] = Future()
        self.status = "the cluster of its own coming up"  # what the scenarios did last
        self.own = disruption.IsolatedCluster(self.lifecycle, PURPOSE, sleep=lambda s: self.together.sleep(s))
        self.together: Together[str, None] = Together({"run": self.run}, name=PURPOSE, start=False)
        self.together.start()

    # -- the handle acceptance/conftest.py keeps -------------------------------------------------
    def wait(self) -> None:
        """Nothing of this module is under way on the run's own cluster: it waits for nothing."""

    def close(self) -> None:
        """Stop the scenarios at their next wait, then remove the cluster of their own."""
        self.together.interrupt()
        try:
            self.together.close()
        finally:
            self.own.close()

    # -- what the tests ask -----------------------------------------------------------------------
    def cluster(self) -> Cluster:
        """The cluster of their own, once up (its start waits for engines and the stack, each
        within --swarm-timeout)."""
        self._wait(self.up, "the cluster of its own up", 3 * self.settings.timeout)
        return self.up.result(timeout=0)

    def outcome(self, scenario: str) -> Seen:
        """What ``scenario`` showed. Each wait of a step is bounded by its own deadline (at most
        twice it), and getting whole again by --swarm-timeout: this bound only catches a step
        stuck in a call."""
        budget = 3 * self.settings.timeout * (len(self.steps) + 1)
        self._wait(self.seen[scenario], f"the {scenario} scenario", budget)
        return self.seen[scenario].result(timeout=0)

    def _wait(self, future: Future[Any], what: str, timeout: float) -> None:
        wait_for(lambda: Poll(future.done(), self.status), what=what, timeout=timeout, interval=0.5)

    # -- the run --------------------------------------------------------------------------------
    def sleep(self, seconds: float) -> None:
        self.together.sleep(seconds)

    def run(self) -> None:
        try:
            self.own.start()
            self.up.set_result(self.own.cluster)
        except BaseException as exc:
            self.up.set_exception(exc)
            self._give_up(exc)
            return
        self.provider = self.own.provider
        self.swarm = self.own.cluster
        self.stack = self.own.stack
        self.managers = disruption.Managers(self.swarm)
        self.timers = resilience.SwarmTimers.of_swarm(self.managers.client().api.inspect_swarm())
        self.health = {name: self._health(name) for name in self.stack.declared_services}
        self._note_restart_limits()
        steps: dict[str, Callable[[], None]] = {
            WORKER: self.worker_lost_and_back,
            DRAIN: self.drain,
            PARTITION: self.partition,
            MANAGERS: self.managers_lost,
        }
        try:
            for step in self.steps:
                steps[step]()
                self.whole_again(step)
        except BaseException as exc:
            self._give_up(exc)
        finally:
            self.managers.close()

    def _give_up(self, exc: BaseException) -> None:
        """Every scenario not seen yet ends with ``exc`` (the run stopping, or the cluster not
        whole again after an earlier scenario)."""
        for future in self.seen.values():
            if not future.done():
                future.set_exception(exc)

    def _done(self, seen: Seen) -> None:
        seen.moves = disruption.task_history(self.managers, self.stack.name, seen.origin)
        self.seen[seen.scenario].set_result(seen)

    @contextmanager
    def scenario(self, name: str) -> Iterator[Seen]:
        """What a scenario shows, handed to its test when it ends, also when it ends early (an
        error, the run stopping): the test then fails with it, and its evidence."""
        self.status = f"{name}: begun"
        seen = Seen(name, resilience.Timeline(time.monotonic()), time.time())
        try:
            yield seen
        except Exception as exc:
            seen.problems.append(f"{name} ended early: {type(exc).__name__}: {exc}")
            self._done(seen)
            raise
        self._done(seen)

    def happened(self, seen: Seen, what: str) -> None:
        """A step of the scenario itself: on its timeline and in the run's progress lines."""
        seen.timeline.mark(time.monotonic(), what)
        self.status = f"{seen.scenario}: {what}"
        self.lifecycle.progress(f"{PURPOSE}: {self.status}")

    def _recorder(self, seen: Seen, limit: float) -> disruption.Recorder:
        return disruption.Recorder(self.managers, self.stack.name, seen.timeline, limit=limit, interval=0.5)

    # -- looks at the cluster --------------------------------------------------------------------
    def _health(self, name: str) -> declared.Healthcheck | None:
        image = str(self.stack.declared(name).get("image", ""))
        try:
            config = self.swarm.client.images.get(image).attrs.get("Config") or {}
        except docker.errors.DockerException:
            config = {}
        return declared.healthcheck(self.stack.declared(name), config)

    def _note_restart_limits(self) -> None:
        for name in self.stack.declared_services:
            policy = declared.restart_policy(self.stack.declared(name))
            if policy is not None and policy.max_attempts and policy.window <= 0:
                self.lifecycle.note(
                    f"{PURPOSE}: {name} declares restart_policy max_attempts {policy.max_attempts} with no "
                    "window: swarm counts every replacement of a task, a lost or drained node's "
                    f"included, and after {policy.max_attempts} leaves that replica unstarted for good "
                    "(declare a window to count only recent failures)"
                )

    def nodes(self) -> dict[str, Node]:
        return {n.name: n for n in self.managers.nodes()}

    def services(self) -> dict[str, Service]:
        client = self.managers.client()
        raw = client.api.services(filters={"label": f"{STACK_LABEL}={self.stack.name}"}, status=True)
        return {self._short(s["Spec"]["Name"]): Service(s, client) for s in raw}

    def _short(self, full: str) -> str:
        return full.removeprefix(f"{self.stack.name}_")

    def replicated(self) -> list[str]:
        return [
            n for n in self.stack.declared_services if declared.replicas(self.stack.declared(n)) is not None
        ]

    def globals(self) -> list[str]:
        return [n for n in self.stack.declared_services if declared.replicas(self.stack.declared(n)) is None]

    def tasks_on(self, node: str, replicated_only: bool = False) -> Counter[str]:
        """Running tasks per service on ``node``."""
        node_id = self.nodes()[node].id
        wanted = self.replicated() if replicated_only else self.stack.declared_services
        found: Counter[str] = Counter()
        for name, service in self.services().items():
            if name in wanted:
                found[name] = sum(1 for t in service.running_tasks() if t.node_id == node_id)
        return found

    def busiest_worker(self, replicated_only: bool) -> str:
        """The Ready worker running the most tasks (of replicated services only, if asked)."""
        workers = [n.name for n in self.nodes().values() if n.role == "worker" and n.ready]
        if not workers:
            raise SwarmError(f"{PURPOSE}: no Ready worker to disrupt")
        return max(sorted(workers), key=lambda w: sum(self.tasks_on(w, replicated_only).values()))

    def whole(self, without: set[str]) -> tuple[bool, str, list[str]]:
        """Whether every replicated service runs its declared count on the Ready nodes outside
        ``without`` (names), what was seen, and the services none of them may run (pinned)."""
        nodes = self.nodes()
        gone = {nodes[n].id for n in without if n in nodes}
        ready = {n.id: n for n in nodes.values() if n.ready and n.name not in without}
        facts = [n.facts() for n in ready.values()]
        short, pinned = [], []
        for name, service in self.services().items():
            want = (
                declared.replicas(self.stack.declared(name)) if name in self.stack.declared_services else None
            )
            if want is None:
                continue
            if not eligible(facts, service.constraints):
                pinned.append(name)
                continue
            running = [t for t in service.running_tasks() if t.node_id in ready and t.node_id not in gone]
            if len(running) != want:
                short.append(f"{name} {len(running)}/{want}")
        return not short, "; ".join(short) or "every replicated service at its count", pinned

    def misplaced(self) -> list[str]:
        """Running tasks on a node their service's constraints exclude."""
        nodes = {n.id: n for n in self.nodes().values()}
        wrong = []
        for name, service in self.services().items():
            for task in service.running_tasks():
                node = nodes.get(task.node_id)
                if node is not None and not eligible([node.facts()], service.constraints):
                    wrong.append(f"{name} task {task.id[:12]} runs on {node.name}: {service.constraints}")
        return wrong

    def measure(
        self,
        seen: Seen,
        what: str,
        probe: Callable[[], Poll[Any]],
        deadline: resilience.Deadline,
        since: float,
    ) -> float | None:
        """Wait for ``probe`` (up to twice its deadline), then hold the time since ``since``
        (monotonic) to ``deadline``: a figure, and a problem when it is past it or never came."""
        limit = 2 * deadline.seconds
        try:
            wait_for(
                probe,
                what=f"{seen.scenario}: {what}",
                timeout=round(max(0.0, since + limit - time.monotonic()), 1),
                interval=POLL,
                transient=TRANSIENT,
                sleep=self.sleep,
            )
        except ConvergenceTimeout as exc:
            seen.problems.append(f"{exc} (its deadline {deadline.seconds:.1f} s: {deadline.basis})")
            seen.figures.append(
                resilience.Figure(seen.scenario, what, limit, deadline=deadline, note="(not reached)")
            )
            return None
        took = time.monotonic() - since
        figure = resilience.Figure(seen.scenario, what, took, deadline=deadline)
        seen.figures.append(figure)
        if not figure.held:
            seen.problems.append(figure.describe())
        return took

    def watch(self, what: str, wrong: Callable[[], str], window: resilience.Deadline) -> str:
        """Look every POLL seconds, for ``window``, whether something swarm should not do
        happened (``wrong()`` says what, "" while nothing did); the first thing seen, or ""."""
        end = time.monotonic() + window.seconds
        while time.monotonic() < end:
            try:
                seen = wrong()
            except TRANSIENT:
                seen = ""  # a look that failed saw nothing; the next one may
            if seen:
                return f"{what}: {seen}"
            self.sleep(min(POLL, max(0.0, end - time.monotonic())))
        return ""

    def restore(self, action: Callable[[], object]) -> None:
        """Put back what a scenario changed, unless the run is ending (the cluster goes anyway)."""
        if not self.together.interrupted:
            action()

    def node_is(self, name: str, want: Callable[[Node], bool]) -> Callable[[], Poll[None]]:
        def probe() -> Poll[None]:
            node = self.nodes().get(name)
            state = resilience.node_state(node.attrs) if node else "absent"
            return Poll(node is not None and want(node), f"{name} {state}")

        return probe

    def whole_without(self, names: set[str]) -> Callable[[], Poll[None]]:
        def probe() -> Poll[None]:
            done, state, _ = self.whole(names)
            return Poll(done, state)

        return probe

    def restored(self, hit: Counter[str], drained: bool = False) -> tuple[str, resilience.Deadline]:
        """The longest replacement of the services that had tasks where the disruption hit."""
        return resilience.longest(
            (name, resilience.replacement(self.stack.declared(name), self.health[name], drained))
            for name, count in hit.items()
            if count and name in self.replicated()
        )

    def globals_on(self, node: str) -> Callable[[], Poll[None]]:
        """Every global service that may run on ``node`` runs a task there."""

        def probe() -> Poll[None]:
            target = self.nodes()[node]
            services = self.services()
            missing = [
                name
                for name in self.globals()
                if eligible([target.facts()], services[name].constraints)
                and not any(t.node_id == target.id for t in services[name].running_tasks())
            ]
            return Poll(not missing, f"no task on {node} yet: {missing}" if missing else "all there")

        return probe

    def global_deadline(self, node: str) -> resilience.Deadline:
        target = self.nodes()[node]
        services = self.services()
        return resilience.longest(
            (name, resilience.replacement(self.stack.declared(name), self.health[name]))
            for name in self.globals()
            if eligible([target.facts()], services[name].constraints)
        )[1]

    def whole_again(self, after: str) -> None:
        """Every node Ready/Active and the stack converged, before the next scenario."""
        try:
            wait_for(
                lambda: Poll(
                    all(n.ready for n in self.nodes().values()),
                    ", ".join(f"{n.name} {resilience.node_state(n.attrs)}" for n in self.nodes().values()),
                ),
                what=f"every node Ready/Active after {after}",
                timeout=self.settings.timeout,
                interval=0.5,
                transient=TRANSIENT,
                sleep=self.sleep,
            )
            self.stack.converge(self.settings.timeout, sleep=self.sleep)
        except ConvergenceTimeout as exc:
            raise Unwhole(
                f"not run: the {PURPOSE} cluster did not get whole again after {after}: {exc}"
            ) from exc

    # -- 1 and 2: a worker killed, then back --------------------------------------------------------
    def worker_lost_and_back(self) -> None:
        with self.scenario("worker lost") as lost:
            victim = self.busiest_worker(replicated_only=True)
            hit = self.tasks_on(victim, replicated_only=True)
            survivors = {n: a for n, a in self.swarm.addresses.items() if n != victim}
            down, (_, replacement) = self.timers.node_down(), self.restored(hit)
            prober = Prober(self, survivors, lost) if not self.swarm.missing_capability("ipvs") else None
            with self._recorder(lost, limit=4 * (down.seconds + replacement.seconds)).recording():
                started = time.monotonic()
                if prober is not None:
                    prober.start()
                try:
                    self.provider.stop_node(victim)
                    self.happened(lost, f"{victim} killed (its replicated tasks: {_counts(hit)})")
                    to_down = self.node_is(victim, lambda n: n.state == "down")
                    if self.measure(lost, "to Down", to_down, down, started) is not None:
                        self.measure(
                            lost,
                            "to replicas restored",
                            self.whole_without({victim}),
                            down + replacement,
                            started,
                        )
                    lost.problems += [f"after {victim} was lost: {m}" for m in self.misplaced()]
                    _, _, pinned = self.whole({victim})
                    for name in pinned:
                        lost.notes.append(
                            f"{PURPOSE}: {name} can run only on {victim} "
                            f"({self.services()[name].constraints}): pending while {victim} was down, "
                            "as swarm promises"
                        )
                finally:
                    if prober is not None:
                        prober.stop()
        self.node_back(victim)

    def node_back(self, victim: str) -> None:
        with self.scenario("node back") as back:
            before = {name: {t.id for t in s.running_tasks()} for name, s in self.services().items()}
            replicated = self.replicated()
            settle = resilience.Deadline(self.timers.heartbeat + resilience.HEARTBEAT_JITTER, "one heartbeat")
            found: set[str] = set()

            def new_replicas() -> str:
                for name, service in self.services().items():
                    if name in replicated:
                        found.update(
                            f"{name} {t.id[:12]}" for t in service.running_tasks() if t.id not in before[name]
                        )
                return ", ".join(sorted(found))

            with self._recorder(back, limit=self.settings.timeout + 60).recording():
                started = time.monotonic()
                self.provider.start_node(victim)
                self.happened(back, f"{victim} started again")
                node_start = resilience.Deadline(
                    self.settings.timeout, f"--swarm-timeout {self.settings.timeout:g} s"
                )
                ready = self.measure(
                    back, "to Ready", self.node_is(victim, lambda n: n.ready), node_start, started
                )
                if ready is not None:
                    self.measure(
                        back,
                        "to global tasks back",
                        self.globals_on(victim),
                        self.global_deadline(victim),
                        started,
                    )
                    # a move back would show at once: a Ready node is handed its tasks as its session starts
                    moved = self.watch(
                        f"replicas started anew after {victim} came back", new_replicas, settle
                    )
                    back.figures.append(
                        resilience.Figure("node back", "replicas moved back", len(found), "tasks")
                    )
                    if moved:
                        back.problems.append(moved)

    # -- 3: drain and active ---------------------------------------------------------------------------
    def set_availability(self, node: str, availability: str) -> None:
        client = self.managers.client()
        raw = client.api.inspect_node(node)
        client.api.update_node(
            raw["ID"], raw["Version"]["Index"], {**raw["Spec"], "Availability": availability}
        )

    def drain(self) -> None:
        with self.scenario("drain") as seen:
            target = self.busiest_worker(replicated_only=False)
            hit = self.tasks_on(target)
            _, replacement = self.restored(hit, drained=True)
            stops = resilience.longest(
                (
                    name,
                    resilience.Deadline(
                        declared.stop_grace_period(self.stack.declared(name)), "stop_grace_period"
                    ),
                )
                for name, count in hit.items()
                if count
            )[1]
            empty_deadline = stops + resilience.Deadline(resilience.SLACK, f"{resilience.SLACK:g} s")
            with self._recorder(seen, limit=4 * replacement.seconds + self.settings.timeout).recording():
                started = time.monotonic()
                self.set_availability(target, "drain")
                self.happened(seen, f"{target} drained (its tasks: {_counts(hit)})")
                try:
                    self.measure(
                        seen, "to no task on the node", self._no_task_on(target), empty_deadline, started
                    )
                    self.measure(
                        seen, "to replicas restored", self.whole_without({target}), replacement, started
                    )
                finally:
                    self.restore(partial(self.set_availability, target, "active"))
                    self.happened(seen, f"{target} active again")
                back = time.monotonic()
                self.measure(
                    seen,
                    "active: global tasks back",
                    self.globals_on(target),
                    self.global_deadline(target),
                    back,
                )
                done, state, _ = self.whole(set())
                if not done:
                    seen.problems.append(f"after {target} was active again: {state}")

    def _no_task_on(self, node: str) -> Callable[[], Poll[None]]:
        """No task runs on ``node``, as its agent reports (swarm wanting it stopped is not enough)."""

        def probe() -> Poll[None]:
            node_id = self.nodes()[node].id
            left = {
                name: n
                for name, service in self.services().items()
                if (n := sum(1 for t in service.tasks() if t.node_id == node_id and t.state == "running"))
            }
            return Poll(not left, f"still running on {node}: {left}")

        return probe

    # -- 4: a partition ---------------------------------------------------------------------------------
    def partition(self) -> None:
        with self.scenario("partition") as seen:
            target = self.busiest_worker(replicated_only=True)
            hit = self.tasks_on(target, replicated_only=True)
            down, (_, replacement), rejoin = self.timers.node_down(), self.restored(hit), self.timers.rejoin()
            grace = resilience.longest(
                (
                    name,
                    resilience.Deadline(
                        declared.stop_grace_period(self.stack.declared(name)), "stop_grace_period"
                    ),
                )
                for name in hit
            )[1]
            limit = 4 * (down.seconds + replacement.seconds + rejoin.seconds + grace.seconds)
            with self._recorder(seen, limit=limit).recording():
                started = time.monotonic()
                peers = disruption.partition(self.provider, self.swarm, target)
                self.happened(seen, f"{target} cut off from {peers} (its tasks: {_counts(hit)})")
                try:
                    to_down = self.node_is(target, lambda n: n.state == "down")
                    if self.measure(seen, "to Down", to_down, down, started) is not None:
                        self.measure(
                            seen,
                            "to replicas restored",
                            self.whole_without({target}),
                            down + replacement,
                            started,
                        )
                finally:
                    disruption.heal(self.provider, target)
                    healed = time.monotonic()
                    self.happened(seen, f"{target} healed")
                to_ready = self.node_is(target, lambda n: n.ready)
                if self.measure(seen, "healed: to Ready", to_ready, rejoin, healed) is not None:
                    self.measure(
                        seen,
                        "healed: to replaced tasks stopped",
                        self._stale_gone(target),
                        rejoin + grace,
                        healed,
                    )

    def _stale_gone(self, node: str) -> Callable[[], Poll[None]]:
        """The node runs no container of a task swarm no longer wants running."""
        engine = self.swarm.engines[node]

        def probe() -> Poll[None]:
            wanted = {t.id for s in self.services().values() for t in s.tasks(desired_state="running")}
            stale = sorted(
                t[:12] for t in disruption.task_containers(engine, self.stack.name) if t not in wanted
            )
            return Poll(not stale, f"{node} still runs replaced tasks {stale}")

        return probe

    # -- 5: managers ------------------------------------------------------------------------------------
    def managers_lost(self) -> None:
        count = len(self.managers.names)
        if count < 3:
            reason = (
                f"needs 3 managers or more to lose one and keep quorum; this run has {count} "
                f"(--swarm-managers {self.settings.managers}; the lesson has one): "
                "run with --swarm-managers 3"
            )
            self._skip(["leader lost", "quorum lost"], reason)
            return
        self.leader_lost()
        self.whole_again("leader lost")
        self.quorum_lost()

    def _skip(self, scenarios: list[str], reason: str) -> None:
        for scenario in scenarios:
            try:
                pytest.skip(reason)
            except pytest.skip.Exception as exc:
                self.seen[scenario].set_exception(exc)

    def _workers_containers(self) -> dict[str, str]:
        workers = {n: e for n, e in self.swarm.engines.items() if n not in self.managers.names}
        return disruption.running_containers(workers, self.stack.name)

    def leader_lost(self) -> None:
        with self.scenario("leader lost") as seen:
            leader = self.managers.leader()
            before = self._workers_containers()
            election = self.timers.new_leader()
            _, replacement = self.restored(self.tasks_on(leader, replicated_only=True))
            limit = 4 * (election.seconds + self.timers.node_down().seconds + replacement.seconds)
            with self._recorder(seen, limit=limit + self.settings.timeout).recording():
                started = time.monotonic()
                self.provider.stop_node(leader)
                self.happened(seen, f"{leader} (leader) killed")
                try:

                    def elected() -> Poll[None]:
                        now = self.managers.leader(exclude=[leader])
                        return Poll(bool(now) and now != leader, f"leader seen: {now or 'none'}")

                    if self.measure(seen, "to new leader", elected, election, started) is not None:
                        seen.notes.append(
                            f"{PURPOSE}: leader lost: {leader} killed, "
                            f"{self.managers.leader([leader])} elected"
                        )
                        # the new leader hears nothing from the old one, marks it Down and replaces its tasks
                        restored = election + self.timers.node_down() + replacement
                        self.measure(
                            seen, "to replicas restored", self.whole_without({leader}), restored, started
                        )
                        for name in self.whole({leader})[2]:
                            seen.notes.append(
                                f"{PURPOSE}: {name} can run only on {leader}: pending while it was down"
                            )
                        after = self._workers_containers()
                        stopped = sorted(c[:12] for c in before if c not in after)
                        if stopped:
                            seen.problems.append(
                                f"task containers stopped on the workers when {leader} was lost: {stopped}"
                            )
                finally:
                    self.restore(partial(self.provider.start_node, leader))
                    self.happened(seen, f"{leader} started again")

    def quorum_lost(self) -> None:
        with self.scenario("quorum lost") as seen:
            names = list(self.managers.names)
            quorum = len(names) // 2 + 1
            leader = self.managers.leader()
            lost = [leader, *[n for n in names if n != leader][: len(names) - quorum]]
            survivor = next(n for n in names if n not in lost)
            before = self._workers_containers()
            election, watch = self.timers.changes_refused(), self.timers.observation()
            refusal: list[str] = []
            own = self.swarm.engines[survivor].api.inspect_node(survivor)  # the change it will be asked
            found: set[str] = set()

            def gone() -> str:
                after = self._workers_containers()
                found.update(c[:12] for c in before if c not in after)
                return ", ".join(sorted(found))

            with self._recorder(
                seen, limit=4 * (election.seconds + watch.seconds) + self.settings.timeout
            ).recording():
                started = time.monotonic()
                stopping = Together({n: partial(self.provider.stop_node, n) for n in lost}, name="stop")
                stopping.close()
                self.happened(seen, f"{', '.join(lost)} killed ({survivor} left of {len(names)})")
                try:
                    refused = self._refuses(survivor, own, refusal)
                    if self.measure(seen, "to changes refused", refused, election, started) is not None:
                        seen.notes.append(
                            f"{PURPOSE}: quorum lost: {', '.join(lost)} killed; {survivor} refused a change: "
                            f"{refusal[-1] if refusal else '?'}"
                        )
                        # as long as a manager would wait before it acted on a node it no longer hears
                        stopped = self.watch(
                            "without quorum, task containers stopped on the workers", gone, watch
                        )
                        kept = len(before) - len(found)
                        seen.figures.append(
                            resilience.Figure(
                                "quorum lost",
                                "task containers kept running",
                                kept,
                                "containers",
                                note=f"of {len(before)}",
                            )
                        )
                        if stopped:
                            seen.problems.append(stopped)
                finally:
                    back = time.monotonic()
                    self.restore(partial(self._start_all, lost))
                quorum_back = (
                    resilience.Deadline(self.settings.timeout, f"--swarm-timeout {self.settings.timeout:g} s")
                    + self.timers.new_leader()
                )
                self.measure(seen, "restarted: to a leader", self._has_leader(), quorum_back, back)

    def _start_all(self, names: list[str]) -> None:
        """Start the nodes at once: each start waits for every node to be Ready."""
        starting = Together({n: partial(self.provider.start_node, n) for n in names}, name="start")
        starting.close()
        for name in names:
            starting.outcome(name, timeout=0).get()

    def _refuses(self, survivor: str, own: dict[str, Any], refusal: list[str]) -> Callable[[], Poll[None]]:
        """A change asked of ``survivor`` (a label on its own node, ``own`` as it was before the
        loss) is refused for want of a leader. Asked again every second without waiting for a
        call the manager holds (it holds one until its own deadline while it still believes in
        the lost leader)."""
        engine = self.swarm.engines[survivor]
        labels = {**(own["Spec"].get("Labels") or {}), "io.pytest-swarm.quorum-probe": "asked"}
        asking = self.managers.asking(
            partial(
                engine.api.update_node, own["ID"], own["Version"]["Index"], {**own["Spec"], "Labels": labels}
            )
        )

        def probe() -> Poll[None]:
            answer = asking.look(wait=1.0)
            if answer is None:
                return Poll(False, f"{survivor} holds the change asked (no answer yet)")
            if answer.error is None:
                return Poll(False, f"{survivor} accepted a change")
            said = disruption.error_text(answer.error)
            refusal.append(said)
            return Poll(resilience.refuses_for_quorum(said), f"refused, but not for want of quorum: {said}")

        return probe

    def _has_leader(self) -> Callable[[], Poll[None]]:
        def probe() -> Poll[None]:
            nodes = self.nodes()
            leader = [n.name for n in nodes.values() if n.leader]
            late = [n.name for n in nodes.values() if not n.ready]
            return Poll(bool(leader) and not late, f"leader {leader or 'none'}, not Ready: {late}")

        return probe


def _counts(found: Counter[str]) -> str:
    return ", ".join(f"{name} {count}" for name, count in sorted(found.items()) if count) or "none"


class Prober:
    """Requests every survivor's published ports, in a thread, while a worker is lost."""

    def __init__(self, runner: Disruptions, survivors: dict[str, str], seen: Seen) -> None:
        stack = runner.stack
        self.ports = sorted(p for p in (stack.published_port(s) for s in stack.declared_services) if p)
        self.survivors = survivors
        self.seen = seen
        seen.answers = {f"{name}:{port}": [] for name in survivors for port in self.ports}
        limit = 4 * (runner.timers.node_down().seconds + resilience.TASK_START) + runner.settings.timeout
        self.together: Together[str, None] = Together(
            {"probe": partial(self._loop, limit)}, name="probe", start=False
        )

    def start(self) -> None:
        self.together.start()

    def stop(self) -> None:
        self.together.interrupt()
        self.together.close()
        self.seen.end = time.monotonic() - self.seen.timeline.start

    def _loop(self, limit: float) -> None:
        assert self.seen.answers is not None
        end = time.monotonic() + limit
        while time.monotonic() < end:
            for name, address in self.survivors.items():
                for port in self.ports:
                    answer = mesh.probe(address, port, count=1, timeout=PROBE_TIMEOUT)[0]
                    at = time.monotonic() - self.seen.timeline.start
                    self.seen.answers[f"{name}:{port}"].append((at, answer.status == 200))
            self.together.sleep(0.1)


def start_early(
    request: pytest.FixtureRequest, main: DeployedStack | None, folder: Path
) -> Disruptions | None:
    """Bring up the cluster of its own and run the selected scenarios, beside the other suites
    (acceptance/conftest.py calls this when they run too); None where the provider can't."""
    if disruption.IsolatedCluster.why_not(lifecycle_of(request.config).settings, PURPOSE):
        return None
    try:
        return Disruptions(request, folder)
    except SwarmError:
        return None  # the module's fixture tries again, and fails saying why


@pytest.fixture(scope="module")
def disruptions(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Disruptions]:
    """The scenarios, under way (started early, or here); their cluster removed after the module."""
    why = disruption.IsolatedCluster.why_not(lifecycle_of(request.config).settings, PURPOSE)
    if why:
        pytest.skip(why)
    running, why = take_early(request), ""
    if running is None:
        try:
            running = Disruptions(request, tmp_path_factory.mktemp(PURPOSE))
        except SwarmError as exc:  # it says what to do: no traceback
            why = f"swarm: {exc}"
    if running is None:
        pytest.fail(why, pytrace=False)
    try:
        yield running
    finally:
        running.close()


@pytest.fixture(autouse=True)
def _on_its_own_cluster(request: pytest.FixtureRequest, disruptions: Disruptions) -> None:
    """The markers of these tests (needs_routing_mesh) are judged on the cluster of their own."""
    judged_on(request.node, disruptions.cluster())


def checked(request: pytest.FixtureRequest, disruptions: Disruptions) -> Seen:
    """The scenario the requesting test checks: its figures recorded, its evidence shown on failure."""
    seen = disruptions.outcome(CHECKS[request.node.originalname][1])
    if request.node.originalname != MESH:  # the mesh test records its own figure
        for figure in seen.figures:
            disruption.record_figure(request.node, figure)
    for note in seen.notes:
        disruptions.lifecycle.note(note)
    show_on_failure(request.node, disruptions.stack)
    show_text_on_failure(request.node, f"{seen.scenario}: node states over time", seen.timeline.render)
    show_text_on_failure(request.node, f"{seen.scenario}: the tasks' moves", lambda: "\n".join(seen.moves))
    return seen


def test_a_killed_worker_goes_down_and_its_replicas_return_on_the_survivors(
    request: pytest.FixtureRequest, disruptions: Disruptions
) -> None:
    seen = checked(request, disruptions)
    assert not seen.problems, "worker lost:\n" + "\n".join(seen.problems)


@pytest.mark.needs_routing_mesh
def test_the_published_ports_answer_on_every_survivor_while_a_worker_is_lost(
    request: pytest.FixtureRequest, disruptions: Disruptions
) -> None:
    seen = checked(request, disruptions)
    assert seen.answers is not None, "no request was sent while the worker was lost"
    sent = sum(len(a) for a in seen.answers.values())
    failed = sum(1 for a in seen.answers.values() for _, ok in a if not ok)
    figure = resilience.Figure("worker lost", "failed requests during", failed, "requests", note=f"of {sent}")
    disruption.record_figure(request.node, figure)
    down = disruptions.timers.node_down()
    silent = {
        node: resilience.longest_silence([t for t, ok in answers if ok], 0.0, seen.end)
        for node, answers in seen.answers.items()
    }
    quiet = {where: round(s, 1) for where, s in silent.items() if s > down.seconds}
    print(f"worker lost: {failed} of {sent} requests failed; longest silence per survivor and port {silent}")
    assert not quiet, (
        f"{failed} of {sent} requests failed; survivors' ports that answered nothing for longer than "
        f"swarm takes to mark a node Down ({down.seconds:.1f} s): {quiet}"
    )


def test_a_worker_back_gets_its_global_tasks_and_no_replica_moves_back(
    request: pytest.FixtureRequest, disruptions: Disruptions
) -> None:
    seen = checked(request, disruptions)
    assert not seen.problems, "node back:\n" + "\n".join(seen.problems)


def test_a_drained_worker_runs_no_task_and_the_replicas_hold(
    request: pytest.FixtureRequest, disruptions: Disruptions
) -> None:
    seen = checked(request, disruptions)
    assert not seen.problems, "drain:\n" + "\n".join(seen.problems)


def test_a_cut_off_worker_goes_down_is_replaced_and_rejoins_when_healed(
    request: pytest.FixtureRequest, disruptions: Disruptions
) -> None:
    seen = checked(request, disruptions)
    assert not seen.problems, "partition:\n" + "\n".join(seen.problems)


def test_a_lost_leader_is_replaced_and_the_stack_keeps_running(
    request: pytest.FixtureRequest, disruptions: Disruptions
) -> None:
    seen = checked(request, disruptions)
    assert not seen.problems, "leader lost:\n" + "\n".join(seen.problems)


def test_without_quorum_changes_are_refused_and_tasks_keep_running(
    request: pytest.FixtureRequest, disruptions: Disruptions
) -> None:
    seen = checked(request, disruptions)
    assert not seen.problems, "quorum lost:\n" + "\n".join(seen.problems)
