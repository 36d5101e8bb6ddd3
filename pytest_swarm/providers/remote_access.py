"""Hosts reached over ssh (shared by the ssh and machine providers): the run's ssh config, the
command lines, the preflight that names what a host lacks, the optional engine install, and the
per-host connection that forwards the engine's unix socket.

The engine never listens on a network port: its API is the host's ``/var/run/docker.sock``,
forwarded by one ssh connection per host to ``<run>/<name>/docker.sock`` (as the uml provider
does for its nodes). That connection is also the control master every other ssh of the run
(preflight, testinfra) rides on, so a host is logged in to once.
"""

from __future__ import annotations

import shlex
import subprocess
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ConvergenceTimeout, ProvisioningError
from ..waiting import Poll, wait_for
from .processes import forward_socket

ENGINE_SOCKET = "/var/run/docker.sock"
CONNECT_TIMEOUT = 15  # seconds ssh gets to log in
ENGINE_START_TIMEOUT = 60.0  # an engine still starting (a host just booted) gets this long
INSTALL_TIMEOUT = 900.0

# One login that says what the host has, one ``key=value`` a line. SSH_CONNECTION's third field
# is the host's own address of the connection: what the other hosts reach it by on a private
# network (a cloud VM's internal address behind its public one).
PREFLIGHT = f"""
echo "user=$(id -un)"
[ "$(id -u)" = 0 ] && echo root=yes || echo root=no
command -v dockerd >/dev/null 2>&1 && echo dockerd=yes || echo dockerd=no
[ -S {ENGINE_SOCKET} ] && echo socket=yes || echo socket=no
[ -r {ENGINE_SOCKET} ] && [ -w {ENGINE_SOCKET} ] && echo access=yes || echo access=no
sudo -n true >/dev/null 2>&1 && echo sudo=yes || echo sudo=no
command -v apt-get >/dev/null 2>&1 && echo apt=yes || echo apt=no
set -- $SSH_CONNECTION; echo "address=$3"
"""
INSTALL = """
set -e
export DEBIAN_FRONTEND=noninteractive
apt-get update -q
apt-get install -y -q docker.io
systemctl enable --now docker 2>/dev/null || service docker start
"""


@dataclass(frozen=True)
class Remote:
    """How to reach one host: its node name, where it is, who logs in, with which key.

    Example:
        ``Remote("master-1", "10.0.0.5", user="root", key="~/.ssh/id_ed25519")``
    """

    name: str
    host: str
    user: str = ""  # "" = the ssh config's (else the local user name)
    port: int = 22
    key: str = ""  # "" = ssh-agent / the ssh config's IdentityFile
    options: tuple[str, ...] = ()  # more ``-o`` options (machine: a run-local known_hosts)

    def __str__(self) -> str:
        return f"{self.user + '@' if self.user else ''}{self.host}:{self.port}"

    def destination(self) -> list[str]:
        """The ssh arguments that pick this host, its login and key (the host last)."""
        args = ["-p", str(self.port)]
        if self.user:
            args += ["-l", self.user]
        if self.key:
            args += ["-i", self.key, "-o", "IdentitiesOnly=yes"]
        for option in self.options:
            args += ["-o", option]
        return [*args, self.host]

    def to_record(self) -> dict[str, Any]:
        return {
            "host": self.host,
            "user": self.user,
            "port": self.port,
            "key": self.key,
            "options": list(self.options),
        }

    @classmethod
    def from_record(cls, name: str, record: Mapping[str, Any]) -> Remote:
        return cls(
            name=name,
            host=str(record["host"]),
            user=str(record.get("user", "")),
            port=int(record.get("port", 22)),
            key=str(record.get("key", "")),
            options=tuple(record.get("options", ())),
        )


@dataclass(frozen=True)
class Facts:
    """What a host's preflight found."""

    user: str = ""
    root: bool = False
    dockerd: bool = False
    socket: bool = False
    access: bool = False
    sudo: bool = False
    apt: bool = False
    address: str = ""
    raw: dict[str, str] = field(default_factory=dict)

    @classmethod
    def parse(cls, text: str) -> Facts:
        found = dict(line.split("=", 1) for line in text.splitlines() if "=" in line)

        def flag(key: str) -> bool:
            return found.get(key) == "yes"

        return cls(
            user=found.get("user", ""),
            root=flag("root"),
            dockerd=flag("dockerd"),
            socket=flag("socket"),
            access=flag("access"),
            sudo=flag("sudo"),
            apt=flag("apt"),
            address=found.get("address", ""),
            raw=found,
        )


