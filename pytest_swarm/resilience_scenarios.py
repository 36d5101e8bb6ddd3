"""The resilience scenarios: what each one does to the cluster of its own, and what it holds
swarm to. A worker is killed, then started again; a worker is drained, then set active; a worker
is cut off from the others' swarm traffic, then healed; with 3 managers or more the leader is
killed, then a majority of managers.

Each scenario notes on its ``Seen`` (resilience.py) the figures it measured against their
deadlines and the promises it saw broken; the run itself (the thread, the waits, the cluster
whole again between steps) is ``resilience_runner.py``.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterable
from functools import partial
from typing import Any, ClassVar

from . import disruption, mesh, resilience
from .errors import SwarmError
from .resilience import Seen
from .resilience_runner import ScenarioRunner
from .together import Together
from .waiting import Poll

WORKER = "worker"  # the steps, in the order they run
DRAIN = "drain"
PARTITION = "partition"
MANAGERS = "managers"
PROBE_TIMEOUT = 2.0  # one connection through a published port


class Disruptions(ScenarioRunner):
    """The resilience scenarios, run in order in a thread on a cluster of their own; each test
    waits for the scenario it checks (``outcome``).

    Example::

        disruptions = Disruptions(request, folder, "resilience", {"worker lost", "node back"})
        try:
            seen = disruptions.outcome("worker lost")
            assert not seen.problems
        finally:
            disruptions.close()
    """

    # each step and the scenarios it runs, in order
    STEPS: ClassVar[dict[str, tuple[str, ...]]] = {
        WORKER: ("worker lost", "node back"),
        DRAIN: ("drain",),
        PARTITION: ("partition",),
        MANAGERS: ("leader lost", "quorum lost"),
    }

    def run_step(self, step: str) -> None:
        steps: dict[str, Callable[[], None]] = {
            WORKER: self.worker_lost_and_back,
            DRAIN: self.drain,
            PARTITION: self.partition,
            MANAGERS: self.managers_lost,
        }
        steps[step]()

    def busiest_worker(self, replicated_only: bool) -> str:
        """The Ready worker running the most tasks (of replicated services only, if asked)."""
        workers = [n.name for n in self.view.nodes().values() if n.role == "worker" and n.ready]
        if not workers:
            raise SwarmError(f"{self.purpose}: no Ready worker to disrupt")
        return max(sorted(workers), key=lambda w: sum(self.view.tasks_on(w, replicated_only).values()))

    # -- 1 and 2: a worker killed, then back --------------------------------------------------------
    def worker_lost_and_back(self) -> None:
        with self.scenario("worker lost") as lost:
            victim = self.busiest_worker(replicated_only=True)
            hit = self.view.tasks_on(victim, replicated_only=True)
            survivors = {n: a for n, a in self.swarm.addresses.items() if n != victim}
            down, (_, replacement) = self.timers.node_down(), self.view.restored(hit)
            prober = Prober(self, survivors, lost) if not self.swarm.missing_capability("ipvs") else None
            with self.recorder(lost, limit=4 * (down.seconds + replacement.seconds)).recording():
                started = time.monotonic()
                if prober is not None:
                    prober.start()
                try:
                    self.provider.stop_node(victim)
                    self.happened(lost, f"{victim} killed (its replicated tasks: {_counts(hit)})")
                    to_down = self.view.node_is(victim, lambda n: n.state == "down")
                    if self.measure(lost, "to Down", to_down, down, started) is not None:
                        self.measure(
                            lost,
                            "to replicas restored",
                            self.view.whole_without({victim}),
                            down + replacement,
                            started,
                        )
                    lost.problems += [f"after {victim} was lost: {m}" for m in self.view.misplaced()]
                    _, _, pinned = self.view.whole({victim})
                    for name in pinned:
                        lost.notes.append(
                            f"{self.purpose}: {name} can run only on {victim} "
                            f"({self.view.services()[name].constraints}): pending while {victim} was down, "
                            "as swarm promises"
                        )
                finally:
                    if prober is not None:
                        prober.stop()
        self.node_back(victim)

    def node_back(self, victim: str) -> None:
        with self.scenario("node back") as back:
            before = {name: {t.id for t in s.running_tasks()} for name, s in self.view.services().items()}
            replicated = self.view.replicated()
            settle = resilience.Deadline(self.timers.heartbeat + resilience.HEARTBEAT_JITTER, "one heartbeat")
            found: set[str] = set()

            def new_replicas() -> str:
                for name, service in self.view.services().items():
                    if name in replicated:
                        found.update(
                            f"{name} {t.id[:12]}" for t in service.running_tasks() if t.id not in before[name]
                        )
                return ", ".join(sorted(found))

            with self.recorder(back, limit=self.settings.timeout + 60).recording():
                started = time.monotonic()
                self.provider.start_node(victim)
                self.happened(back, f"{victim} started again")
                node_start = resilience.Deadline(
                    self.settings.timeout, f"--swarm-timeout {self.settings.timeout:g} s"
                )
                ready = self.measure(
                    back, "to Ready", self.view.node_is(victim, lambda n: n.ready), node_start, started
                )
                if ready is not None and self.view.globals_for(victim):
                    # its global tasks can start only once it is Ready (a node that boots slowly,
                    # as a UML kernel does, is not late with them): measured from then
                    self.measure(
                        back,
                        "Ready: to global tasks back",
                        self.view.globals_on(victim),
                        self.view.global_deadline(victim, restarted=True),
                        started + ready,
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

    def longest_stop(self, services: Iterable[str]) -> resilience.Deadline:
        """The longest a task of ``services`` may take to stop (resilience.task_stop)."""
        stops = ((name, resilience.task_stop(self.stack.declared(name))) for name in services)
        return resilience.longest(stops)[1]

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
            hit = self.view.tasks_on(target)
            # its tasks stop at once, the last one's replacement starts once it has stopped
            teardown = resilience.teardown(sum(hit.values()), self.view.start)
            _, replacement = self.view.restored(hit, drained=True)
            replacement += teardown
            stops = self.longest_stop(name for name, count in hit.items() if count)
            slack = resilience.Deadline(resilience.SLACK, f"{resilience.SLACK:g} s")
            empty_deadline = stops + teardown + slack
            with self.recorder(seen, limit=4 * replacement.seconds + self.settings.timeout).recording():
                started = time.monotonic()
                self.set_availability(target, "drain")
                self.happened(seen, f"{target} drained (its tasks: {_counts(hit)})")
                try:
                    self.measure(
                        seen, "to no task on the node", self.view.no_task_on(target), empty_deadline, started
                    )
                    self.measure(
                        seen, "to replicas restored", self.view.whole_without({target}), replacement, started
                    )
                finally:
                    self.restore(partial(self.set_availability, target, "active"))
                    self.happened(seen, f"{target} active again")
                back = time.monotonic()
                if self.view.globals_for(target):  # a stack without one has nothing to come back
                    self.measure(
                        seen,
                        "active: global tasks back",
                        self.view.globals_on(target),
                        self.view.global_deadline(target),
                        back,
                    )
                done, state, _ = self.view.whole(set())
                if not done:
                    seen.problems.append(f"after {target} was active again: {state}")

    # -- 4: a partition ---------------------------------------------------------------------------------
    def partition(self) -> None:
        with self.scenario("partition") as seen:
            target = self.busiest_worker(replicated_only=True)
            hit = self.view.tasks_on(target, replicated_only=True)
            down, rejoin = self.timers.node_down(), self.timers.rejoin()
            _, replacement = self.view.restored(hit)
            grace = self.longest_stop(hit)
            limit = 4 * (down.seconds + replacement.seconds + rejoin.seconds + grace.seconds)
            with self.recorder(seen, limit=limit).recording():
                started = time.monotonic()
                peers = disruption.partition(self.provider, self.swarm, target)
                self.happened(seen, f"{target} cut off from {peers} (its tasks: {_counts(hit)})")
                try:
                    to_down = self.view.node_is(target, lambda n: n.state == "down")
                    if self.measure(seen, "to Down", to_down, down, started) is not None:
                        self.measure(
                            seen,
                            "to replicas restored",
                            self.view.whole_without({target}),
                            down + replacement,
                            started,
                        )
                finally:
                    disruption.heal(self.provider, target)
                    healed = time.monotonic()
                    self.happened(seen, f"{target} healed")
                to_ready = self.view.node_is(target, lambda n: n.ready)
                if self.measure(seen, "healed: to Ready", to_ready, rejoin, healed) is not None:
                    self.measure(
                        seen,
                        "healed: to replaced tasks stopped",
                        self.view.stale_gone(target),
                        rejoin + grace + resilience.teardown(sum(hit.values()), self.view.start),
                        healed,
                    )

    # -- 5: managers ------------------------------------------------------------------------------------
    def managers_lost(self) -> None:
        count = len(self.managers.names)
        if count < 3:
            reason = (
                f"needs 3 managers or more to lose one and keep quorum; this run has {count} "
                f"(--swarm-managers {self.settings.managers}; the lesson has one): "
                "run with --swarm-managers 3"
            )
            self.skip(["leader lost", "quorum lost"], reason)
            return
        self.leader_lost()
        self.whole_again("leader lost")
        self.quorum_lost()

    def leader_lost(self) -> None:
        with self.scenario("leader lost") as seen:
            leader = self.managers.leader()
            before = self.view.workers_containers()
            election = self.timers.new_leader()
            _, replacement = self.view.restored(self.view.tasks_on(leader, replicated_only=True))
            limit = 4 * (election.seconds + self.timers.node_down().seconds + replacement.seconds)
            with self.recorder(seen, limit=limit + self.settings.timeout).recording():
                started = time.monotonic()
                self.provider.stop_node(leader)
                self.happened(seen, f"{leader} (leader) killed")
                try:

                    def elected() -> Poll[None]:
                        now = self.managers.leader(exclude=[leader])
                        return Poll(bool(now) and now != leader, f"leader seen: {now or 'none'}")

                    if self.measure(seen, "to new leader", elected, election, started) is not None:
                        seen.notes.append(
                            f"{self.purpose}: leader lost: {leader} killed, "
                            f"{self.managers.leader([leader])} elected"
                        )
                        # the new leader hears nothing from the old one, marks it Down and replaces its tasks
                        restored = election + self.timers.node_down() + replacement
                        self.measure(
                            seen, "to replicas restored", self.view.whole_without({leader}), restored, started
                        )
                        for name in self.view.whole({leader})[2]:
                            seen.notes.append(
                                f"{self.purpose}: {name} can run only on {leader}: pending while it was down"
                            )
                        after = self.view.workers_containers()
                        stopped = sorted(c[:12] for c in before if c not in after)
                        if stopped:
                            seen.problems.append(
                                f"task containers stopped on the workers when {leader} was lost: "
                                + "; ".join(self.view.explain_stopped(stopped))
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
            before = self.view.workers_containers()
            election, watch = self.timers.changes_refused(), self.timers.observation()
            refusal: list[str] = []
            own = self.swarm.engines[survivor].api.inspect_node(survivor)  # the change it will be asked
            found: set[str] = set()

            def gone() -> str:
                after = self.view.workers_containers()
                found.update(c[:12] for c in before if c not in after)
                return ", ".join(sorted(found))

            with self.recorder(
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
                            f"{self.purpose}: quorum lost: {', '.join(lost)} killed; "
                            f"{survivor} refused a change: {refusal[-1] if refusal else '?'}"
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
                self.measure(seen, "restarted: to a leader", self.view.has_leader(), quorum_back, back)

    def _start_all(self, names: list[str]) -> None:
        """Start the nodes at once: each start waits for every node to be Ready."""
        starting = Together({n: partial(self.provider.start_node, n) for n in names}, name="start")
        starting.close()
        for name in names:
            starting.outcome(name, timeout=0).get()

    def _refuses(self, survivor: str, own: dict[str, Any], refusal: list[str]) -> Callable[[], Poll[None]]:
        """A change asked of ``survivor`` (a label on its own node, ``own`` as it was before the
        loss) is refused for want of a leader. Asked again every ASK_EVERY seconds without
        waiting for a call the manager holds (it holds one until its own deadline while it still
        believes in the lost leader)."""
        engine = self.swarm.engines[survivor]
        labels = {**(own["Spec"].get("Labels") or {}), "io.pytest-swarm.quorum-probe": "asked"}
        asking = self.managers.asking(
            partial(
                engine.api.update_node, own["ID"], own["Version"]["Index"], {**own["Spec"], "Labels": labels}
            ),
            every=resilience.ASK_EVERY,
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


def _counts(found: Counter[str]) -> str:
    return ", ".join(f"{name} {count}" for name, count in sorted(found.items()) if count) or "none"


class Prober:
    """Connects to every survivor's published ports, in a thread, while a worker is lost: a
    port answers when a task accepts the connection (an HTTP status would judge the service,
    not the mesh: prometheus's / ends in 500 without its web assets, and a busy task answers
    late; requests would also load the survivors the scenario measures)."""

    def __init__(self, runner: Disruptions, survivors: dict[str, str], seen: Seen) -> None:
        stack = runner.stack
        self.ports = sorted(p for p in (stack.published_port(s) for s in stack.declared_services) if p)
        self.survivors = survivors
        self.seen = seen
        seen.answers = {f"{name}:{port}": [] for name in survivors for port in self.ports}
        limit = 4 * (runner.timers.node_down().seconds + runner.view.start.seconds) + runner.settings.timeout
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
                    answered = mesh.connects(address, port, timeout=PROBE_TIMEOUT)
                    at = time.monotonic() - self.seen.timeline.start
                    self.seen.answers[f"{name}:{port}"].append((at, answered))
            self.together.sleep(0.1)
