"""machine: swarm nodes as docker-machine machines (``--driver google`` for GCE, as in the lesson).

docker-machine makes the machines (``machine_cli``: create, ip, inspect, rm, and the record of
which machines THIS run created); from there they are hosts reached over ssh like the ssh
provider's (``remote_nodes``): docker-machine's ssh user, key and address, the engine through
an ssh socket forward (no TLS port is used), testinfra over the same connection, the stack's
images copied to each engine, the swarm formed (or used) and labelled.

docker-machine's provisioners run ``sudo docker``: on a machine this run created, its ssh user
is added to the docker group so the forward may use the engine socket. The host keys of the
machines are trusted on first use, in a known_hosts file of the run's own (docker-machine itself
checks none).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, ClassVar

from .. import images
from ..cluster import Cluster
from ..errors import ProvisioningError
from ..ownership import remove_run_dir
from .base import LocalEngine, Provider, ProviderRun, new_node_name, parallel
from .engines import local_engine
from .machine_cli import CREATE_TIMEOUT, MachineCli, Machines, MachineState, create_flags, sweep
from .machine_cli import remove_session as remove_machines
from .remote_access import Remote
from .remote_nodes import RemoteNodes
from .remote_state import remove_session as take_back_session


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
        self.nodes = RemoteNodes(run, self.name, s.ssh_config)

    @property
    def cluster(self) -> Cluster | None:
        return self.nodes.cluster

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

    def remote(self, name: str) -> Remote:
        """How the run reaches machine ``name`` over ssh (from docker-machine ip and inspect)."""
        known_hosts = self.session.run_dir / "known_hosts"
        return self.machines.remote(
            name, (f"UserKnownHostsFile={known_hosts}", "StrictHostKeyChecking=accept-new")
        )

    def _may_set_up(self) -> list[str]:
        """Machines whose ssh user may be given the engine: this run's own (all: --swarm-ssh-install)."""
        return list(self.names) if self.settings.ssh_install else self.machines.state.created

    # -- lifecycle -----------------------------------------------------------------------------
    def up(self) -> Cluster:
        try:
            self._check_settings()
            if self.create:
                sweep(self.progress, self.machines.cli, remove=self._remove_dead_run)
                self.progress(f"creating machines {', '.join(self.names)} ({self.settings.machine_driver})")
                self.machines.create_all(self.names)
            self.nodes.start(self.names[0])
            remotes = parallel(self.remote, self.names)
            return self.nodes.up(remotes, install=self._may_set_up())
        except BaseException:
            self.down()
            raise

    def attach(self, nodes: Sequence[str]) -> Cluster:
        """Reach the machines of a kept cluster again."""
        self.names = list(nodes)
        return self.nodes.attach(nodes)

    def add_node(self, role: str = "worker", labels: Mapping[str, str] | None = None) -> str:
        if self.cluster is None:
            raise ProvisioningError("add_node needs a running cluster (call up() first)")
        name = new_node_name(role, self.names)
        self.machines.create(name)
        self.nodes.add(self.remote(name), role, labels, install=True)
        self.names.append(name)
        return name

    def remove_node(self, name: str) -> None:
        """Leave the swarm and remove the machine (only a machine this run created)."""
        if name == self.names[0]:
            raise ProvisioningError(f"{name} is the manager of this cluster and can't be removed")
        if name not in self.machines.state.created:
            raise ProvisioningError(f"machine {name} was not created by this run; it is never removed")
        self.nodes.remove(name)
        self.machines.remove(name)
        self.names.remove(name)

    def stop_node(self, name: str) -> None:
        self.machines.cli.run(["stop", name], timeout=CREATE_TIMEOUT)
        self.nodes.disconnect(name)

    def start_node(self, name: str) -> None:
        self.machines.cli.run(["start", name], timeout=CREATE_TIMEOUT)
        self.nodes.reconnect(self.remote(name))  # its address may have changed

    def load_images(self, refs: Sequence[str]) -> None:
        """Copy what the stack needs to every machine's engine, over ssh."""
        self.nodes.load_images(refs)

    def address(self, node: str) -> str:
        return self.nodes.address(node)

    def host_spec(self, node: str) -> str:
        return self.nodes.host_spec(node)

    def keep(self) -> dict[str, str]:
        return self.nodes.keep()

    def down(self) -> None:
        """Remove the machines this run created; on named ones take back what the run did."""
        problems = self.nodes.down(skip=self.machines.state.created)
        problems += self.machines.remove_created()
        if problems:
            raise ProvisioningError("; ".join(problems))
        remove_run_dir(self.session.id)

    @classmethod
    def _remove_dead_run(cls, session_id: str) -> list[str]:
        return cls.remove_session(session_id, local_engine)

    @classmethod
    def remove_session(cls, session_id: str, local: LocalEngine) -> list[str]:
        """Take back what the run did on named machines, remove the machines it created, then its folder."""
        created = MachineState(session_id).created
        problems = take_back_session(session_id, skip=created, remove_folder=False)
        problems += remove_machines(session_id, remove_folder=not problems)
        return problems

    @classmethod
    def sweep(cls, progress: images.Progress, local: LocalEngine) -> list[str]:
        """Remove what dead machine runs made, each by its record."""
        return sweep(progress, remove=cls._remove_dead_run)


if TYPE_CHECKING:  # mypy holds the class to the contract the registry promises
    _KIND: type[Provider] = MachineProvider