class SshAccess:
    """The run's ssh: its config file (the run's options, then the user's own configuration),
    the command lines, and the testinfra host specs that ride on the same connections."""

    def __init__(self, run_dir: Path, user_config: Path | None = None) -> None:
        """``user_config``: a file used instead of ~/.ssh/config and /etc/ssh/ssh_config (ssh -F)."""
        self.run_dir = run_dir
        self.config = run_dir / "ssh_config"
        self.user_config = user_config

    def write_config(self) -> None:
        """The run's options first (ssh takes the first value it reads), then the user's files:
        their keys, users, proxies and known hosts apply as they would to a plain ``ssh``."""
        included = [str(self.user_config)] if self.user_config else ["~/.ssh/config", "/etc/ssh/ssh_config"]
        self.config.write_text(
            "# pytest-swarm: never prompt (no terminal), one connection per host (ControlPath)\n"
            "BatchMode yes\n"
            f"ConnectTimeout {CONNECT_TIMEOUT}\n"
            "ServerAliveInterval 5\n"
            "ServerAliveCountMax 6\n"
            "ControlMaster no\n"
            f"ControlPath {self.run_dir}/ctl-%C\n" + "".join(f"Include {path}\n" for path in included)
        )

    def argv(self, remote: Remote, *args: str) -> list[str]:
        """``ssh`` with the run's config, ``args`` (options), then the host."""
        return ["ssh", "-F", str(self.config), *args, *remote.destination()]

    def run(self, remote: Remote, script: str, timeout: float) -> subprocess.CompletedProcess[str]:
        """Run ``script`` with sh on the host (whatever its login shell); never raises on exit codes."""
        argv = [*self.argv(remote), "--", f"sh -c {shlex.quote(script)}"]
        try:
            return subprocess.run(
                argv, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout, check=False
            )
        except subprocess.TimeoutExpired:
            return subprocess.CompletedProcess(argv, 255, "", f"ssh did not finish within {timeout:g} s")

    def forward_argv(self, remote: Remote, socket_path: Path) -> list[str]:
        """The host's connection: forwards ``socket_path`` to its engine socket; the control master."""
        return self.argv(
            remote,
            "-N",
            "-o", "ControlMaster=yes", "-o", "ControlPersist=no",
            "-o", "ExitOnForwardFailure=yes", "-o", "StreamLocalBindUnlink=yes",
            "-L", f"{socket_path}:{ENGINE_SOCKET}",
        )  # fmt: skip

    def host_spec(self, remote: Remote, sudo: bool) -> str:
        """A testinfra backend URL: ssh with the run's config, over the host's control master;
        ``sudo``: commands run as root (the node's own view, as on dind and uml nodes)."""
        where = f"{remote.user + '@' if remote.user else ''}{remote.host}:{remote.port}"
        spec = f"ssh://{where}?ssh_config={self.config}&controlpersist=0&timeout=20"
        if remote.key:
            spec += f"&ssh_identity_file={remote.key}"
        return spec + ("&sudo=true" if sudo else "")


def unreachable(remote: Remote, detail: str) -> ProvisioningError:
    login = f"ssh -p {remote.port} {remote.user + '@' if remote.user else ''}{remote.host}"
    return ProvisioningError(
        f"{remote.name}: can't log in to {remote} over ssh: {detail.strip()[-500:] or 'no output'}; "
        f"check that `{login} true` works without a prompt (the key in ssh-agent, ~/.ssh/config or "
        "--swarm-ssh-key; the host's key in known_hosts, or in the file --swarm-ssh-config names)"
    )


def preflight(access: SshAccess, remote: Remote, timeout: float = 60) -> Facts:
    """Log in once and read what the host has; an unreachable host is one error naming it."""
    result = access.run(remote, PREFLIGHT, timeout)
    if result.returncode == 255 or "user=" not in result.stdout:
        raise unreachable(remote, result.stderr or result.stdout)
    return Facts.parse(result.stdout)


def as_root(facts: Facts, script: str) -> str:
    return script if facts.root else f"sudo -n sh -c {shlex.quote(script)}"


