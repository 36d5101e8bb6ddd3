"""What swarm promises when nodes fail, as numbers: deadlines from the swarm's own settings and
the services' declared values, the figures a disruptive check measured, and the text that shows
what happened (node states over time, the tasks' moves).

Pure logic: nothing here talks to docker (``disruption.py`` does), so every rule is unit-tested
with plain data.

Where the deadlines come from (swarmkit, the orchestration inside every engine):

- a node is declared Down when its heartbeats stop: the dispatcher gives each node
  ``HeartbeatPeriod`` (the swarm spec's ``Dispatcher.HeartbeatPeriod``, 5 s unless changed) plus
  up to 0.5 s of jitter, times a grace multiplier of 3 (``manager/dispatcher``);
- a task of a Down or drained node is replaced by the restart supervisor: after the service's
  restart delay (``restart_policy.delay``, swarm's default 5 s; none on a drained node, which
  first waits for the old task to stop: 2 s out of the load balancer, then up to its
  ``stop_grace_period``), and a task with a healthcheck counts as running once its first check
  passed (``interval`` after its start);
- a raft election starts when a follower has heard nothing for ``ElectionTick`` ticks (the spec's
  ``Raft.ElectionTick``, 10) of one second, randomised up to twice that; two managers whose
  timers fire in the same tick split the vote and wait again (with ticks of one second, about
  one election in ten), so a leader is awaited over three such rounds;
- a manager that has had no leader for more than 10 ticks (swarmkit's ``lostQuorumTimeout``)
  refuses a change at once; until then it holds the call, waiting for a leader;
- a worker cut off retries its session with a backoff of at most 8 s, and gRPC gives one
  connection attempt 20 s.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import pairwise
from typing import Any

from . import declared
from .cluster import seconds

MISSED_HEARTBEATS = 3  # swarmkit's defaultGracePeriodMultiplier
HEARTBEAT_JITTER = 0.5  # swarmkit's defaultHeartBeatEpsilon, seconds
DEFAULT_HEARTBEAT = 5.0  # swarmkit's DefaultHeartBeatPeriod, when the spec has none
DEFAULT_ELECTION_TICK = 10
RAFT_TICK = 1.0  # seconds per raft tick in swarmkit's managers
ELECTION_ROUNDS = 3  # a split vote is followed by another round; two in a row are rare (~1%)
# changes are refused once a manager's ticks without a leader exceed swarmkit's lostQuorumTimeout, 10
LOST_QUORUM_TICKS = 11
ASK_EVERY = 1.0  # seconds between two changes asked of a manager that holds calls
AGENT_MAX_BACKOFF = 8.0  # swarmkit agent's maxSessionFailureBackoff
GRPC_CONNECT = 20.0  # gRPC's minimum connect timeout: one attempt at the manager
DEFAULT_RESTART_DELAY = 5.0  # swarm's restart_policy.delay when none is declared
# A task being stopped first leaves its service's load balancing, and the engine's executor waits
# 2 s for that to spread by gossip before it sends the stop signal (moby's
# defaultGossipConvergeDelay, hard-coded): a stop takes that long before stop_grace_period starts.
LEAVE_LOAD_BALANCER = 2.0
# What the engine adds per container when it stops many of a node's tasks at once: the stops
# overlap but their teardown (network endpoints, the container's removal) partly runs one after
# another. Measured: 10 tasks of a drained dind node all gone by 6.6 s idle, by 16.3 s on a
# 2-core machine busy with another cluster (docs/engine-drain-teardown.md).
TASK_TEARDOWN = 1.5
# Seconds a new task gets to be scheduled, have its container created, joined to its networks
# and started (as the update suite allows; on a loaded 2-core machine a start took up to 13 s).
TASK_START = 20.0
# What a poll adds to any measured time: the poll interval, the dispatcher's 100 ms batches, a
# busy machine's scheduling.
SLACK = 2.0
# libnetwork's bulk-sync timeout: an engine before 29.6 that joins two overlay networks at once
# (a restarted node joins ingress while its global tasks join theirs) may wait it out
# (docs/engine-overlay-join-stall.md, network_join.py).
BULK_SYNC_TIMEOUT = 30.0
# Chain the partition's rules live in, inside the node's own network namespace.
PARTITION_CHAIN = "PSWARM-PARTITION"
# The ports of swarm's traffic between nodes: cluster management, gossip, overlay data (VXLAN).
SWARM_PORTS = (("tcp", 2377), ("tcp", 7946), ("udp", 7946), ("udp", 4789))
# How a manager without quorum refuses a change (moby's errNoLeader, swarmkit's ErrNoLeader).
NO_QUORUM = re.compile(r"does not have a leader|too few managers are online|no leader|lost quorum", re.I)


@dataclass(frozen=True)
class Deadline:
    """A wait's limit and how it was derived, e.g. ``Deadline(18.5, "3 x (5 s heartbeat + 0.5 s) + 2 s")``."""

    seconds: float
    basis: str

    def __add__(self, other: Deadline) -> Deadline:
        return Deadline(self.seconds + other.seconds, f"{self.basis} + {other.basis}")


