"""Hosts reached over ssh, the record: what a run found and did on them (``<run>/ssh.json``),
each change written before it is made, and the taking back of exactly what a record lists (at
the end of the run, by ``pytest-swarm down``, or by the sweep of a killed run).

Taken back: the stacks the run deployed (``ownership.record_stack``) and the node labels it
added, on a swarm it found; the hosts it made join leave, and a swarm it formed is left by every
host (its stacks and labels go with it), with the task containers and the ``docker_gwbridge``
network that joining left behind. Images copied to the hosts stay (a later run finds them).
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import threading
import time
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import docker
import docker.errors

from ..cluster import Node
from ..commands import run_docker
from ..errors import CommandError, ConvergenceTimeout, SwarmError
from ..ownership import (
    SSH_STATE_FILE,
    is_kept,
    owner_alive,
    process_start_time,
    recorded_stacks,
    remove_run_dir,
    run_root,
)
from ..waiting import Poll, wait_for
from .base import parallel
from .engines import TRANSIENT, engine_client
from .processes import alive, stop_recorded
from .remote_access import Remote, SshAccess, open_forward, preflight

STACK_LABEL = "com.docker.stack.namespace"
TASK_LABEL = "com.docker.swarm.task.id"
GWBRIDGE = "docker_gwbridge"
REMOVE_TIMEOUT = 120.0
STALE_AFTER = 5.0  # seconds after leaving that an ingress endpoint still on docker_gwbridge is stale
Progress = Callable[[str], None]


class RemoteState:
    """The record of one run on its hosts: ``<run dir>/ssh.json``, written atomically."""

    def __init__(self, session_id: str) -> None:
        self.session_id = session_id
        self.path = run_root() / session_id / SSH_STATE_FILE
        self._lock = threading.Lock()

    def read(self) -> dict[str, Any]:
        try:
            record: dict[str, Any] = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {}
        return record

    def write(self, record: Mapping[str, Any]) -> None:
        with self._lock:
            self._write(record)

    def _write(self, record: Mapping[str, Any]) -> None:
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(record, indent=2))
        tmp.replace(self.path)

    def update(self, **changes: Any) -> None:
        with self._lock:
            self._write({**self.read(), **changes})

    def host(self, name: str, **changes: Any) -> None:
        with self._lock:
            record = self.read()
            record.setdefault("hosts", {}).setdefault(name, {}).update(changes)
            self._write(record)

    def add(self, key: str, value: str) -> None:
        with self._lock:
            record = self.read()
            if value not in record.setdefault(key, []):
                record[key].append(value)
            self._write(record)

    def recorder(self, name: str) -> Callable[[subprocess.Popen[bytes]], None]:
        """What ``open_forward`` calls with a host's new connection: its pid and start, recorded."""
        return lambda proc: self.host(name, ssh_pid=proc.pid, ssh_start=process_start_time(proc.pid))

    def label(self, node: str, before: Mapping[str, str | None]) -> None:
        """Note a node's labels as they were, before the run changes them."""
        with self._lock:
            record = self.read()
            record.setdefault("labels", {}).setdefault(node, {}).update(before)
            self._write(record)


def socket_path(session_id: str, name: str) -> Path:
    return run_root() / session_id / name / "docker.sock"


def take_back(
    record: Mapping[str, Any],
    engines: Mapping[str, docker.DockerClient],
    manager_url: str,
    skip: Collection[str] = (),
) -> list[str]:
    """Undo what ``record`` says the run did, on the hosts whose engine is in ``engines``
    (``skip``: hosts that go away whole, e.g. machines the run created); returns what stays."""
    problems: list[str] = []
    session_id = str(record.get("session", ""))
    manager = str(record.get("manager", ""))
    formed = bool(record.get("formed"))
    hosts: Mapping[str, Mapping[str, Any]] = record.get("hosts", {})
    manager_client = engines.get(manager) if manager not in skip else None
    stacks = [s for s in recorded_stacks(session_id) if s not in record.get("stacks_before", [])]
    if not formed:
        labels: Mapping[str, Mapping[str, str | None]] = record.get("labels", {})
        if manager_client is None and (stacks or labels) and manager not in skip:
            problems.append(f"{manager} not reached: stacks {stacks} and labels {dict(labels)} stay")
        elif manager_client is not None and (stacks or labels):
            try:
                problems += remove_stacks(manager_client, manager_url, stacks, list(engines.values()))
                problems += unlabel(manager_client, labels)
            except (docker.errors.DockerException, *TRANSIENT) as exc:
                problems.append(f"stacks {stacks} and labels {dict(labels)} not taken back: {exc}")
    workers = [n for n in record.get("joined", []) if n not in skip and n != manager]
    ingress = ingress_network(manager_client) if workers or formed else None

    def depart(name: str) -> list[str]:
        client = engines.get(name)
        if client is None:
            return [f"{name} not reached: it is still in the swarm"]
        try:
            if ingress is not None and not hosts.get(name, {}).get("gwbridge", True):
                settle(client, name, ingress)
            node_id = leave(client)
            if node_id and not formed and manager_client is not None:
                manager_client.api.remove_node(node_id, force=True)
            had_gwbridge = bool(hosts.get(name, {}).get("gwbridge", True))
            return clear(client, name, had_gwbridge, stacks if formed else [])
        except (docker.errors.DockerException, *TRANSIENT) as exc:
            return [f"{name}: leaving the swarm failed: {exc}"]

    for found in parallel(depart, workers):
        problems += found
    if formed and manager not in skip:  # last: the workers left a swarm that still had its manager
        problems += depart(manager)
    return problems


