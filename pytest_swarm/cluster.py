"""Cluster, Node, Service and Task: thin views over the swarm API dicts of a manager.

Views are snapshots: read the named properties, call ``reload()`` or ask the cluster again for
a fresh look. A stack has no API object: its services carry ``com.docker.stack.namespace``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import docker

from .placement import NodeFacts

STACK_LABEL = "com.docker.stack.namespace"


def seconds(timestamp: str) -> float:
    """Swarm's RFC 3339 timestamps (nanoseconds) as POSIX seconds (microsecond precision)."""
    head, _, tail = timestamp.rstrip("Z").partition(".")
    return datetime.fromisoformat(f"{head}.{(tail + '000000')[:6]}+00:00").timestamp()


class _View:
    """A named-property view over one raw API dict."""

    def __init__(self, attrs: Mapping[str, Any]) -> None:
        self.attrs: dict[str, Any] = dict(attrs)

    def _get(self, *path: str, default: Any = None) -> Any:
        value: Any = self.attrs
        for key in path:
            if not isinstance(value, Mapping) or key not in value:
                return default
            value = value[key]
        return value

    @property
    def id(self) -> str:
        return str(self.attrs["ID"])


class Node(_View):
    """A swarm node as the manager sees it.

    Example::

        node = swarm.node("worker-1")
        assert node.ready and node.role == "worker", node.describe()
    """

    @property
    def name(self) -> str:
        return str(self._get("Description", "Hostname", default=""))

    @property
    def role(self) -> str:
        return str(self._get("Spec", "Role", default=""))

    @property
    def state(self) -> str:
        return str(self._get("Status", "State", default=""))

    @property
    def availability(self) -> str:
        return str(self._get("Spec", "Availability", default=""))

    @property
    def leader(self) -> bool:
        return bool(self._get("ManagerStatus", "Leader", default=False))

    @property
    def labels(self) -> dict[str, str]:
        return dict(self._get("Spec", "Labels", default=None) or {})

    @property
    def engine_labels(self) -> dict[str, str]:
        return dict(self._get("Description", "Engine", "Labels", default=None) or {})

    @property
    def engine_version(self) -> str:
        return str(self._get("Description", "Engine", "EngineVersion", default=""))

    @property
    def addr(self) -> str:
        return str(self._get("Status", "Addr", default=""))

    @property
    def platform(self) -> dict[str, str]:
        return dict(self._get("Description", "Platform", default=None) or {})

    def facts(self) -> NodeFacts:
        """What placement constraints look at."""
        return NodeFacts(
            id=self.id,
            hostname=self.name,
            role=self.role,
            os=self.platform.get("OS", ""),
            arch=self.platform.get("Architecture", ""),
            labels=self.labels,
            engine_labels=self.engine_labels,
        )

    @property
    def ready(self) -> bool:
        return self.state == "ready" and self.availability == "active"

    def describe(self) -> str:
        role = "manager (Leader)" if self.leader else self.role
        labels = ",".join(f"{k}={v}" for k, v in sorted(self.labels.items())) or "-"
        state = f"{self.state}/{self.availability}"
        return f"{self.name}: {role}, {state}, labels {labels}, engine {self.engine_version}"


class Task(_View):
    """One task of a service.

    Example::

        for task in swarm_stack.service("ui").running_tasks():
            print(task.id[:12], swarm.node_names_by_id()[task.node_id], task.image)
    """

    @property
    def service_id(self) -> str:
        return str(self.attrs.get("ServiceID", ""))

    @property
    def node_id(self) -> str:
        return str(self.attrs.get("NodeID", ""))

    @property
    def slot(self) -> int | None:
        slot = self.attrs.get("Slot")
        return int(slot) if slot is not None else None

    @property
    def state(self) -> str:
        return str(self._get("Status", "State", default=""))

    @property
    def desired_state(self) -> str:
        return str(self.attrs.get("DesiredState", ""))

    @property
    def error(self) -> str:
        return str(self._get("Status", "Err", default="") or "")

    @property
    def message(self) -> str:
        return str(self._get("Status", "Message", default="") or "")

    @property
    def container_id(self) -> str:
        return str(self._get("Status", "ContainerStatus", "ContainerID", default="") or "")

    @property
    def exit_code(self) -> int | None:
        code = self._get("Status", "ContainerStatus", "ExitCode")
        return None if code is None else int(code)

    @property
    def image(self) -> str:
        return str(self._get("Spec", "ContainerSpec", "Image", default=""))

    @property
    def timestamp(self) -> str:
        return str(self._get("Status", "Timestamp", default=""))

    @property
    def created_at(self) -> str:
        return str(self.attrs.get("CreatedAt", ""))


