"""machine: swarm nodes as docker-machine machines (``--driver google`` for GCE, as in the lesson).

``machine_cli`` drives docker-machine and records what this run created; the provider reaches
each machine's engine over TLS with the certificates docker-machine made, then forms the swarm
with ``base.form_swarm`` like every provider.

Images: the stack's images are built on the test runner and copied to every node's engine
(``docker save`` once, ``docker load`` on each engine over its TLS API), the same path dind
uses; no registry is needed.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, ClassVar

import docker.errors

from .. import images
from ..capabilities import probe_capabilities
from ..cluster import Cluster
from ..commands import TLS_CERT_PATHS
from ..errors import ProvisioningError
from ..ownership import remove_run_dir
from .base import (
    Engine,
    LocalEngine,
    Provider,
    ProviderRun,
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
from .engines import TRANSIENT, engine_client, tls_config
from .machine_cli import CREATE_TIMEOUT, MachineCli, Machines, Reach, create_flags, remove_session, sweep


class MachineProvider:
    """master-1 and worker-1..N created with docker-machine, or existing machines named."""

    name: ClassVar[str] = "machine"
    owns_swarm: ClassVar[bool] = True  # the machines it created; named machines stay (see down)
    can_change_nodes: ClassVar[bool] = True
    fixed_nodes_reason: ClassVar[str] = ""
    joins_networks_first: ClassVar[bool] = True
    preloads_images: ClassVar[bool] = False
    # engine labels come with the machines it creates (docker-machine --engine-label), not with
    # named ones: only node labels are counted on before deploying
    gives_labels: ClassVar[tuple[str, ...]] = ("node",)
    second_cluster_cost: ClassVar[str] = (
        "as many machines again, created and removed by the run (cloud time, minutes to create)"
    )

    def __init__(self, run: ProviderRun, *, cli: MachineCli | None = None) -> None:
        """``cli``: the docker-machine executable (default: ``docker-machine`` on PATH)."""
        s = run.settings
        self.session = run.session
        self.settings = s
        self.progress = run.progress
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

        self.machines = Machines(self.session, cli or MachineCli(), flags, self.progress)
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
        client = engine_client(reach.engine_url, tls_config(reach.cert_path, verify=True))
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

    @classmethod
    def remove_session(cls, session_id: str, local: LocalEngine) -> list[str]:
        """Remove the machines the run recorded as created (named machines never), then its folder."""
        return remove_session(session_id)

    @classmethod
    def sweep(cls, progress: images.Progress, local: LocalEngine) -> list[str]:
        """Remove the machines dead runs created, each by its record."""
        return sweep(progress)


if TYPE_CHECKING:  # mypy holds the class to the contract the registry promises
    _KIND: type[Provider] = MachineProvider