def ingress_network(manager: docker.DockerClient | None) -> str | None:
    """The swarm's ingress network, as its manager knows it (None: no manager, or no ingress)."""
    if manager is None:
        return None
    try:
        return next((str(n["Name"]) for n in manager.api.networks() if n.get("Ingress")), None)
    except (docker.errors.DockerException, *TRANSIENT):
        return None


def settle(client: docker.DockerClient, name: str, ingress: str) -> None:
    """Wait (bounded) until a node that joined has set up its ingress sandbox, which makes
    docker_gwbridge: one still being set up when the node leaves finishes after it, and leaves
    docker_gwbridge behind (seen on a UML host that left 10 s after joining)."""

    def probe() -> Poll[None]:
        try:
            containers = client.api.inspect_network(ingress).get("Containers") or {}
        except docker.errors.NotFound:
            containers = {}
        return Poll("ingress-sbox" in containers, "no ingress sandbox yet")

    with contextlib.suppress(ConvergenceTimeout):
        wait_for(probe, what=f"{name}'s ingress sandbox", timeout=30, interval=0.2, transient=TRANSIENT)


def leave(client: docker.DockerClient) -> str:
    """The engine leaves its swarm (force); returns the node id it had ("" when in none)."""
    swarm = client.info().get("Swarm") or {}
    if swarm.get("LocalNodeState") in ("", "inactive", None):
        return ""
    client.swarm.leave(force=True)
    return str(swarm.get("NodeID", ""))


def clear(client: docker.DockerClient, name: str, had_gwbridge: bool, stacks: Sequence[str]) -> list[str]:
    """What joining left on a host that left: task containers, the volumes of ``stacks`` (of a
    swarm the run formed), and docker_gwbridge when joining made it."""
    since = time.monotonic()

    def probe() -> Poll[None]:
        left = [c["Id"] for c in client.api.containers(all=True, filters={"label": TASK_LABEL})]
        for container in left:
            try:
                client.api.remove_container(container, force=True, v=True)
            except docker.errors.NotFound:
                pass
        for stack in [] if left else stacks:
            for volume in client.volumes.list(filters={"label": f"{STACK_LABEL}={stack}"}):
                volume.remove(force=True)
        if not had_gwbridge and client.api.networks(names=[GWBRIDGE]):
            if time.monotonic() - since > STALE_AFTER:
                drop_stale_ingress_endpoint(client)
            try:
                client.api.remove_network(GWBRIDGE)
            except docker.errors.NotFound:
                pass
        gw = client.api.networks(names=[GWBRIDGE]) if not had_gwbridge else []
        return Poll(not left and not gw, f"{len(left)} task containers, {len(gw)} {GWBRIDGE}")

    try:
        wait_for(probe, what=f"{name} cleared", timeout=60, interval=0.5, transient=TRANSIENT)
    except ConvergenceTimeout as exc:
        return [f"{name}: {exc}"]
    return []


def drop_stale_ingress_endpoint(client: docker.DockerClient) -> None:
    """Engine 20.10 may keep the ingress sandbox's endpoint on docker_gwbridge after the node left
    the swarm (seen on UML hosts that left while their first tasks started): nothing releases it
    then, and docker_gwbridge can't be removed. It is deleted by name, as ``docker network
    disconnect -f`` does; only that endpoint, and only on an engine in no swarm."""
    if (client.info().get("Swarm") or {}).get("LocalNodeState") != "inactive":
        return
    endpoints = client.api.inspect_network(GWBRIDGE).get("Containers") or {}
    stale = endpoints.get("ingress-sbox")
    if stale:
        client.api.disconnect_container_from_network(str(stale["Name"]), GWBRIDGE, force=True)


