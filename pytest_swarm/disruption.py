"""Breaking nodes on purpose, where no other suite sees them break: a cluster of its own, the
managers that still answer, a partition inside a node, and a recorder of what swarm did.

The numbers these are judged by come from ``resilience.py``.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from concurrent import futures
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import docker
import docker.errors
import pytest
import testinfra

from . import resilience
from .cluster import STACK_LABEL, Cluster, Node
from .errors import SwarmError
from .lifecycle import SwarmLifecycle, lifecycle_of
from .ownership import Session
from .providers.base import Provider, ProviderRun
from .providers.engines import TRANSIENT
from .providers.registry import provider_class
from .settings import Settings
from .stack import DeployedStack

Sleep = Callable[[float], None]
T = TypeVar("T")
# How long a manager whose leader is gone holds a call before it answers "context deadline
# exceeded" (moby's swarmRequestTimeout; seen on engine 20.10).
HELD_CALL = 20.0
SERVICE_NAME_LABEL = "com.docker.swarm.service.name"  # on every task container


class IsolatedCluster:
    """A cluster of its own for checks that kill, drain or cut off nodes: built as the run's is
    (a provider of the same kind, from the same settings, through the registry), under a
    session of its own (its own labels and run folder; the same owner process, so a later run
    sweeps it if this one is killed), with the ``--swarm-env`` stack deployed on it.

    Example::

        own = IsolatedCluster(lifecycle_of(request.config), "resilience")
        try:
            own.start()
            own.provider.stop_node("worker-1")
        finally:
            own.close()
    """

    def __init__(self, lifecycle: SwarmLifecycle, purpose: str, sleep: Sleep = time.sleep) -> None:
        """``sleep``: between two looks while the stack converges (one that ends the wait when
        the run stops). Call from the main thread: the run's signal handling is set up here."""
        self.lifecycle = lifecycle
        self.purpose = purpose
        self.sleep = sleep
        settings = lifecycle.settings
        self.session = Session.new(settings.rootdir)
        self.kind = provider_class(settings.provider)
        preload = lifecycle.images_to_preload() if self.kind.preloads_images else ()
        run = ProviderRun(
            settings, self.session, self._progress, local=lambda: lifecycle.local, preload=preload
        )
        self.provider: Provider = self.kind(run)
        self._cluster: Cluster | None = None
        self._stack: DeployedStack | None = None
        self._lock = threading.Lock()  # start and close never overlap
        self._closed = False
        lifecycle.first_use()
        lifecycle.isolated.append(self)

    @staticmethod
    def why_not(settings: Settings, purpose: str) -> str:
        """Why a cluster of its own is not brought up for ``purpose`` on this run's provider
        ("" when it is): the provider can't change nodes, or a second cluster of its kind is
        costly and --swarm-disruptive was not given."""
        kind = provider_class(settings.provider)
        if not kind.can_change_nodes:
            return f"{purpose} breaks nodes of a cluster of its own: {kind.fixed_nodes_reason}"
        if kind.second_cluster_cost and not settings.disruptive:
            return (
                f"{purpose} breaks nodes of a cluster of its own; on {kind.name} that is "
                f"{kind.second_cluster_cost}: run it with --swarm-disruptive (or deselect it with "
                "-m 'not disruptive')"
            )
        return ""

    def _progress(self, line: str) -> None:
        self.lifecycle.progress(f"{self.purpose}: {line}")

    @property
    def cluster(self) -> Cluster:
        if self._cluster is None:
            raise SwarmError(f"the {self.purpose} cluster is not up (call start() first)")
        return self._cluster

    @property
    def stack(self) -> DeployedStack:
        if self._stack is None:
            raise SwarmError(f"the {self.purpose} cluster has no stack yet (call start() first)")
        return self._stack

    def start(self) -> None:
        """Bring the nodes up, deploy the --swarm-env stack and wait for it to converge."""
        settings = self.lifecycle.settings
        if settings.env is None:
            raise SwarmError(f"{self.purpose} deploys --swarm-env on a cluster of its own: give --swarm-env")
        with self._lock:
            if self._closed:
                raise SwarmError(f"the {self.purpose} cluster was removed before it came up")
            started = time.monotonic()
            self._cluster = self.provider.up()
            self._progress(
                f"cluster {self.session.id} ({self.kind.name}, {len(self._cluster.addresses)} nodes) "
                f"ready in {self._cluster.seconds_to_ready:.1f} s"
            )
            source = self.lifecycle.source(settings.env)
            self._stack = self.lifecycle.deploy_on(self._cluster, self.provider, source, wait=False)
        self._stack.converge(settings.timeout, sleep=self.sleep)
        self._progress(
            f"stack {self._stack.name} converged on it in {self._stack.seconds_to_converge:.1f} s "
            f"({time.monotonic() - started:.1f} s in all)"
        )

    def close(self) -> None:
        """Remove the cluster and all it had; idempotent. Waits for a start under way (bounded
        by the provider's own deadlines) so nothing it makes is left behind."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            try:
                self.provider.down()
            finally:
                if self in self.lifecycle.isolated:
                    self.lifecycle.isolated.remove(self)
        self.lifecycle.note(f"{self.purpose}: cluster {self.session.id} removed")


@dataclass(frozen=True)
class Answer(Generic[T]):
    """What one call returned or raised, and when it was made (monotonic)."""

    asked: float
    value: T | None
    error: BaseException | None


class Asking(Generic[T]):
    """One question asked again and again of an engine that may hold a call long: a manager
    whose leader is gone holds a call until its own request deadline (HELD_CALL), so a look
    must not wait for it. A new call goes out once the newest pending one is
    ``every`` seconds old (at most ``most`` pending); a look waits at most ``wait`` seconds and
    returns the answer of the newest call that ended, or None when none did."""

    def __init__(
        self, call: Callable[[], T], pool: ThreadPoolExecutor, every: float = 1.0, most: int = 6
    ) -> None:
        self.call = call
        self.pool = pool
        self.every = every
        self.most = most
        self.pending: list[tuple[float, Future[T]]] = []

    def look(self, wait: float) -> Answer[T] | None:
        now = time.monotonic()
        fresh = self.pending and now - self.pending[-1][0] < self.every
        if not fresh and len(self.pending) < self.most:
            self.pending.append((now, self.pool.submit(self.call)))
        futures.wait([f for _, f in self.pending], timeout=wait, return_when=futures.FIRST_COMPLETED)
        ended = [(asked, f) for asked, f in self.pending if f.done()]
        self.pending = [(asked, f) for asked, f in self.pending if not f.done()]
        if not ended:
            return None
        asked, future = max(ended, key=lambda pair: pair[0])
        error = future.exception()
        return Answer(asked, None if error is not None else future.result(), error)


class Managers:
    """The cluster's managers, asked in turn: the first whose engine answers as a manager
    within ``answer_within`` seconds is used (a disruptive check kills managers, master-1
    among them, and a manager without a leader holds calls). They are asked again until one
    answers or ``patience`` seconds pass: a live manager busy starting tasks on slow nodes
    (UML) took over a second to list the nodes."""

    def __init__(self, cluster: Cluster, answer_within: float = 1.0, patience: float = 10.0) -> None:
        self.cluster = cluster
        self.names = [n.name for n in cluster.nodes() if n.role == "manager"]
        self.answer_within = answer_within
        self.patience = patience
        self.last_error = ""
        self.pool = ThreadPoolExecutor(max_workers=8 * (len(self.names) + 1), thread_name_prefix="swarm-ask")
        self._pools = [self.pool]
        self._asking: dict[str, Asking[list[dict[str, Any]]]] = {}

    def asking(self, call: Callable[[], T], every: float = 1.0) -> Asking[T]:
        """Ask ``call`` every ``every`` seconds however long the manager holds each (see Asking).
        What it answers may change while earlier calls are held (a manager refuses a change
        only once it has had no leader for a while; a call asked before that is held
        HELD_CALL seconds), so as many calls as a held one lasts may be pending, in threads of
        their own: a new call always goes out, and its answer is seen as soon as it comes."""
        most = math.ceil(HELD_CALL / every) + 1
        pool = ThreadPoolExecutor(max_workers=most, thread_name_prefix="swarm-ask-held")
        self._pools.append(pool)
        return Asking(call, pool, every=every, most=most)

    def _answer(
        self, exclude: Sequence[str], patience: float | None
    ) -> tuple[docker.DockerClient, list[dict[str, Any]]]:
        until = time.monotonic() + (self.patience if patience is None else patience)
        while True:
            for name in (n for n in self.names if n not in exclude):
                engine = self.cluster.engines.get(name)
                if engine is None:
                    continue
                asking = self._asking.setdefault(name, Asking(engine.api.nodes, self.pool))
                answer = asking.look(self.answer_within)
                if answer is None:
                    self.last_error = f"{name}: no answer within {self.answer_within:g} s"
                elif answer.error is not None:
                    self.last_error = f"{name}: {_explained(answer.error)}"
                elif answer.value is not None:
                    return engine, answer.value
            if time.monotonic() >= until:
                raise SwarmError(f"no manager answers (last: {self.last_error or 'none reached'})")
            time.sleep(0.1)  # every manager refused at once (a killed one): not a busy loop

    def client(self, exclude: Sequence[str] = (), patience: float | None = None) -> docker.DockerClient:
        """A manager's client that answered just now (asked for ``patience`` seconds at most,
        default the object's).

        Raises:
            SwarmError: none answers; says what the last one said.
        """
        return self._answer(exclude, patience)[0]

    def nodes(self, exclude: Sequence[str] = (), patience: float | None = None) -> list[Node]:
        return sorted((Node(raw) for raw in self._answer(exclude, patience)[1]), key=lambda n: n.name)

    def leader(self, exclude: Sequence[str] = ()) -> str:
        """The leader as a manager that answers sees it ("" when it sees none)."""
        return next((n.name for n in self.nodes(exclude) if n.leader), "")

    def close(self) -> None:
        """Stop asking (a call still held ends by the engine's own deadline)."""
        for pool in self._pools:
            pool.shutdown(wait=False, cancel_futures=True)


def _explained(exc: BaseException) -> str:
    explanation = getattr(exc, "explanation", None)
    return str(explanation or exc).strip()


def error_text(exc: BaseException) -> str:
    """What an engine said when it refused (its explanation, else the exception)."""
    return _explained(exc)


def run_in_node(provider: Provider, node: str, commands: Sequence[str], check: bool = True) -> str:
    """Run shell ``commands`` in ``node`` (its kernel and network namespace: dind, the node
    container; uml, the UML kernel) through the provider's host; returns their output.

    Raises:
        SwarmError: the provider reaches no host on ``node``, or (``check``) a command failed.
    """
    spec = provider.host_spec(node)
    if not spec:
        raise SwarmError(f"no command can be run on {node}: {provider.name} reaches no host there")
    host = testinfra.get_host(spec)
    joined = "; ".join(commands) if not check else "set -e; " + "; ".join(commands)
    result = host.run(joined)
    if check and result.rc != 0:
        raise SwarmError(f"on {node}, `{commands[0]} ...` failed ({result.rc}): {result.stderr.strip()}")
    return str(result.stdout)


def partition(provider: Provider, cluster: Cluster, node: str) -> list[str]:
    """Cut ``node`` off from every other node's swarm traffic, inside the node; returns the
    peers' addresses it was cut from."""
    peers = sorted(address for name, address in cluster.addresses.items() if name != node)
    run_in_node(provider, node, resilience.heal_commands(), check=False)  # nothing left from before
    run_in_node(provider, node, resilience.partition_commands(peers))
    return peers


def heal(provider: Provider, node: str) -> None:
    """Take :func:`partition`'s rules away from ``node``."""
    run_in_node(provider, node, resilience.heal_commands(), check=False)
    left = run_in_node(
        provider, node, [f"iptables -w -S {resilience.PARTITION_CHAIN} 2>&1 || true"], check=False
    )
    if "-A " in left:
        raise SwarmError(f"{node}: the partition's rules are still there after healing:\n{left}")


class Recorder:
    """Looks at the cluster every ``interval`` seconds, in a thread, while a scenario runs:
    node states and leaders, and each service's running tasks per node, into a Timeline; at
    most ``limit`` seconds.

    Example::

        with Recorder(managers, "DEV", timeline, limit=120):
            provider.stop_node("worker-2")
            ...
        print(timeline.render())
    """

    def __init__(
        self,
        managers: Managers,
        stack: str,
        timeline: resilience.Timeline,
        limit: float,
        interval: float = 0.25,
    ) -> None:
        self.managers = managers
        self.stack = stack
        self.timeline = timeline
        self.limit = limit
        self.interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="swarm-recorder", daemon=True)

    def look(self) -> None:
        """One look (also called by the thread)."""
        now = time.monotonic()
        try:
            client = self.managers.client(patience=0)  # silent managers are a state it records
            nodes = client.api.nodes()
            tasks = client.api.tasks(filters={"desired-state": "running"})
            services = {
                s["ID"]: s["Spec"]["Name"]
                for s in client.api.services(filters={"label": f"{STACK_LABEL}={self.stack}"})
            }
        except (SwarmError, *TRANSIENT) as exc:
            self.timeline.see(now, "managers", f"silent ({_explained(exc)})")
            return
        self.timeline.see(now, "managers", "answering")
        names = {n["ID"]: n["Description"]["Hostname"] for n in nodes}
        for node in nodes:
            self.timeline.see(now, node["Description"]["Hostname"], resilience.node_state(node))
        for service_id, service in sorted(services.items(), key=lambda kv: kv[1]):
            where = sorted(
                names.get(t.get("NodeID", ""), "?")
                for t in tasks
                if t.get("ServiceID") == service_id and (t.get("Status") or {}).get("State") == "running"
            )
            spread = ", ".join(
                f"{n} x{where.count(n)}" if where.count(n) > 1 else n for n in sorted(set(where))
            )
            self.timeline.see(now, service, f"{len(where)} running ({spread or 'none'})")

    def _loop(self) -> None:
        end = time.monotonic() + self.limit
        while not self._stop.wait(self.interval) and time.monotonic() < end:
            self.look()

    @contextmanager
    def recording(self) -> Iterator[Recorder]:
        self.look()
        self._thread.start()
        try:
            yield self
        finally:
            self._stop.set()
            self._thread.join(timeout=10)
            self.look()