@dataclass(frozen=True)
class SwarmTimers:
    """The swarm's own timers, read from its spec (``docker swarm inspect``, ``client.swarm.attrs``).

    Example::

        timers = SwarmTimers.of_swarm(cluster.client.swarm.attrs)
        assert timers.node_down().seconds == 18.5  # the default 5 s heartbeat
    """

    heartbeat: float = DEFAULT_HEARTBEAT
    election_tick: int = DEFAULT_ELECTION_TICK

    @classmethod
    def of_swarm(cls, attrs: Mapping[str, Any]) -> SwarmTimers:
        spec = attrs.get("Spec") or {}
        period = (spec.get("Dispatcher") or {}).get("HeartbeatPeriod")
        tick = (spec.get("Raft") or {}).get("ElectionTick")
        return cls(
            heartbeat=float(period) / 1e9 if period else DEFAULT_HEARTBEAT,
            election_tick=int(tick) if tick else DEFAULT_ELECTION_TICK,
        )

    def node_down(self) -> Deadline:
        """From a node's last sign of life until the manager marks it Down."""
        seconds = MISSED_HEARTBEATS * (self.heartbeat + HEARTBEAT_JITTER) + SLACK
        return Deadline(
            seconds,
            f"{MISSED_HEARTBEATS} missed heartbeats x ({self.heartbeat:g} s + {HEARTBEAT_JITTER:g} s) "
            f"+ {SLACK:g} s",
        )

    def new_leader(self) -> Deadline:
        """From the leader's loss until another manager is leader: up to three election rounds
        (a split vote starts another), each at most twice the election tick."""
        seconds = ELECTION_ROUNDS * 2 * self.election_tick * RAFT_TICK + SLACK
        return Deadline(
            seconds,
            f"{ELECTION_ROUNDS} rounds x 2 x election tick {self.election_tick} x {RAFT_TICK:g} s "
            f"+ {SLACK:g} s",
        )

    def changes_refused(self) -> Deadline:
        """From the loss of a majority of managers until a survivor refuses a change: its
        election timer fires (under twice the election tick), then it has no leader for more than
        swarmkit's lostQuorumTimeout ticks, then the next change asked (every ASK_EVERY s) is
        refused."""
        seconds = (2 * self.election_tick + LOST_QUORUM_TICKS) * RAFT_TICK + ASK_EVERY + SLACK
        return Deadline(
            seconds,
            f"2 x election tick {self.election_tick} x {RAFT_TICK:g} s + {LOST_QUORUM_TICKS} ticks "
            f"without a leader + a change asked every {ASK_EVERY:g} s + {SLACK:g} s",
        )

    def rejoin(self) -> Deadline:
        """From the end of a partition until the node is Ready again."""
        seconds = AGENT_MAX_BACKOFF + GRPC_CONNECT + self.heartbeat + HEARTBEAT_JITTER + SLACK
        return Deadline(
            seconds,
            f"session backoff {AGENT_MAX_BACKOFF:g} s + one connection attempt {GRPC_CONNECT:g} s "
            f"+ a heartbeat {self.heartbeat + HEARTBEAT_JITTER:g} s + {SLACK:g} s",
        )

    def observation(self) -> Deadline:
        """How long to watch that swarm does not act: the time it gives a node before it acts on
        its loss (what it would act on shows by then)."""
        seconds = MISSED_HEARTBEATS * (self.heartbeat + HEARTBEAT_JITTER)
        return Deadline(seconds, f"{MISSED_HEARTBEATS} heartbeats of {self.heartbeat + HEARTBEAT_JITTER:g} s")