def prepare_host(
    access: SshAccess,
    remote: Remote,
    *,
    install: bool,
    progress: Callable[[str], None],
    engine_timeout: float = ENGINE_START_TIMEOUT,
) -> Facts:
    """The host's engine present, running and usable by the login user; else one error saying
    what to do. ``install``: install Debian's docker.io where there is none, and add the user to
    the docker group where it can't use the engine (each needs root or password-less sudo)."""
    facts = preflight(access, remote)
    if not facts.dockerd and not facts.socket:
        if not install:
            raise ProvisioningError(
                f"{remote.name} ({remote}) has no Docker engine: install one there (Debian/Ubuntu: "
                "sudo apt-get install docker.io), or run with --swarm-ssh-install to have it installed"
            )
        _install(access, remote, facts, progress)
        facts = preflight(access, remote)
    if not facts.socket:
        facts = _wait_for_engine(access, remote, engine_timeout)
    if not facts.access:
        if not install:
            raise ProvisioningError(
                f"{remote.name}: {facts.user or 'the login user'} can't use the Docker engine at "
                f"{remote} ({ENGINE_SOCKET}): add it to the docker group there (sudo usermod -aG "
                f"docker {facts.user or 'USER'}), log in as root, or run with --swarm-ssh-install"
            )
        grant = f"usermod -aG docker {shlex.quote(facts.user)}"
        _root(access, remote, facts, grant, "add the user to the docker group")
        progress(f"{remote.name}: {facts.user} added to the docker group (to reach the engine over ssh)")
        facts = preflight(access, remote)  # a new login: the new group applies
        if not facts.access:
            raise ProvisioningError(
                f"{remote.name}: {facts.user} still can't use {ENGINE_SOCKET} after joining the docker "
                "group; check the socket's group and mode there"
            )
    return facts


def _install(access: SshAccess, remote: Remote, facts: Facts, progress: Callable[[str], None]) -> None:
    if not facts.apt:
        raise ProvisioningError(
            f"{remote.name} ({remote}) has no Docker engine and no apt-get: --swarm-ssh-install "
            "installs Debian's docker.io only; install an engine there yourself"
        )
    progress(f"{remote.name}: installing docker.io with apt-get (--swarm-ssh-install)")
    _root(access, remote, facts, INSTALL, "install docker.io", INSTALL_TIMEOUT)


def _root(
    access: SshAccess, remote: Remote, facts: Facts, script: str, what: str, timeout: float = 120
) -> None:
    if not (facts.root or facts.sudo):
        raise ProvisioningError(
            f"{remote.name}: to {what}, {facts.user} needs root or password-less sudo on {remote}; "
            "do it there yourself, or log in as root"
        )
    result = access.run(remote, as_root(facts, script), timeout)
    if result.returncode != 0:
        tail = "\n".join((result.stderr or result.stdout).strip().splitlines()[-10:])
        raise ProvisioningError(f"{remote.name}: could not {what} (exit {result.returncode}):\n{tail}")


def _wait_for_engine(access: SshAccess, remote: Remote, timeout: float) -> Facts:
    """An engine that is installed but has no socket yet may still be starting: wait, bounded."""

    def probe() -> Poll[Facts]:
        facts = preflight(access, remote)
        return Poll(facts.socket, "no engine socket yet", facts)

    try:
        poll = wait_for(probe, what=f"the Docker engine on {remote.name}", timeout=timeout, interval=1)
    except ConvergenceTimeout as exc:
        raise ProvisioningError(
            f"{remote.name} ({remote}): its Docker engine is installed but not running ({ENGINE_SOCKET} "
            "is missing): start it there (sudo systemctl start docker)"
        ) from exc
    assert poll.value is not None
    return poll.value


def open_forward(
    access: SshAccess,
    remote: Remote,
    socket_path: Path,
    deadline: float,
    on_start: Callable[[subprocess.Popen[bytes]], None],
) -> subprocess.Popen[bytes]:
    """Start the host's connection and wait until its end of the socket exists (``on_start``
    records the process at once: only a recorded process is ever stopped)."""
    return forward_socket(
        access.forward_argv(remote, socket_path),
        socket_path,
        deadline,
        on_start,
        lambda why: unreachable(remote, f"its connection (the engine socket forward) ended: {why}"),
    )