def remove_stacks(
    client: docker.DockerClient,
    manager_url: str,
    stacks: Sequence[str],
    engines: Sequence[docker.DockerClient],
) -> list[str]:
    """``docker stack rm`` the stacks still there, then wait for their services, networks and
    volumes to be gone."""
    present = [s for s in stacks if client.api.services(filters={"label": f"{STACK_LABEL}={s}"})]
    present += [
        s for s in stacks if s not in present and client.api.networks(filters={"label": f"{STACK_LABEL}={s}"})
    ]
    if not present:
        return []
    try:
        run_docker(["stack", "rm", *present], host=manager_url, timeout=60)
    except CommandError as exc:
        if "in use by task" not in str(exc):
            return [f"docker stack rm {' '.join(present)}: {exc}"]

    def probe() -> Poll[None]:
        left = 0
        for stack in present:
            label = {"label": f"{STACK_LABEL}={stack}"}
            services = client.api.services(filters=label)
            left += len(services)
            for network in [] if services else client.api.networks(filters=label):
                try:
                    client.api.remove_network(network["Id"])
                except docker.errors.APIError:
                    left += 1  # a task of a removed service holds it until the manager reaps it
            for engine in [] if services else engines:
                for volume in engine.volumes.list(filters=label):
                    try:
                        volume.remove()
                    except docker.errors.APIError:
                        left += 1
        return Poll(left == 0, f"{left} services, networks or volumes left")

    try:
        wait_for(probe, what=f"stacks {', '.join(present)} removed", timeout=REMOVE_TIMEOUT, interval=0.5)
    except ConvergenceTimeout as exc:
        return [str(exc)]
    return []


def unlabel(client: docker.DockerClient, labels: Mapping[str, Mapping[str, str | None]]) -> list[str]:
    """Put each node's labels the run changed back as they were (absent ones removed)."""
    problems = []
    nodes = {Node(raw).name: raw for raw in client.api.nodes()}
    for name, before in labels.items():
        if name not in nodes:
            continue
        raw = nodes[name]
        spec = dict(raw["Spec"])
        current = dict(spec.get("Labels") or {})
        for key, value in before.items():
            if value is None:
                current.pop(key, None)
            else:
                current[key] = value
        spec["Labels"] = current
        try:
            client.api.update_node(raw["ID"], raw["Version"]["Index"], spec)
        except docker.errors.APIError as exc:
            problems.append(f"labels of {name} not put back: {exc.explanation}")
    return problems


def reach_recorded(
    session_id: str, record: Mapping[str, Any], names: Sequence[str]
) -> tuple[dict[str, docker.DockerClient], list[str]]:
    """Engines of the recorded hosts, over their recorded connection if it still runs, else a
    new one (recorded too); returns the engines reached and why others were not."""
    state = RemoteState(session_id)
    access = SshAccess(run_root() / session_id, _path(record.get("user_config")))
    if not access.config.is_file():
        access.write_config()
    engines: dict[str, docker.DockerClient] = {}
    problems: list[str] = []
    for name in names:
        host = record.get("hosts", {}).get(name, {})
        sock = socket_path(session_id, name)
        try:
            if not (alive(host.get("ssh_pid"), host.get("ssh_start")) and sock.exists()):
                sock.parent.mkdir(parents=True, exist_ok=True)
                remote = Remote.from_record(name, host)
                preflight(access, remote)  # a host gone says so at once (no retries until a deadline)
                open_forward(access, remote, sock, time.monotonic() + 60, state.recorder(name))
            client = engine_client(f"unix://{sock}", timeout=60)
            client.ping()
            engines[name] = client
        except (SwarmError, docker.errors.DockerException, *TRANSIENT) as exc:
            problems.append(f"{name} not reached: {exc}")
    return engines, problems


def _path(value: object) -> Path | None:
    return Path(str(value)) if value else None


def stop_connections(record: Mapping[str, Any]) -> None:
    for host in record.get("hosts", {}).values():
        stop_recorded(host.get("ssh_pid"), host.get("ssh_start"))


def remove_session(session_id: str, skip: Collection[str] = (), remove_folder: bool = True) -> list[str]:
    """Take back what the run recorded as ``session_id`` did on its hosts (``skip``: hosts that go
    away whole), stop its connections, then remove its folder; returns what stays."""
    record = RemoteState(session_id).read()
    if not record:
        if remove_folder:
            remove_run_dir(session_id)
        return []
    names = [n for n in record.get("hosts", {}) if n not in skip]
    engines, problems = reach_recorded(session_id, record, names)
    manager_url = f"unix://{socket_path(session_id, str(record.get('manager', '')))}"
    try:
        problems += take_back(RemoteState(session_id).read(), engines, manager_url, skip)
    finally:
        for client in engines.values():
            client.close()
        stop_connections(RemoteState(session_id).read())
    if not problems and remove_folder:
        remove_run_dir(session_id)
    return problems


def stale_sessions(provider: str) -> Iterator[str]:
    """Runs of ``provider`` on hosts over ssh whose owner is gone and that were not kept."""
    root = run_root()
    if not root.is_dir():
        return
    for folder in sorted(root.iterdir()):
        record = RemoteState(folder.name).read()
        if record.get("provider") != provider or is_kept(folder.name):
            continue
        if not owner_alive(str(record.get("owner", ""))):
            yield folder.name


def sweep(provider: str, progress: Progress) -> list[str]:
    """Take back what dead runs of ``provider`` did on their hosts, each by its record."""
    swept = []
    for session_id in list(stale_sessions(provider)):
        problems = remove_session(session_id)
        if problems:
            progress(f"sweeping {provider} run {session_id} left: {'; '.join(problems)}")
        else:
            swept.append(session_id)
    if swept:
        progress(f"swept what earlier {provider} runs left on their hosts: sessions {', '.join(swept)}")
    return swept
