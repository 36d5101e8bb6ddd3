"""machine: swarm nodes as docker-machine machines (``--driver google`` for GCE, as in the lesson).

Two layers, kept apart so the first can be tested without a cloud:

* ``MachineCli`` + ``MachineState``: the docker-machine command lines (create, ip, inspect, env,
  rm, ls), the classification of its errors (quota, rate limits, 5xx and timeouts are retried
  with backoff; auth and invalid arguments are not) and the record of which machines THIS run
  created (``machine.json`` in the run folder; only those are ever removed).
* ``MachineProvider``: reaches each machine's engine over TLS with the certificates
  docker-machine made, then forms the swarm with ``base.form_swarm`` like every provider.

Images: the stack's images are built on the test runner and copied to every node's engine
(``docker save`` once, ``docker load`` on each engine over its TLS API), the same path dind
uses; no registry is needed. Credentials come only from the environment
(GOOGLE_APPLICATION_CREDENTIALS) or docker-machine's own store; none is read or printed here.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import docker
import docker.errors
import tenacity

from .. import images
from ..capabilities import probe_capabilities
from ..cluster import Cluster
from ..commands import TLS_CERT_PATHS
from ..errors import ProvisioningError
from ..ownership import MACHINE_STATE_FILE, Session, is_kept, owner_alive, remove_run_dir, run_root
from .attach import client_for, tls_config
from .base import (
    TRANSIENT,
    Engine,
    admit,
    apply_node_labels,
    copy_images,
    forget,
    form_swarm,
    join_late,
    leave,
    new_node_name,
    parallel,
    wait_ready,
)

STATE_FILE = MACHINE_STATE_FILE
CREATE_TIMEOUT = 900.0  # a GCE machine with docker installed by the provisioner: minutes
QUERY_TIMEOUT = 60.0
# Substrings of docker-machine's stderr (lower-cased) that name a passing cloud condition.
TRANSIENT_MARKS = (
    "quota",
    "ratelimit",
    "rate limit",
    "rate_limit",
    "too many requests",
    "error 429",
    "error 500",
    "error 502",
    "error 503",
    "error 504",
    "backend error",
    "service unavailable",
    "temporarily unavailable",
    "timeout",
    "timed out",
    "deadline exceeded",
    "connection reset",
    "connection refused",
    "try again",
)
# ... and that mean retrying cannot help (checked first: an auth error is never retried).
PERMANENT_MARKS = (
    "could not find default credentials",
    "invalid_grant",
    "unauthorized",
    "error 401",
    "permission denied",
    "does not have permission",
    "invalid value",
    "invalid argument",
    "is not valid",
    "already exists",
    "not found",
)


class MachineError(ProvisioningError):
    """docker-machine failed; ``stderr`` says why (never credentials: it holds none)."""

    def __init__(self, message: str, stderr: str = "") -> None:
        super().__init__(message)
        self.stderr = stderr


class TransientMachineError(MachineError):
    """A cloud condition that passes (quota, rate limit, 5xx, timeout): retried with backoff."""


def is_transient(stderr: str) -> bool:
    """Classify docker-machine's stderr: True for what a retry may get past."""
    text = stderr.lower()
    if any(mark in text for mark in PERMANENT_MARKS):
        return False
    return any(mark in text for mark in TRANSIENT_MARKS)