def task_start(slowest_seen: float = 0.0) -> Deadline:
    """What a new task gets to start: TASK_START, or where the nodes are slower (UML: several
    times dind's) the slowest start the stack's own tasks took on them at its deploy (from
    created to running, their first healthcheck included)."""
    if slowest_seen <= TASK_START:
        return Deadline(TASK_START, f"a task's start {TASK_START:g} s")
    seen = math.ceil(slowest_seen)
    return Deadline(seen, f"a task's start as slow as the deploy's slowest {seen} s")


def task_stop(spec: Mapping[str, Any]) -> Deadline:
    """How long one of ``spec``'s tasks may take to stop once swarm wants it stopped."""
    grace = declared.stop_grace_period(spec)
    return Deadline(
        LEAVE_LOAD_BALANCER + grace,
        f"out of the load balancer {LEAVE_LOAD_BALANCER:g} s + stop_grace_period {grace:g} s",
    )


def teardown(tasks: int, start: Deadline | None = None) -> Deadline:
    """What the engine adds to task_stop() when a node stops ``tasks`` tasks at once; on nodes
    whose starts are slower than TASK_START (``start``, task_start()), as much slower."""
    each = TASK_TEARDOWN * max(1.0, (start.seconds if start else TASK_START) / TASK_START)
    return Deadline(each * tasks, f"the engine's teardown {each:g} s x {tasks} tasks")


def replacement(
    spec: Mapping[str, Any],
    health: declared.Healthcheck | None,
    drained: bool = False,
    start: Deadline | None = None,
) -> Deadline:
    """How long a replacement of one of ``spec``'s tasks may take once swarm acts: its restart
    delay (none on a drained node, where the old task first stops: task_stop()),
    a task's start (``start``, default task_start()), and its first healthcheck."""
    if drained:
        first = task_stop(spec)
    else:
        policy = declared.restart_policy(spec)
        delay = policy.delay if policy is not None else DEFAULT_RESTART_DELAY
        first = Deadline(delay, f"restart delay {delay:g} s")
    deadline = first + (start or task_start())
    if health is not None:
        deadline += Deadline(health.interval, f"first healthcheck {health.interval:g} s")
    return deadline


def overlay_join_stall() -> Deadline:
    """What a node's overlay join may add on an engine that stalls on two joins at once."""
    return Deadline(
        BULK_SYNC_TIMEOUT, f"an overlay join's bulk-sync timeout {BULK_SYNC_TIMEOUT:g} s (engine < 29.6)"
    )


def longest(deadlines: Iterable[tuple[str, Deadline]]) -> tuple[str, Deadline]:
    """The longest of (service, deadline) pairs; ("", 0 s) when there are none."""
    return max(
        deadlines, key=lambda pair: pair[1].seconds, default=("", Deadline(0.0, "nothing to wait for"))
    )


