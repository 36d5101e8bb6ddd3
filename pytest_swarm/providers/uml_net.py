"""uml, the host network: the session's bridge and the nodes' taps, the iptables rule that lets
the nodes talk across the bridge, and a free /24 for them."""

from __future__ import annotations

import contextlib
import ipaddress
import json
import subprocess
from collections.abc import Iterable, Sequence
from pathlib import Path

import docker
import docker.errors

from ..commands import run
from ..errors import CommandError, ProvisioningError
from .engines import TRANSIENT

SUBNET_POOL = ipaddress.IPv4Network("172.16.0.0/16")  # outside docker's and swarm's default pools
FIRST_HOST = 10  # node k gets .<10+k>; .1 is the host's end of the bridge


def ip(*args: str) -> str:
    return run(["ip", *args], timeout=30)


def link_exists(name: str) -> bool:
    return Path(f"/sys/class/net/{name}").exists()


def delete_link(name: str | None) -> str:
    if not name or not link_exists(name):
        return ""
    try:
        ip("link", "delete", name)
    except CommandError as exc:
        return str(exc)
    return ""


def rule_present(rule: Sequence[str]) -> bool:
    result = subprocess.run(
        ["iptables", "-w", "-C", *rule],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        timeout=30,
        check=False,
    )
    return result.returncode == 0


def delete_rule(rule: Sequence[str] | None) -> str:
    if not rule:
        return ""
    try:
        if rule_present(rule):
            run(["iptables", "-w", "-D", *rule], timeout=30)
    except (CommandError, subprocess.TimeoutExpired) as exc:
        return str(exc)
    return ""


def _used_networks(client: docker.DockerClient | None, taken: Iterable[str]) -> list[ipaddress.IPv4Network]:
    """Every IPv4 network the host routes or has an address in, the local engine's networks, and
    ``taken`` (the subnets of live UML sessions)."""
    used: list[ipaddress.IPv4Network] = []
    for route in json.loads(ip("-j", "-4", "route", "show", "table", "all") or "[]"):
        dst = route.get("dst", "")
        if dst and dst != "default":
            with contextlib.suppress(ValueError):
                used.append(ipaddress.IPv4Network(dst, strict=False))
    for link in json.loads(ip("-j", "-4", "addr") or "[]"):
        for info in link.get("addr_info", []):
            with contextlib.suppress(ValueError, KeyError):
                used.append(ipaddress.IPv4Network(f"{info['local']}/{info['prefixlen']}", strict=False))
    if client is not None:
        with contextlib.suppress(docker.errors.DockerException, *TRANSIENT):
            for network in client.networks.list():
                for config in (network.attrs.get("IPAM") or {}).get("Config") or []:
                    with contextlib.suppress(ValueError, KeyError, TypeError):
                        used.append(ipaddress.IPv4Network(config["Subnet"], strict=False))
    for subnet in taken:
        with contextlib.suppress(ValueError):
            used.append(ipaddress.IPv4Network(subnet))
    return used


def free_subnet(client: docker.DockerClient | None, taken: Iterable[str]) -> ipaddress.IPv4Network:
    """The first /24 of 172.16.0.0/16 that overlaps nothing the host, its engine or ``taken`` uses."""
    used = _used_networks(client, taken)
    candidates: list[ipaddress.IPv4Network] = list(SUBNET_POOL.subnets(new_prefix=24))
    for candidate in candidates[1:]:
        if not any(candidate.overlaps(net) for net in used):
            return candidate
    raise ProvisioningError(f"no free /24 left in {SUBNET_POOL} for the UML nodes' bridge")
