"""Benchmark: seconds to a Ready 3-node dind swarm, against a raw-docker floor, and reuse.

    python bench/ready.py [--rounds 3]

Measured in one run, alternating, with the node image already built:
- floor: the same node containers and flags started in parallel with the docker SDK alone (no
  pytest-swarm code), each engine polled every 0.1 s, swarm init, joins in parallel, the node
  list polled every 0.1 s until all are Ready;
- plugin: DindProvider.up() (sweep, network, nodes, swarm, labels, readiness, IPVS probe);
- reuse: DindProvider.attach() on a kept cluster (what --swarm-reuse does);
- memory: the host memory a running 3-node cluster uses (node containers' cgroups plus the
  cgroups of the containers inside them), RSS and total usage.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import docker

from pytest_swarm import images
from pytest_swarm.ownership import Session
from pytest_swarm.providers.base import ProviderRun
from pytest_swarm.providers.dind import NODE_RECIPE, NODE_REPO, DindProvider
from pytest_swarm.settings import Settings

NAMES = ["master-1", "worker-1", "worker-2"]


def floor_once(client: docker.DockerClient, image: str) -> float:
    """Raw docker: start, init, join, poll; returns seconds to all Ready. Cleans up by id."""
    tag = f"benchfloor-{uuid.uuid4().hex[:8]}"
    work = Path(tempfile.mkdtemp(prefix=tag))
    network = client.networks.create(tag, driver="bridge")
    made: list[str] = []
    volumes: list[str] = []
    started = time.monotonic()
    try:

        def start(name: str) -> tuple[docker.DockerClient, str]:
            (work / name).mkdir()
            volume = client.volumes.create(f"{tag}-{name}")
            volumes.append(volume.name)
            host_config = client.api.create_host_config(
                network_mode=tag,
                cap_add=["ALL"],
                cap_drop=["SYS_RESOURCE"],
                security_opt=["seccomp=unconfined", "apparmor=unconfined"],
                device_cgroup_rules=["a *:* rwm"],
                tmpfs={"/run": ""},
                binds={
                    "/sys/fs/cgroup": {"bind": "/sys/fs/cgroup", "mode": "rw"},
                    str(work / name): {"bind": "/pytest-swarm", "mode": "rw"},
                    volume.name: {"bind": "/var/lib/docker", "mode": "rw"},
                },
            )
            host_config.update(MaskedPaths=[], ReadonlyPaths=[])
            created = client.api.create_container(
                image,
                [f"--cgroup-parent=/{tag}-{name}"],
                name=f"{tag}-{name}",
                hostname=name,
                host_config=host_config,
            )
            made.append(created["Id"])
            client.api.start(created["Id"])
            node = docker.DockerClient(base_url=f"unix://{work / name / 'docker.sock'}", version="1.41")
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                try:
                    node.ping()
                    break
                except Exception:  # not up yet: poll again
                    time.sleep(0.1)
            ip = client.api.inspect_container(created["Id"])["NetworkSettings"]["Networks"][tag]["IPAddress"]
            return node, ip

        with ThreadPoolExecutor(3) as pool:
            nodes = list(pool.map(start, NAMES))
        (manager, manager_ip) = nodes[0]
        manager.swarm.init(advertise_addr=manager_ip, listen_addr="0.0.0.0:2377")
        token = manager.swarm.attrs["JoinTokens"]["Worker"]
        with ThreadPoolExecutor(2) as pool:
            list(
                pool.map(
                    lambda n: n[0].swarm.join([f"{manager_ip}:2377"], token, advertise_addr=n[1]), nodes[1:]
                )
            )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            listed = manager.api.nodes()
            if len(listed) == 3 and all(n["Status"]["State"] == "ready" for n in listed):
                break
            time.sleep(0.1)
        return time.monotonic() - started
    finally:
        for container_id in made:
            client.api.remove_container(container_id, force=True, v=True)
        for volume in volumes:
            client.volumes.get(volume).remove(force=True)
        network.remove()
        for name in NAMES:
            for folder in Path("/sys/fs/cgroup").glob(f"*/{tag}-{name}"):
                for sub in sorted(folder.rglob("*"), key=lambda p: -len(p.parts)):
                    if sub.is_dir():
                        sub.rmdir()
                folder.rmdir()


def provider(client: docker.DockerClient, session: Session | None = None) -> DindProvider:
    settings = Settings(
        rootdir=Path.cwd(), workers=2, node_labels={"master-1": {"reliability": "high"}}, timeout=60
    )
    return DindProvider(
        ProviderRun(settings, session or Session.new(), lambda _m: None, local=lambda: client)
    )


def plugin_once(client: docker.DockerClient) -> float:
    p = provider(client)
    started = time.monotonic()
    try:
        p.up()
        return time.monotonic() - started
    finally:
        p.down()


def cgroup_bytes(folder: Path) -> tuple[int, int]:
    """(rss, usage) of a v1 memory cgroup, children included."""
    stat = dict(line.split() for line in (folder / "memory.stat").read_text().splitlines())
    usage = int((folder / "memory.usage_in_bytes").read_text())
    return int(stat.get("total_rss", 0)), usage


def memory_of_cluster(client: docker.DockerClient) -> tuple[float, float, float]:
    """Start a cluster, measure the memory of its nodes, reattach (reuse) timing; remove it."""
    p = provider(client)
    p.up()
    try:
        root = Path("/sys/fs/cgroup/memory")
        rss = usage = 0
        for name in NAMES:
            container = client.api.inspect_container(f"{p.session.prefix}-{name}")
            for folder in [root / "docker" / container["Id"], root / f"{p.session.cgroup_prefix}{name}"]:
                if folder.is_dir():
                    r, u = cgroup_bytes(folder)
                    rss, usage = rss + r, usage + u
        started = time.monotonic()
        provider(client, p.session).attach(NAMES)
        reuse = time.monotonic() - started
        return rss / 2**20, usage / 2**20, reuse
    finally:
        p.down()


def summary(label: str, values: list[float]) -> str:
    return f"{label}: median {statistics.median(values):.2f} s (min {min(values):.2f}, max {max(values):.2f})"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=3)
    rounds = parser.parse_args().rounds
    client = docker.from_env(timeout=120)
    image = f"{NODE_REPO}:{images.recipe_digest(NODE_RECIPE)}"
    if not images.image_exists(client, image):
        print(f"building the node image {image} first (not timed)")
        images.build_image(client, NODE_RECIPE, [image])
    floors: list[float] = []
    plugins: list[float] = []
    runs: list[tuple[str, Callable[[], float], list[float]]] = [
        ("floor", lambda: floor_once(client, image), floors),
        ("plugin", lambda: plugin_once(client), plugins),
    ]
    for _ in range(rounds):
        for _label, run, into in runs:
            into.append(run())
    reuses = []
    for _ in range(rounds):
        rss, usage, reuse = memory_of_cluster(client)
        reuses.append(reuse)
    ratio = statistics.median(p / f for p, f in zip(plugins, floors, strict=True))
    print(summary("raw-docker floor, 3 nodes Ready", floors))
    print(summary("pytest-swarm dind up(), 3 nodes Ready", plugins))
    print(f"plugin / floor, pair by pair: median {ratio:.2f}x (target <= 1.5x)")
    print(summary("--swarm-reuse attach to a kept cluster", reuses) + " (target <= 2 s)")
    print(
        f"host memory of a running 3-node cluster: {rss:.0f} MiB RSS, {usage:.0f} MiB with page cache "
        "(target <= 1024 MiB)"
    )


if __name__ == "__main__":
    main()