@dataclass(frozen=True)
class Figure:
    """One measured figure of a disruptive scenario and the deadline it was held to.

    Example::

        Figure("worker lost", "to Down", 12.4, "s", Deadline(18.5, "3 missed heartbeats ..."))
    """

    scenario: str
    what: str
    value: float
    unit: str = "s"  # "s", or what is counted ("connections")
    deadline: Deadline | None = None  # None: reported, held to nothing
    note: str = ""  # e.g. "of 240"

    @property
    def held(self) -> bool | None:
        return None if self.deadline is None else self.value <= self.deadline.seconds

    @property
    def key(self) -> str:
        """``worker_lost_to_down``: the figure's name in JUnit properties."""
        return re.sub(r"[^a-z0-9]+", "_", f"{self.scenario} {self.what}".lower()).strip("_")

    def shown(self) -> str:
        value = f"{self.value:.1f} s" if self.unit == "s" else f"{self.value:g} {self.unit}"
        return f"{value} {self.note}".strip()

    def describe(self) -> str:
        if self.deadline is None:
            return f"{self.scenario}: {self.what} {self.shown()}"
        verdict = "within" if self.held else "PAST"
        return (
            f"{self.scenario}: {self.what} {self.shown()}, {verdict} its deadline "
            f"{self.deadline.seconds:.1f} s ({self.deadline.basis})"
        )

    def properties(self) -> list[tuple[str, str]]:
        """JUnit properties: the value and, when held to one, the deadline."""
        unit = "seconds" if self.unit == "s" else re.sub(r"\W+", "_", self.unit)
        props = [
            (
                f"swarm_resilience_{self.key}_{unit}",
                f"{self.value:.1f}" if self.unit == "s" else f"{self.value:g}",
            )
        ]
        if self.deadline is not None:
            props.append((f"swarm_resilience_{self.key}_deadline_seconds", f"{self.deadline.seconds:.1f}"))
        return props


def partition_commands(peers: Sequence[str]) -> list[str]:
    """iptables commands, run inside a node's network namespace, that drop its swarm traffic
    with ``peers`` (their addresses) both ways: management, gossip and overlay data. Other
    traffic (the test runner's, a published port's) still flows."""
    chain = PARTITION_CHAIN
    commands = [
        f"iptables -w -N {chain}",
        f"iptables -w -I INPUT 1 -j {chain}",
        f"iptables -w -I OUTPUT 1 -j {chain}",
    ]
    for peer in peers:
        for proto, port in SWARM_PORTS:
            for side in ("--dport", "--sport"):
                commands.append(f"iptables -w -A {chain} -s {peer} -p {proto} {side} {port} -j DROP")
                commands.append(f"iptables -w -A {chain} -d {peer} -p {proto} {side} {port} -j DROP")
    return commands


def heal_commands() -> list[str]:
    """The commands that take :func:`partition_commands`' rules away again (each may fail when
    there is nothing to remove)."""
    chain = PARTITION_CHAIN
    return [
        f"iptables -w -D INPUT -j {chain}",
        f"iptables -w -D OUTPUT -j {chain}",
        f"iptables -w -F {chain}",
        f"iptables -w -X {chain}",
    ]


def refuses_for_quorum(error: str) -> bool:
    """Whether a manager's error says it can't change anything for want of a leader (quorum)."""
    return bool(NO_QUORUM.search(error))


def longest_silence(answered: Sequence[float], start: float, end: float) -> float:
    """The longest time within [start, end] without an answer (``answered``: the times of the
    answers, seconds)."""
    marks = [start, *sorted(t for t in answered if start <= t <= end), end]
    return max((b - a for a, b in pairwise(marks)), default=end - start)