class MachineCli:
    """The docker-machine executable: one method per subcommand, a timeout on every call."""

    def __init__(self, executable: str = "docker-machine", environ: Mapping[str, str] | None = None) -> None:
        self.executable = executable
        self.environ = dict(os.environ if environ is None else environ)

    def run(self, args: Sequence[str], timeout: float = QUERY_TIMEOUT) -> str:
        argv = [self.executable, *args]
        try:
            result = subprocess.run(
                argv, capture_output=True, text=True, timeout=timeout, env=self.environ, check=False
            )
        except FileNotFoundError as exc:
            raise MachineError(
                f"{self.executable} is not installed (or not on PATH); install docker-machine "
                "(see the README: Real clusters) or choose another --swarm-provider"
            ) from exc
        except subprocess.TimeoutExpired as exc:
            raise TransientMachineError(
                f"`{shlex.join(argv)}` did not finish within {timeout:g} s", "timed out"
            ) from exc
        if result.returncode != 0:
            stderr = (result.stderr.strip() or result.stdout.strip())[-2000:]
            kind = TransientMachineError if is_transient(stderr) else MachineError
            raise kind(f"`{shlex.join(argv)}` exited {result.returncode}: {stderr}", stderr)
        return result.stdout

    def create(self, name: str, flags: Sequence[str]) -> None:
        self.run(["create", *flags, name], timeout=CREATE_TIMEOUT)

    def ip(self, name: str) -> str:
        return self.run(["ip", name]).strip()

    def inspect(self, name: str) -> dict[str, Any]:
        found: dict[str, Any] = json.loads(self.run(["inspect", name]))
        return found

    def env(self, name: str) -> dict[str, str]:
        """``docker-machine env --shell bash NAME`` as a mapping (DOCKER_HOST, DOCKER_CERT_PATH ...)."""
        found: dict[str, str] = {}
        for line in self.run(["env", "--shell", "bash", name]).splitlines():
            if line.startswith("export ") and "=" in line:
                key, _, value = line[len("export ") :].partition("=")
                found[key.strip()] = value.strip().strip('"')
        return found

    def rm(self, name: str) -> None:
        self.run(["rm", "-y", "-f", name], timeout=CREATE_TIMEOUT)

    def ls(self) -> list[str]:
        return [n for n in self.run(["ls", "-q"]).split() if n]


def create_flags(
    *,
    driver: str,
    project: str,
    zone: str,
    machine_type: str,
    image: str,
    engine_labels: Mapping[str, str],
    extra: Sequence[str],
) -> list[str]:
    """The ``docker-machine create`` flags of one machine (the name comes last, added by create)."""
    flags = ["--driver", driver]
    if driver == "google":
        if project:
            flags += ["--google-project", project]
        flags += [
            "--google-zone",
            zone,
            "--google-machine-type",
            machine_type,
            "--google-machine-image",
            image,
        ]
    for key, value in sorted(engine_labels.items()):
        flags += ["--engine-label", f"{key}={value}"]
    return [*flags, *extra]


class MachineState:
    """Which machines this run created (or began to create): ``<run dir>/machine.json``."""

    def __init__(self, session_id: str) -> None:
        self.path = run_root() / session_id / STATE_FILE
        self._lock = threading.Lock()

    def read(self) -> dict[str, Any]:
        try:
            record: dict[str, Any] = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {"created": [], "swarm_formed_on": []}
        return record

    def _write(self, record: Mapping[str, Any]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(record, indent=2))
        tmp.replace(self.path)

    @property
    def created(self) -> list[str]:
        return list(self.read().get("created", []))

    def add(self, key: str, name: str) -> None:
        """Record ``name`` under ``key`` BEFORE acting: a crash mid-create still leaves its record."""
        with self._lock:
            record = self.read()
            if name not in record.setdefault(key, []):
                record[key].append(name)
            self._write(record)

    def forget(self, key: str, name: str) -> None:
        with self._lock:
            record = self.read()
            record[key] = [n for n in record.get(key, []) if n != name]
            self._write(record)


def retrying(attempts: int, backoff: float, sleep: Callable[[float], None]) -> tenacity.Retrying:
    """Transient docker-machine errors only, exponential backoff, bounded in count and time."""
    return tenacity.Retrying(
        retry=tenacity.retry_if_exception_type(TransientMachineError),
        stop=tenacity.stop_after_attempt(attempts) | tenacity.stop_after_delay(CREATE_TIMEOUT * attempts),
        wait=tenacity.wait_exponential(multiplier=backoff, max=120),
        sleep=sleep,
        reraise=True,
    )


