"""What the resilience scenarios look at while nodes fail: the stack on the cluster of its own as
the managers that still answer show it (nodes, services, running tasks), whether it is whole
without some nodes, the conditions a scenario waits for, and how long swarm may take to replace
what a disruption hit.

Only looks: what a scenario changes is in ``resilience_scenarios.py``.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence

import docker
import docker.errors

from . import declared, disruption, resilience
from .cluster import STACK_LABEL, Cluster, Node, Service, seconds
from .errors import SwarmError
from .network_join import stalls_on_parallel_joins
from .placement import eligible
from .stack import DeployedStack
from .waiting import Poll


class StackView:
    """``stack`` on ``swarm``, through ``managers`` (whichever still answers).

    Example::

        view = StackView(own.cluster, own.stack, disruption.Managers(own.cluster))
        done, state, pinned = view.whole(without={"worker-1"})
    """

    def __init__(self, swarm: Cluster, stack: DeployedStack, managers: disruption.Managers) -> None:
        self.swarm = swarm
        self.stack = stack
        self.managers = managers
        # a replacement counts as running once its first healthcheck passed: read once, up front
        self.health = {name: self._health(name) for name in stack.declared_services}
        # how long a task takes to start on these nodes, as the deploy just showed
        self.start = resilience.task_start(self._slowest_start())

    def _health(self, name: str) -> declared.Healthcheck | None:
        image = str(self.stack.declared(name).get("image", ""))
        try:
            config = self.swarm.client.images.get(image).attrs.get("Config") or {}
        except docker.errors.DockerException:
            config = {}
        return declared.healthcheck(self.stack.declared(name), config)

    def _slowest_start(self) -> float:
        """The longest any running task of the stack took from created to running."""
        return max(
            (
                seconds(t.timestamp) - seconds(t.created_at)
                for service in self.services().values()
                for t in service.running_tasks()
                if t.timestamp and t.created_at
            ),
            default=0.0,
        )

    # -- the nodes, services and tasks -------------------------------------------------------------
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

    def workers_containers(self) -> dict[str, str]:
        """The running task containers of the stack's declared services on the workers (container
        id -> node): not those of the helpers deployed under the stack's name, such as the
        network-join tasks, which may still be stopping right after the deploy."""
        workers = {n: e for n, e in self.swarm.engines.items() if n not in self.managers.names}
        services = {f"{self.stack.name}_{name}" for name in self.stack.declared_services}
        return disruption.running_containers(workers, self.stack.name, services)

    def explain_stopped(self, containers: Sequence[str]) -> list[str]:
        """For each (short) container id, its task as the managers now show it: which service and
        slot, its state and desired state, its error; so a stopped container says whether swarm
        replaced its task (and why) or the container went while its task still counts as running."""
        try:
            tasks = {t.container_id[:12]: (name, t) for name, s in self.services().items() for t in s.tasks()}
        except (docker.errors.DockerException, SwarmError) as exc:
            return [*containers, f"(their tasks unknown: the managers did not answer: {exc})"]
        said = []
        for short in containers:
            if short not in tasks:
                said.append(f"{short}: no task of the stack has it now")
                continue
            name, task = tasks[short]
            why = f", {task.error}" if task.error else ""
            said.append(f"{short}: {name} slot {task.slot}, {task.state} (desired {task.desired_state}{why})")
        return said

    # -- whether it holds ---------------------------------------------------------------------------
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

    # -- what a scenario waits for (probes for measure) -----------------------------------------------
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

    def globals_for(self, node: str) -> list[str]:
        """The global services that may run on ``node`` (its constraints met)."""
        target = self.nodes()[node]
        services = self.services()
        return [name for name in self.globals() if eligible([target.facts()], services[name].constraints)]

    def globals_on(self, node: str) -> Callable[[], Poll[None]]:
        """Every global service that may run on ``node`` runs a task there."""

        def probe() -> Poll[None]:
            target = self.nodes()[node]
            services = self.services()
            missing = [
                name
                for name in self.globals_for(node)
                if not any(t.node_id == target.id for t in services[name].running_tasks())
            ]
            return Poll(not missing, f"no task on {node} yet: {missing}" if missing else "all there")

        return probe

    def no_task_on(self, node: str) -> Callable[[], Poll[None]]:
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

    def stale_gone(self, node: str) -> Callable[[], Poll[None]]:
        """The node runs no container of a task swarm no longer wants running."""
        engine = self.swarm.engines[node]

        def probe() -> Poll[None]:
            wanted = {t.id for s in self.services().values() for t in s.tasks(desired_state="running")}
            stale = sorted(
                t[:12] for t in disruption.task_containers(engine, self.stack.name) if t not in wanted
            )
            return Poll(not stale, f"{node} still runs replaced tasks {stale}")

        return probe

    def has_leader(self) -> Callable[[], Poll[None]]:
        """A leader, and every node Ready."""

        def probe() -> Poll[None]:
            nodes = self.nodes()
            leader = [n.name for n in nodes.values() if n.leader]
            late = [n.name for n in nodes.values() if not n.ready]
            return Poll(bool(leader) and not late, f"leader {leader or 'none'}, not Ready: {late}")

        return probe

    # -- how long swarm may take to replace ---------------------------------------------------------
    def restored(self, hit: Counter[str], drained: bool = False) -> tuple[str, resilience.Deadline]:
        """The longest replacement of the services that had tasks where the disruption hit."""
        return resilience.longest(
            (name, resilience.replacement(self.stack.declared(name), self.health[name], drained, self.start))
            for name, count in hit.items()
            if count and name in self.replicated()
        )

    def global_deadline(self, node: str, restarted: bool = False) -> resilience.Deadline:
        """The longest start of the global services that may run on ``node``; on a node whose
        engine just ``restarted``, with the stall its overlay joins may wait out."""
        target = self.nodes()[node]
        deadline = resilience.longest(
            (name, resilience.replacement(self.stack.declared(name), self.health[name], start=self.start))
            for name in self.globals_for(node)
        )[1]
        # a restarted engine joins ingress while its global tasks join their networks: two joins
        # at once, which engines before 29.6 may stall on (seen: the task running 31 s after)
        if restarted and stalls_on_parallel_joins([target.engine_version]):
            deadline += resilience.overlay_join_stall()
        return deadline