def task_history(managers: Managers, stack: str, origin: float) -> list[str]:
    """The tasks' moves of ``stack`` since ``origin`` (POSIX time), from swarm's task history."""
    try:
        client = managers.client()
        services = {
            s["ID"]: s["Spec"]["Name"]
            for s in client.api.services(filters={"label": f"{STACK_LABEL}={stack}"})
        }
        nodes = {n["ID"]: n["Description"]["Hostname"] for n in client.api.nodes()}
        tasks = [t for t in client.api.tasks() if t.get("ServiceID") in services]
    except (SwarmError, *TRANSIENT) as exc:
        return [f"(no task history: {_explained(exc)})"]
    return resilience.task_moves(tasks, services, nodes, origin)


def running_containers(
    engines: Mapping[str, docker.DockerClient], stack: str, services: Collection[str]
) -> dict[str, str]:
    """container id -> node, of every running task container of ``stack``'s ``services`` (full
    names), asked of each node's own engine (what runs, whatever the managers know)."""
    found: dict[str, str] = {}
    for node, engine in engines.items():
        try:
            listed = engine.api.containers(filters={"label": f"{STACK_LABEL}={stack}", "status": "running"})
        except TRANSIENT:
            continue  # a node that is down runs nothing the check can see
        found.update(
            {c["Id"]: node for c in listed if (c.get("Labels") or {}).get(SERVICE_NAME_LABEL) in services}
        )
    return found


def task_containers(engine: docker.DockerClient, stack: str) -> dict[str, str]:
    """task id -> container id of the running task containers of ``stack`` on one engine."""
    listed = engine.api.containers(filters={"label": f"{STACK_LABEL}={stack}", "status": "running"})
    return {str((c.get("Labels") or {}).get("com.docker.swarm.task.id", "")): c["Id"] for c in listed}


def settings_note(attrs: Mapping[str, Any]) -> str:
    """The swarm's timers, as a line for the report."""
    timers = resilience.SwarmTimers.of_swarm(attrs)
    return f"heartbeat period {timers.heartbeat:g} s, election tick {timers.election_tick}"


def record_figure(item: pytest.Item, figure: resilience.Figure) -> None:
    """Put a measured figure in ``item``'s JUnit properties and the run's report ("Resilience").

    Example::

        record_figure(request.node, Figure("worker lost", "to Down", 12.4, deadline=timers.node_down()))
    """
    item.user_properties.extend(figure.properties())
    lifecycle_of(item.config).figures.append(figure)