class Machines:
    """The docker-machine layer: create / remove the run's machines, and read how to reach them."""

    def __init__(
        self,
        session: Session,
        cli: MachineCli,
        flags: Callable[[str], list[str]],
        progress: images.Progress,
        attempts: int = 4,
        backoff: float = 10.0,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.session = session
        self.cli = cli
        self.flags = flags  # node name -> its create flags
        self.progress = progress
        self.state = MachineState(session.id)
        self.attempts = attempts
        self.backoff = backoff
        self.sleep = sleep

    def create(self, name: str) -> None:
        """Create ``name``, retrying transient cloud errors; a half-made machine is removed first."""
        self.session.make_run_dir()
        self.state.add("created", name)
        for attempt in retrying(self.attempts, self.backoff, self.sleep):
            with attempt:
                number = attempt.retry_state.attempt_number
                if number > 1:
                    self.progress(
                        f"{name}: retrying docker-machine create (attempt {number}/{self.attempts})"
                    )
                    self._remove_quietly(name)
                self.cli.create(name, self.flags(name))
        self.progress(f"machine {name} created")

    def create_all(self, names: Sequence[str]) -> None:
        parallel(self.create, names)

    def _remove_quietly(self, name: str) -> None:
        try:
            self.cli.rm(name)
        except MachineError:
            pass  # nothing (or nothing usable) was made: create starts afresh

    def remove(self, name: str) -> None:
        """Remove a machine this run created; any other is refused."""
        if name not in self.state.created:
            raise ProvisioningError(
                f"machine {name} was not created by this run ({self.session.id}); it is never removed"
            )
        try:
            self.cli.rm(name)
        except MachineError as exc:
            if "not exist" not in exc.stderr.lower():
                raise
        self.state.forget("created", name)

    def remove_created(self) -> list[str]:
        """Remove every machine this run created; returns what could not be removed."""
        problems: list[str] = []

        def remove(name: str) -> None:
            try:
                self.remove(name)
            except MachineError as exc:
                problems.append(f"machine {name}: {exc}")

        parallel(remove, self.state.created)
        return problems

    def reach(self, name: str) -> Reach:
        """How the test runner reaches ``name``: address, engine URL and certs, ssh."""
        address = self.cli.ip(name)
        env = self.cli.env(name)
        host, cert_path = env.get("DOCKER_HOST", ""), env.get("DOCKER_CERT_PATH", "")
        if not host or not cert_path:
            raise MachineError(f"`docker-machine env {name}` gave no DOCKER_HOST / DOCKER_CERT_PATH")
        driver = self.cli.inspect(name).get("Driver") or {}
        user = str(driver.get("SSHUser") or "docker-user")
        port = int(driver.get("SSHPort") or 22)
        key = str(driver.get("SSHKeyPath") or "")
        if not key and driver.get("StorePath"):
            key = str(Path(str(driver["StorePath"])) / "machines" / name / "id_rsa")
        return Reach(name, address, host, cert_path, user, port, key)


@dataclass(frozen=True)
class Reach:
    name: str
    address: str
    engine_url: str
    cert_path: str
    ssh_user: str
    ssh_port: int
    ssh_key: str

    @property
    def host_spec(self) -> str:
        spec = f"ssh://{self.ssh_user}@{self.address}:{self.ssh_port}"
        return f"{spec}?ssh_identity_file={self.ssh_key}" if self.ssh_key else spec


def remove_session(session_id: str, cli: MachineCli | None = None) -> list[str]:
    """Remove the machines a (kept or crashed) run recorded as created, then its run folder."""
    session = Session(id=session_id, owner="")
    machines = Machines(session, cli or MachineCli(), lambda _name: [], lambda _line: None)
    problems = machines.remove_created()
    if not problems:
        remove_run_dir(session_id)
    return problems


def sweep(progress: images.Progress, cli: MachineCli | None = None) -> list[str]:
    """Remove the machines of earlier runs whose owner is gone and that were not kept."""
    swept: list[str] = []
    root = run_root()
    if not root.is_dir():
        return swept
    for folder in sorted(root.iterdir()):
        if not (folder / STATE_FILE).is_file() or is_kept(folder.name):
            continue
        try:
            owner = (folder / "owner").read_text().strip()
        except OSError:
            owner = ""
        if owner_alive(owner):
            continue
        problems = remove_session(folder.name, cli)
        if problems:
            progress(f"sweep: machines of run {folder.name} not removed: {'; '.join(problems)}")
        else:
            swept.append(folder.name)
    if swept:
        progress(f"swept the machines earlier runs left: sessions {', '.join(swept)}")
    return swept


class MachineProvider:
    """master-1 and worker-1..N created with docker-machine, or existing machines named."""

    name = "machine"
    joins_networks_first = True
    can_change_nodes = True

    def __init__(
        self,
        session: Session,
        *,
        settings: Any,
        progress: images.Progress,
        client: docker.DockerClient | None = None,
        cli: MachineCli | None = None,
    ) -> None:
        s = settings
        self.session = session
        self.settings = s
        self.progress = progress
        self.local = client
        self.names: list[str] = list(s.machines) or list(s.node_names)
        self.create = not s.machines

        def flags(node: str) -> list[str]:
            return create_flags(
                driver=s.machine_driver,
                project=s.gce_project,
                zone=s.gce_zone,
                machine_type=s.gce_machine_type,
                image=s.gce_image,
                engine_labels=s.labels_for(node, s.engine_labels),
                extra=s.machine_args,
            )

        self.machines = Machines(session, cli or MachineCli(), flags, progress)
        self._reach: dict[str, Reach] = {}
        self._engines: dict[str, Engine] = {}
        self._images: set[str] = set()
        self.cluster: Cluster | None = None

    # -- docker-machine layer -----------------------------------------------------------------
    def _check_settings(self) -> None:
        s = self.settings
        if (
            self.create
            and s.machine_driver == "google"
            and not (s.gce_project or os.environ.get("GOOGLE_PROJECT"))
        ):
            raise ProvisioningError(
                "--swarm-provider=machine with the google driver needs a GCE project: give "
                "--swarm-gce-project (or SWARM_GCE_PROJECT / GOOGLE_PROJECT), and credentials in "
                "GOOGLE_APPLICATION_CREDENTIALS"
            )

    def _connect(self, name: str) -> Engine:
        reach = self.machines.reach(name)
        self._reach[name] = reach
        client = client_for(reach.engine_url, tls_config(reach.cert_path, verify=True))
        TLS_CERT_PATHS[reach.engine_url] = reach.cert_path
        engine = Engine(name, client, reach.address)
        self._engines[name] = engine
        return engine

    # -- lifecycle -----------------------------------------------------------------------------
    def up(self) -> Cluster:
        started = time.monotonic()
        try:
            self._check_settings()
            if self.create:
                sweep(self.progress, self.machines.cli)
                self.progress(f"creating machines {', '.join(self.names)} ({self.settings.machine_driver})")
                self.machines.create_all(self.names)
            parallel(self._connect, self.names)
            manager, workers = self._engines[self.names[0]], [self._engines[n] for n in self.names[1:]]
            swarm_state = (manager.client.info().get("Swarm") or {}).get("LocalNodeState", "")
            if swarm_state != "active":
                self.machines.session.make_run_dir()
                for name in self.names:
                    self.machines.state.add("swarm_formed_on", name)
                form_swarm(manager, workers)
            wait_ready(manager.client, self.names, self.settings.timeout)
            apply_node_labels(
                manager.client, {n: v for n, v in self.settings.node_labels.items() if n in self.names}
            )
            return self._cluster(started)
        except BaseException:
            self.down()
            raise

    def _cluster(self, started: float) -> Cluster:
        manager = self._engines[self.names[0]]
        self.cluster = Cluster(
            provider=self.name,
            client=manager.client,
            manager_url=self._reach[self.names[0]].engine_url,
            addresses={n: e.address for n, e in self._engines.items()},
            engines={n: e.client for n, e in self._engines.items()},
        )
        self.cluster.capabilities = probe_capabilities(self, list(self._engines))
        self.cluster.seconds_to_ready = time.monotonic() - started
        return self.cluster

    def attach(self, nodes: Sequence[str]) -> Cluster:
        """Reach the machines of a kept cluster again."""
        started = time.monotonic()
        self.names = list(nodes)
        parallel(self._connect, self.names)
        wait_ready(self._engines[self.names[0]].client, self.names, self.settings.timeout)
        return self._cluster(started)

    def add_node(self, role: str = "worker", labels: Mapping[str, str] | None = None) -> str:
        if self.cluster is None:
            raise ProvisioningError("add_node needs a running cluster (call up() first)")
        name = new_node_name(role, self._engines)
        self.machines.create(name)
        engine = self._connect(name)
        self.load_images(sorted(self._images))
        manager = self._engines[self.names[0]]
        join_late(manager, engine, role, self.settings.timeout)
        self.names.append(name)
        wait_ready(manager.client, self.names, self.settings.timeout)
        if labels:
            apply_node_labels(manager.client, {name: labels})
        admit(self.cluster, name, engine, probe_capabilities(self, [name]))
        return name

    def remove_node(self, name: str) -> None:
        """Leave the swarm and remove the machine (only a machine this run created)."""
        if name == self.names[0]:
            raise ProvisioningError(f"{name} is the manager of this cluster and can't be removed")
        if name not in self.machines.state.created:
            raise ProvisioningError(f"machine {name} was not created by this run; it is never removed")
        manager = self._engines[self.names[0]].client
        node_id = leave(manager, self._engines.pop(name))
        self.machines.remove(name)
        self.names.remove(name)
        forget(manager, self.cluster, name, node_id)

    def stop_node(self, name: str) -> None:
        self.machines.cli.run(["stop", name], timeout=CREATE_TIMEOUT)

    def start_node(self, name: str) -> None:
        self.machines.cli.run(["start", name], timeout=CREATE_TIMEOUT)
        self._connect(name)  # its address may have changed
        wait_ready(self._engines[self.names[0]].client, self.names, self.settings.timeout)

    def load_images(self, refs: Sequence[str]) -> None:
        """Copy what the stack needs to every machine's engine: one ``docker save``, loaded in parallel."""
        self._images.update(refs)
        self.session.make_run_dir()
        clients = {n: e.client for n, e in self._engines.items()}
        copy_images(clients, refs, self.session.run_dir / "images.tar")

    def address(self, node: str) -> str:
        return self._engines[node].address

    def host_spec(self, node: str) -> str:
        return self._reach[node].host_spec

    def keep(self) -> dict[str, str]:
        return {
            "provider": self.name,
            "nodes": ",".join(self.names),
            "DOCKER_HOST": self._reach[self.names[0]].engine_url if self.names[0] in self._reach else "",
        }

    def down(self) -> None:
        """Remove the machines this run created; named machines stay (leaving a swarm this run formed)."""
        created = set(self.machines.state.created)
        formed = set(self.machines.state.read().get("swarm_formed_on", []))
        for name in [n for n in self.names if n in formed and n not in created and n in self._engines]:
            try:
                self._engines[name].client.swarm.leave(force=True)
            except (docker.errors.APIError, *TRANSIENT):
                pass  # not in the swarm (any more)
        for engine in self._engines.values():
            engine.client.close()
        self._engines.clear()
        problems = self.machines.remove_created()
        if problems:
            raise ProvisioningError("; ".join(problems))
        remove_run_dir(self.session.id)
