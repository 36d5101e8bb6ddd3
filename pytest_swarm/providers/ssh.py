"""ssh: the swarm on hosts that already exist and are reached only over ssh.

The hosts are listed in the ini file, the manager first (``swarm_ssh_hosts``:
``NAME=[USER@]HOST[:PORT]`` per line, NAME being the host's hostname); the key comes from
ssh-agent, the ssh config or ``--swarm-ssh-key``. Each engine is reached through its host's
ssh connection (a forwarded unix socket: no engine port is opened); testinfra rides on the same
connection; the images the stack needs are copied to each engine that lacks them. A swarm is
formed when no host is in one, else the manager's is used; node labels are added.

At the end the run takes back only what it made, by its record (``remote_state``): the swarm
if it formed it, the labels it added, the stacks it deployed; ``pytest-swarm sweep`` does the
same for a killed run. The hosts and the engines on them stay.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, ClassVar

from .. import images
from ..cluster import Cluster
from ..errors import ProvisioningError
from ..ownership import remove_run_dir
from .base import FixedNodes, LocalEngine, Provider, ProviderRun
from .remote_access import Remote
from .remote_nodes import RemoteNodes
from .remote_state import remove_session, sweep

FIXED_HOSTS = (
    "the ssh provider's hosts are those swarm_ssh_hosts lists: it can't add, remove, stop or start them"
)


class SshProvider(FixedNodes):
    """The hosts of ``swarm_ssh_hosts``, reached over ssh; their swarm formed or used."""

    name: ClassVar[str] = "ssh"
    # The swarm may be someone else's (and the hosts always are): the lifecycle removes the
    # stacks the run deployed; down() takes back the labels, and the swarm if the run formed it.
    owns_swarm: ClassVar[bool] = False
    fixed_nodes_reason: ClassVar[str] = FIXED_HOSTS  # add/remove/stop/start_node refuse (FixedNodes)
    # Joining networks one by one needs the base image on every host, copied over ssh first.
    joins_networks_first: ClassVar[bool] = False
    preloads_images: ClassVar[bool] = False  # copied to the hosts before each deploy
    # engine labels are each host's dockerd configuration: only node labels are added
    gives_labels: ClassVar[tuple[str, ...]] = ("node",)
    second_cluster_cost: ClassVar[str] = "a second set of hosts, which the run can't make"

    def __init__(self, run: ProviderRun) -> None:
        settings = run.settings
        self.session = run.session
        self.progress = run.progress
        self.install = settings.ssh_install
        key = str(settings.ssh_key) if settings.ssh_key else ""
        self.remotes = [Remote(t.name, t.host, t.user, t.port, key) for t in settings.ssh_hosts]
        self.nodes = RemoteNodes(run, self.name, settings.ssh_config)

    @property
    def cluster(self) -> Cluster | None:
        return self.nodes.cluster

    def up(self) -> Cluster:
        if not self.remotes:
            raise ProvisioningError(
                "--swarm-provider=ssh needs swarm_ssh_hosts: NAME=[USER@]HOST[:PORT] a line"
            )
        try:
            # a killed run's swarm on these hosts would pass for someone else's: taken back first
            sweep(self.name, self.progress)
            install = [r.name for r in self.remotes] if self.install else []
            cluster = self.nodes.up(self.remotes, install=install)
        except BaseException:
            self.down()
            raise
        self.progress(f"reached {len(self.remotes)} hosts over ssh: {', '.join(map(str, self.remotes))}")
        return cluster

    def attach(self, nodes: Sequence[str]) -> Cluster:
        return self.nodes.attach(nodes)

    def load_images(self, refs: Sequence[str]) -> None:
        self.nodes.load_images(refs)

    def address(self, node: str) -> str:
        return self.nodes.address(node)

    def host_spec(self, node: str) -> str:
        return self.nodes.host_spec(node)

    def keep(self) -> dict[str, str]:
        return self.nodes.keep()

    def down(self) -> None:
        """Take back what the run made on the hosts; its record stays while anything does."""
        problems = self.nodes.down()
        if problems:
            raise ProvisioningError(
                f"ssh run {self.session.id}: not all it made was taken back: {'; '.join(problems)}; "
                "`pytest-swarm sweep` tries again"
            )
        remove_run_dir(self.session.id)

    @classmethod
    def remove_session(cls, session_id: str, local: LocalEngine) -> list[str]:
        """Take back what the run recorded on its hosts (over ssh), then its folder."""
        return remove_session(session_id)

    @classmethod
    def sweep(cls, progress: images.Progress, local: LocalEngine) -> list[str]:
        """Take back what dead ssh runs did on their hosts, each by its record."""
        return sweep(cls.name, progress)


if TYPE_CHECKING:  # mypy holds the class to the contract the registry promises
    _KIND: type[Provider] = SshProvider