class Service(_View):
    """A swarm service and the tasks it has (``reload()`` for a fresh look).

    Example::

        ui = swarm_stack.service("ui")
        assert ui.reload().running == ui.replicas, ui.last_error()
    """

    def __init__(self, attrs: Mapping[str, Any], client: docker.DockerClient) -> None:
        super().__init__(attrs)
        self._client = client

    def reload(self) -> Service:
        """A fresh look, with the running/desired counts (only the list call carries them)."""
        listed = [
            s for s in self._client.api.services(filters={"id": self.id}, status=True) if s["ID"] == self.id
        ]
        self.attrs = listed[0] if listed else self._client.api.inspect_service(self.id)
        return self

    @property
    def name(self) -> str:
        return str(self._get("Spec", "Name", default=""))

    def replace_spec(self, spec: Mapping[str, Any]) -> None:
        """Make ``spec`` the service's whole spec (through the API: the CLI would merge flags)."""
        self.reload()
        self._client.api.update_service(
            self.id,
            self._get("Version", "Index"),
            name=spec["Name"],
            labels=spec.get("Labels"),
            mode=spec.get("Mode"),
            task_template=spec["TaskTemplate"],
            update_config=spec.get("UpdateConfig"),
            rollback_config=spec.get("RollbackConfig"),
            endpoint_spec=spec.get("EndpointSpec"),
        )

    @property
    def stack(self) -> str:
        return str(self._get("Spec", "Labels", STACK_LABEL, default=""))

    @property
    def mode(self) -> str:
        mode = self._get("Spec", "Mode", default={}) or {}
        return "global" if "Global" in mode else "replicated"

    @property
    def replicas(self) -> int | None:
        """Declared replicas of a replicated service; None for a global one."""
        replicas = self._get("Spec", "Mode", "Replicated", "Replicas")
        return None if replicas is None else int(replicas)

    @property
    def max_replicas_per_node(self) -> int | None:
        """``placement.max_replicas_per_node``, None when unset (0 in the spec)."""
        most = self._get("Spec", "TaskTemplate", "Placement", "MaxReplicas", default=0)
        return int(most) or None

    @property
    def host_ports(self) -> list[int]:
        """Ports published in host mode: one task per node can hold each."""
        ports = self._get("Spec", "EndpointSpec", "Ports", default=None) or []
        return [
            int(p["PublishedPort"])
            for p in ports
            if p.get("PublishMode") == "host" and p.get("PublishedPort")
        ]

    @property
    def image(self) -> str:
        image = str(self._get("Spec", "TaskTemplate", "ContainerSpec", "Image", default=""))
        return image.split("@", 1)[0]

    @property
    def constraints(self) -> list[str]:
        return list(self._get("Spec", "TaskTemplate", "Placement", "Constraints", default=None) or [])

    @property
    def update_state(self) -> str:
        return str(self._get("UpdateStatus", "State", default="") or "")

    @property
    def running(self) -> int:
        return int(self._get("ServiceStatus", "RunningTasks", default=0) or 0)

    @property
    def desired(self) -> int:
        return int(self._get("ServiceStatus", "DesiredTasks", default=0) or 0)

    def tasks(self, desired_state: str | None = None) -> list[Task]:
        filters: dict[str, Any] = {"service": self.id}
        if desired_state:
            filters["desired-state"] = desired_state
        return [Task(t) for t in self._client.api.tasks(filters=filters)]

    def running_tasks(self) -> list[Task]:
        return [t for t in self.tasks(desired_state="running") if t.state == "running"]

    def whole(self) -> bool:
        """Every task swarm wants runs, and no other: running tasks = replicas (global: one per
        eligible node) = swarm's own running count, which still counts tasks being stopped."""
        self.reload()
        wanted = self.replicas if self.replicas is not None else self.desired
        return len(self.running_tasks()) == wanted == self.running

    def last_error(self) -> str:
        """The newest task error or status message of this service, if any."""
        tasks = sorted(self.tasks(), key=lambda t: t.timestamp, reverse=True)
        for task in tasks:
            if task.error:
                return f"{task.state}: {task.error}"
        return ""


@dataclass
class Cluster:
    """A running swarm: the manager's API, the nodes' addresses and what they can do.

    Attributes:
        provider: the provider's name (dind, uml, ...).
        client: a docker client on the manager (master-1).
        manager_url: the manager's API endpoint, e.g. ``unix:///tmp/.../docker.sock``.
        addresses: node name -> address reachable from the test runner.
        capabilities: node name -> capability -> present (e.g. "ipvs").
        engines: node name -> a docker client on that node's own engine, where reachable.
        seconds_to_ready: how long provisioning (or attaching) took.
        unprobed: node name -> why its capabilities could not be probed (they count as missing).

    Example::

        leaders = [n.name for n in swarm.nodes() if n.leader]
        assert leaders == ["master-1"]
        answers = requests.get(f"http://{swarm.addresses['worker-2']}:9292/", timeout=5)
    """

    provider: str
    client: docker.DockerClient
    manager_url: str
    addresses: dict[str, str]
    capabilities: dict[str, dict[str, bool]] = field(default_factory=dict)
    engines: dict[str, docker.DockerClient] = field(default_factory=dict)
    seconds_to_ready: float = 0.0
    unprobed: dict[str, str] = field(default_factory=dict)

    def nodes(self) -> list[Node]:
        return sorted((Node(n) for n in self.client.api.nodes()), key=lambda n: n.name)

    def node(self, name: str) -> Node:
        for node in self.nodes():
            if node.name == name:
                return node
        raise KeyError(f"no swarm node named {name!r}; nodes: {[n.name for n in self.nodes()]}")

    def node_names_by_id(self) -> dict[str, str]:
        return {n.id: n.name for n in self.nodes()}

    def services(self, stack: str | None = None) -> list[Service]:
        filters = {"label": f"{STACK_LABEL}={stack}"} if stack else None
        raw = self.client.api.services(filters=filters, status=True)
        return sorted((Service(s, self.client) for s in raw), key=lambda s: s.name)

    def service(self, name: str) -> Service:
        return Service(self.client.api.inspect_service(name), self.client).reload()

    def missing_capability(self, capability: str) -> list[str]:
        """Nodes that lack ``capability``."""
        return sorted(n for n, caps in self.capabilities.items() if not caps.get(capability))