@dataclass
class Timeline:
    """What changed, when: node states (``worker-2 ready/active -> down/active``), leaders, the
    running tasks per service; times in seconds from ``start`` (monotonic)."""

    start: float
    events: list[tuple[float, str]] = field(default_factory=list)
    _last: dict[str, str] = field(default_factory=dict)

    def mark(self, at: float, what: str) -> None:
        """An event of the scenario itself (``killed worker-2``)."""
        self.events.append((at - self.start, what))

    def see(self, at: float, subject: str, state: str) -> None:
        """The state of ``subject`` seen at ``at``: recorded when it changed."""
        before = self._last.get(subject)
        if before == state:
            return
        self._last[subject] = state
        change = f"{subject} {state}" if before is None else f"{subject} {before} -> {state}"
        self.events.append((at - self.start, change))

    def render(self) -> str:
        return "\n".join(f"{t:7.1f} s  {what}" for t, what in sorted(self.events, key=lambda e: e[0]))


@dataclass
class Seen:
    """What one scenario showed: its figures, the promises it saw broken, notes for the report
    and the evidence (node states over time, the tasks' moves)."""

    scenario: str
    timeline: Timeline
    origin: float  # POSIX time the scenario began: the tasks' moves are shown from there
    figures: list[Figure] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    moves: list[str] = field(default_factory=list)
    # "survivor:port" -> (seconds from the start, accepted) of each connection while a worker was lost
    answers: dict[str, list[tuple[float, bool]]] | None = None
    end: float = 0.0  # seconds from the scenario's start when the answers were last looked at

    def __repr__(self) -> str:
        # what a failed assertion's introspection prints beside the problems: the timeline and the
        # moves are in the test's evidence section, whole, not cut into one line here
        return f"Seen({self.scenario!r}, {len(self.problems)} problems)"


def node_state(node: Mapping[str, Any]) -> str:
    """``ready/active``, ``down/drain``, ``ready/active leader``, ``ready/active unreachable``."""
    status = (node.get("Status") or {}).get("State", "?")
    availability = (node.get("Spec") or {}).get("Availability", "?")
    manager = node.get("ManagerStatus") or {}
    role = " leader" if manager.get("Leader") else f" {manager['Reachability']}" if manager else ""
    return f"{status}/{availability}{role}"


def _when(timestamp: str, origin: float) -> str:
    return f"{seconds(timestamp) - origin:+.1f} s" if timestamp else "?"


def task_moves(
    tasks: Iterable[Mapping[str, Any]],
    services: Mapping[str, str],
    nodes: Mapping[str, str],
    origin: float,
) -> list[str]:
    """Each task's place (a replicated task's slot, a global task's node) with the tasks it had,
    oldest first, from swarm's task history: node, state (desired), when the state was reached
    (seconds from ``origin``, POSIX time), and the error. Places with a single task that never
    changed since ``origin`` are left out: they show no move.

    ``services``: service id -> name; ``nodes``: node id -> name.
    """
    places: dict[tuple[str, str], list[Mapping[str, Any]]] = {}
    for task in tasks:
        service = services.get(str(task.get("ServiceID", "")), str(task.get("ServiceID", ""))[:12])
        slot = task.get("Slot")
        place = f"slot {slot}" if slot else f"node {nodes.get(str(task.get('NodeID', '')), '?')}"
        places.setdefault((service, place), []).append(task)
    lines = []
    for (service, place), found in sorted(places.items()):
        found = sorted(found, key=lambda t: str(t.get("CreatedAt", "")))
        status = [t.get("Status") or {} for t in found]
        if len(found) == 1 and _changed_before(status[0].get("Timestamp", ""), origin):
            continue
        hops = []
        for task, st in zip(found, status, strict=True):
            node = nodes.get(str(task.get("NodeID", "")), str(task.get("NodeID", ""))[:12] or "unassigned")
            error = f" '{st['Err']}'" if st.get("Err") else ""
            state = f"{st.get('State', '?')} (desired {task.get('DesiredState', '?')})"
            hops.append(f"{node} {state} at {_when(str(st.get('Timestamp', '')), origin)}{error}")
        lines.append(f"{service} {place}: " + " -> ".join(hops))
    return lines


def _changed_before(timestamp: str, origin: float) -> bool:
    return bool(timestamp) and seconds(timestamp) < origin
