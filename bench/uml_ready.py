"""Benchmark: a 3-node User-Mode Linux swarm with the reddit stack's images baked in.

    python bench/uml_ready.py [--rounds 2] [--env dev] [--no-fresh-disks] [--no-stack]

Measured, in this order:
- disk builds (reported apart from readiness): the node root disk from nothing (debootstrap,
  packages, modules, mkfs, ptrace shim) and the engine-data disk with every image the stack
  needs (its services' images and their -next/-broken versions), both into a temporary cache
  so the real cache is left alone (skip with --no-fresh-disks);
- seconds to Ready: UmlProvider.up() with the disks cached (kernels booted, engines answering
  over ssh, swarm formed, labels, every node Ready/Active, IPVS probe), per round;
- host memory per node after Ready (idle) and with the stack deployed and converged: the pages
  of the node kernel's memory file the host allocated, plus what its processes hold besides;
- with the stack: the seconds to converge and whether every node answers on the ui's port.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
import tomllib
from pathlib import Path

import docker

from pytest_swarm import images, mesh
from pytest_swarm.ownership import Session
from pytest_swarm.providers import uml_disk
from pytest_swarm.providers.base import ProviderRun
from pytest_swarm.providers.uml import UmlProvider
from pytest_swarm.providers.uml_host import missing_requirements
from pytest_swarm.settings import Settings
from pytest_swarm.stack import StackSource, deploy, render, service_images

ROOT = Path(__file__).resolve().parent.parent
NAMES = ["master-1", "worker-1", "worker-2"]


def ini_contexts(key: str) -> dict[str, Path]:
    """service=context lines of an ini option in pyproject.toml, as the plugin reads them."""
    options = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["pytest"]["ini_options"]
    return {
        name.strip(): ROOT / path.strip() for name, _, path in (line.partition("=") for line in options[key])
    }


def stack_images(client: docker.DockerClient, env: str) -> tuple[StackSource, list[str]]:
    """Every image the env's stack needs, built or found on the local engine (not timed)."""
    source = StackSource(
        env=env,
        env_file=ROOT / "envs" / f"{env}.env",
        compose_files=(ROOT / "stacks/docker-compose.infra.yml", ROOT / "stacks/docker-compose.yml"),
    )
    model = render(source)
    plan = images.prepare_images(
        client, service_images(model), ini_contexts("swarm_build"), ini_contexts("swarm_offline_images")
    )
    return source, sorted(set(plan.refs))


def fresh_disks(client: docker.DockerClient, refs: list[str]) -> tuple[float, float, int]:
    """Both disks built from nothing into a temporary cache: (base s, images s, images MiB)."""
    saved = uml_disk.CACHE_ROOT
    with tempfile.TemporaryDirectory(prefix="uml-bench-cache-", dir="/var/tmp") as tmp:
        uml_disk.CACHE_ROOT = Path(tmp)
        try:
            timings: dict[str, float] = {}
            base = uml_disk.base_disk(print, timings)
            disk = uml_disk.images_disk(base, refs, client, print, timings)
            used = disk.stat().st_blocks * 512 // 2**20
        finally:
            uml_disk.CACHE_ROOT = saved
    return timings["base_disk"], timings["images_disk"], used


def make(client: docker.DockerClient, refs: list[str]) -> UmlProvider:
    settings = Settings(
        rootdir=ROOT, workers=2, node_labels={"master-1": {"reliability": "high"}}, timeout=180
    )
    return UmlProvider(
        ProviderRun(settings, Session.new(), lambda _m: None, local=lambda: client, preload=refs)
    )


def mib(value: float) -> str:
    return f"{value / 2**20:.0f}"


def memory_line(provider: UmlProvider) -> str:
    per = {n: provider.memory(n) for n in NAMES}
    nodes = ", ".join(f"{n} {mib(m['host'])}" for n, m in per.items())
    return (
        f"host memory per node MiB: {nodes} (mean {mib(statistics.mean(m['host'] for m in per.values()))}; "
        f"of which the kernel's RAM file, mean {mib(statistics.mean(m['ram'] for m in per.values()))})"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--env", default="dev")
    parser.add_argument("--no-fresh-disks", action="store_true", help="don't time disk builds from nothing")
    parser.add_argument("--no-stack", action="store_true", help="don't deploy the stack after Ready")
    args = parser.parse_args()
    reason = missing_requirements()
    if reason:
        raise SystemExit(reason)
    client = docker.from_env(timeout=300)
    source, refs = stack_images(client, args.env)
    size = sum(client.images.get(r).attrs["Size"] for r in refs)
    print(f"{len(refs)} images to bake in ({size / 2**20:.0f} MiB unshared): {', '.join(refs)}")
    if not args.no_fresh_disks:
        base_s, images_s, used = fresh_disks(client, refs)
        print(f"disk build from nothing: node root disk {base_s:.1f} s; engine-data disk {images_s:.1f} s "
              f"({used} MiB on disk)")  # fmt: skip
    # Warm the real cache (not timed): rounds measure boot-to-Ready only.
    timings: dict[str, float] = {}
    uml_disk.images_disk(uml_disk.base_disk(print, timings), refs, client, print, timings)
    readies: list[float] = []
    walls: list[float] = []
    for round_ in range(1, args.rounds + 1):
        provider = make(client, refs)
        started = time.monotonic()
        try:
            cluster = provider.up()
            walls.append(time.monotonic() - started)
            readies.append(cluster.seconds_to_ready)
            print(
                f"round {round_}: Ready in {cluster.seconds_to_ready:.1f} s (engines answering after "
                f"{provider.timings['engines']:.1f} s; up() wall {walls[-1]:.1f} s); "
                f"ipvs {sorted(n for n, c in cluster.capabilities.items() if c.get('ipvs'))}"
            )
            time.sleep(5)  # let the engines settle before reading memory
            print(f"  idle after Ready: {memory_line(provider)}")
            if not args.no_stack and round_ == 1:
                began = time.monotonic()
                stack = deploy(
                    cluster,
                    provider.load_images,
                    source,
                    local=client,
                    build=ini_contexts("swarm_build"),
                    offline=ini_contexts("swarm_offline_images"),
                    timeout=600,
                    progress=lambda _m: None,
                )
                print(f"  stack {stack.name} deployed and converged in {time.monotonic() - began:.1f} s")
                port = stack.published_port("ui")
                if port is not None:
                    for node in NAMES:
                        answers = mesh.probe(cluster.addresses[node], port, count=6, timeout=5)
                        ok = [a for a in answers if a.status == 200]
                        hosts = sorted({a.host for a in ok})
                        print(f"  ui on {node}:{port}: {len(ok)}/6 answered, by {hosts}")
                print(f"  with the stack running: {memory_line(provider)}")
        finally:
            provider.down()
    print(
        f"3-node UML swarm Ready (images baked in, disks cached): median {statistics.median(readies):.1f} s "
        f"(min {min(readies):.1f}, max {max(readies):.1f}) over {len(readies)} rounds; target <= 120 s"
    )


if __name__ == "__main__":
    main()
