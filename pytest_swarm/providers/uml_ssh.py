"""uml, ssh to the nodes: the cluster's own key, an ssh config that trusts only the session's
addresses, and the per-node connection that forwards the engine's unix socket and is the control
master every testinfra command rides on (the engine never listens on a network port)."""

from __future__ import annotations

from pathlib import Path

from ..commands import run


def make_key(key_file: Path, comment: str) -> None:
    """An ed25519 key pair at ``key_file`` (and ``.pub``), with no passphrase."""
    run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(key_file)],
        timeout=30,
    )


def write_ssh_config(path: Path, pattern: str, key_file: Path, control_dir: Path) -> None:
    """The ssh config of the hosts matching ``pattern``: root, the cluster's key, multiplexed."""
    # Host keys are made at a node's first boot: nothing to check them against, and these
    # addresses exist only on this session's bridge. ControlPath: the node's forwarding
    # connection is the master every other ssh (testinfra) rides on.
    path.write_text(
        f"Host {pattern}\n"
        "  User root\n"
        f"  IdentityFile {key_file}\n"
        "  IdentitiesOnly yes\n"
        "  StrictHostKeyChecking no\n"
        "  UserKnownHostsFile /dev/null\n"
        "  LogLevel ERROR\n"
        "  BatchMode yes\n"
        "  ControlMaster no\n"
        f"  ControlPath {control_dir}/ctl-%h\n"
        "  ServerAliveInterval 5\n"
        "  ServerAliveCountMax 6\n"
    )


def forward_argv(ssh_config: Path, socket_path: Path, address: str) -> list[str]:
    """ssh forwarding ``socket_path`` to the node's engine socket, as the control master."""
    return [
        "ssh", "-F", str(ssh_config), "-N", "-o", "ControlMaster=yes", "-o", "ControlPersist=no",
        "-o", "ExitOnForwardFailure=yes", "-o", "StreamLocalBindUnlink=yes",
        "-L", f"{socket_path}:/var/run/docker.sock", address,
    ]  # fmt: skip


def host_spec(address: str, ssh_config: Path, key_file: Path) -> str:
    """A testinfra backend URL: ssh with the cluster's key, over the node's control master."""
    return (
        f"ssh://root@{address}?ssh_config={ssh_config}"
        f"&ssh_identity_file={key_file}&controlpersist=0&timeout=20"
    )
