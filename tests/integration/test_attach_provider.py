"""The attach provider against a real swarm: a dind cluster brought up here, then attached to.

The dind cluster stands for "someone else's swarm": attach reads it through the manager's unix
socket (DOCKER_HOST) and each node's own socket (``swarm_attach_nodes NODE:engine=``), which
dind bind-mounts under /tmp/pytest-swarm/<session>/<node>/. The module's cluster is removed in
the fixture's ``finally`` by its session id, whatever the tests did.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
import tomllib
import xml.etree.ElementTree as ET
from collections.abc import Iterator, Sequence
from pathlib import Path

import docker
import pytest

from pytest_swarm.errors import ProvisioningError
from pytest_swarm.images import prepare_stack_images
from pytest_swarm.ownership import Session
from pytest_swarm.providers.attach import FIXED_NODES, AttachProvider
from pytest_swarm.providers.base import ProviderRun
from pytest_swarm.providers.dind import DindProvider
from pytest_swarm.settings import Settings, resolve
from pytest_swarm.stack import StackSource, render

ROOT = Path(__file__).resolve().parents[2]
SUITE_TIMEOUT = 2400  # seconds the acceptance suites may take through attach
# The side-by-side envs and the updates drive services through the manager alone, the same on any
# provider: they run on dind in "Running the tests" and in the corpus (there, 200 s of the dind
# suites' 342 s on a slow machine, bench/README.md). Every other module reaches the nodes' engines
# and addresses through attach.
NOT_THROUGH_ATTACH = ("test_environments.py", "test_updates.py")
SUITES = sorted(
    f"acceptance/{p.name}"
    for p in (ROOT / "acceptance").glob("test_*.py")
    if p.name not in NOT_THROUGH_ATTACH
)
# Skips the acceptance suites make from what the stack declares: the same under every provider.
DECLARED_SKIPS = (
    r"mounts volumes",
    r"declares no ",
    r"declares condition",
    r"declares failure_action",
    r"publishes no port",
    r"no \S+ on the nodes \(its Dockerfile declares no ARG BROKEN\)",
)


@pytest.fixture(scope="module")
def dind(engine: docker.DockerClient) -> Iterator[DindProvider]:
    """A 3-node dind swarm (master-1 labelled reliability=high), removed at the end by its session."""
    settings = Settings(rootdir=ROOT, workers=2, node_labels={"master-1": {"reliability": "high"}})
    provider = DindProvider(ProviderRun(settings, Session.new(), lambda _line: None, local=lambda: engine))
    try:
        provider.up()
        yield provider
    finally:
        provider.down()


def sockets(dind: DindProvider) -> dict[str, str]:
    return {name: dind.socket_url(name) for name in ("master-1", "worker-1", "worker-2")}


def attach(
    dind: DindProvider,
    engines: dict[str, str],
    node_labels: dict[str, dict[str, str]] | None = None,
    environ: dict[str, str] | None = None,
    preload: Sequence[str] = (),
) -> AttachProvider:
    """An attach provider on the dind swarm, as resolved settings would make it (labels not given
    by the user: a label for a node the swarm lacks is skipped, not refused)."""
    settings = Settings(
        rootdir=ROOT,
        provider="attach",
        timeout=60,
        node_labels=node_labels or {},
        attach_nodes={name: {"engine": url} for name, url in engines.items()},
    )
    run = ProviderRun(settings, Session.new(), lambda _line: None, preload=preload)
    if environ is None:
        environ = {"DOCKER_HOST": dind.socket_url("master-1")}
    return AttachProvider(run, environ={**environ, "PATH": os.environ.get("PATH", "")})


def test_attach_reads_names_addresses_engines_and_takes_back_its_labels(dind: DindProvider) -> None:
    provider = attach(dind, sockets(dind), node_labels={"worker-1": {"attach-test": "yes"}})
    cluster = provider.up()
    try:
        assert sorted(cluster.addresses) == ["master-1", "worker-1", "worker-2"]
        assert cluster.addresses == {n: dind.address(n) for n in cluster.addresses}
        assert sorted(cluster.engines) == ["master-1", "worker-1", "worker-2"]
        assert cluster.node("worker-1").labels == {"attach-test": "yes"}
        assert set(cluster.capabilities) == {"master-1", "worker-1", "worker-2"}
        for name, engine in cluster.engines.items():
            if engine.images.list():  # an image to run the probe in: it ran
                host_has_ipvs = os.path.isdir("/proc/sys/net/ipv4/vs")
                assert name not in cluster.unprobed and cluster.capabilities[name]["ipvs"] is host_has_ipvs
            else:
                assert cluster.unprobed[name] == "no image on the node to run the IPVS probe in"
        with pytest.raises(ProvisioningError, match=FIXED_NODES):
            provider.add_node()
        with pytest.raises(ProvisioningError, match=FIXED_NODES):
            provider.stop_node("worker-1")
        assert provider.can_change_nodes is False
    finally:
        provider.down()
    assert dind.cluster is not None
    assert dind.cluster.node("worker-1").labels == {}  # taken back
    assert dind.cluster.node("master-1").labels == {"reliability": "high"}  # not ours: untouched
    assert [n.name for n in dind.cluster.nodes() if n.ready] == ["master-1", "worker-1", "worker-2"]


def test_a_worker_endpoint_is_refused_naming_the_managers(dind: DindProvider) -> None:
    provider = attach(dind, {}, environ={"DOCKER_HOST": dind.socket_url("worker-1")})
    with pytest.raises(ProvisioningError) as info:
        provider.up()
    message = str(info.value)
    assert "is a swarm worker (worker-1), not a manager" in message
    assert f"managers at {dind.address('master-1')}:2377" in message


def test_an_engine_in_no_swarm_is_refused(dind: DindProvider) -> None:
    """A node engine that never joined: attach says to init a swarm or point at a manager."""
    loner = dind._start_node("loner")  # in the session: removed with the cluster at the latest
    dind._engines.pop("loner")  # not a cluster node: no images loaded into it
    try:
        provider = attach(dind, {}, environ={"DOCKER_HOST": dind.socket_url("loner")})
        with pytest.raises(
            ProvisioningError, match=r"is in no swarm \(LocalNodeState=inactive\); run `docker swarm init`"
        ):
            provider.up()
    finally:
        loner.client.close()
        dind._remove_container("loner")


def test_a_node_engine_that_is_another_node_is_refused(dind: DindProvider) -> None:
    swapped = {"worker-1": dind.socket_url("worker-2")}
    with pytest.raises(ProvisioningError, match=r"worker-1:engine=.* answers as swarm node .*, not worker-1"):
        attach(dind, swapped).up()


def test_missing_images_are_named_per_node(dind: DindProvider) -> None:
    ref = "pytest-swarm/absent:attach-test"
    only_manager = {"master-1": dind.socket_url("master-1")}
    provider = attach(dind, only_manager, preload=[ref])
    with pytest.raises(ProvisioningError) as info:
        provider.up()
    message = str(info.value)
    assert f"{ref} on master-1 (not on its engine; not in a registry: " in message
    assert f"{ref} on worker-1 (its engine is not reachable; not in a registry: " in message
    assert f"{ref} on worker-2 (its engine is not reachable; not in a registry: " in message
    assert "docker save REF | docker -H <node engine> load" in message


def stack_images(engine: docker.DockerClient) -> list[str]:
    """Every image the root project's envs need (built or found on the local engine)."""
    ini = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["pytest"]["ini_options"]
    settings = resolve(
        {}, {}, {k.removeprefix("swarm_"): v for k, v in ini.items() if k.startswith("swarm_")}, ROOT
    )
    refs: set[str] = set()
    for env, env_file in settings.envs.items():
        model = render(StackSource(env, env_file, settings.stacks))
        plan = prepare_stack_images(engine, model, settings.build, settings.offline_images)
        refs.update(plan.refs)
    return sorted(refs)


def skip_reasons(junit: Path) -> tuple[dict[str, int], list[str], list[str]]:
    """(counts, failure texts, skip messages) of a junit XML report."""
    root = ET.parse(junit).getroot()
    counts = {"passed": 0, "failed": 0, "skipped": 0}
    failures, skips = [], []
    for case in root.iter("testcase"):
        name = f"{case.get('classname')}::{case.get('name')}"
        bad = case.find("failure") if case.find("failure") is not None else case.find("error")
        skipped = case.find("skipped")
        if bad is not None:
            counts["failed"] += 1
            failures.append(f"{name}: {(bad.get('message') or '')[:300]}")
        elif skipped is not None:
            counts["skipped"] += 1
            skips.append(f"{name}: {skipped.get('message') or ''}")
        else:
            counts["passed"] += 1
    return counts, failures, skips


def test_the_acceptance_suites_pass_through_attach(
    dind: DindProvider, engine: docker.DockerClient, tmp_path: Path
) -> None:
    """``pytest --swarm-env=dev --swarm-provider=attach`` with SUITES on the dind swarm: every test
    passes but those that add nodes (attach can't) and those needing IPVS (where the kernel lacks it),
    besides the skips the stack's own declarations make under any provider."""
    dind.load_images(stack_images(engine))  # attach copies no image: they are on the nodes first
    junit = tmp_path / "acceptance.xml"
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("SWARM_", "DOCKER_"))}
    environ["DOCKER_HOST"] = dind.socket_url("master-1")
    environ["SWARM_ATTACH_NODES"] = " ".join(f"{n}:engine={url}" for n, url in sockets(dind).items())
    started = time.monotonic()
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "--swarm-env=dev",
            "--swarm-provider=attach",
            *SUITES,
            "-p",
            "no:randomly",
            "-p",
            "no:cacheprovider",
            f"--junitxml={junit}",
            "-q",
            "-rs",
        ],
        cwd=ROOT,
        env=environ,
        capture_output=True,
        text=True,
        timeout=SUITE_TIMEOUT,
        check=False,
    )
    seconds = time.monotonic() - started
    tail = result.stdout[-6000:] + result.stderr[-2000:]
    counts, failures, skips = skip_reasons(junit)
    print(f"acceptance through attach: {counts} in {seconds:.0f} s")
    assert result.returncode == 0 and not failures, f"{counts}\n" + "\n".join(failures) + f"\n{tail}"
    unexpected = [
        s
        for s in skips
        if FIXED_NODES not in s and "IPVS" not in s and not any(re.search(p, s) for p in DECLARED_SKIPS)
    ]
    assert not unexpected, "skips not named by attach or by the stack:\n" + "\n".join(unexpected)
    assert any(FIXED_NODES in s for s in skips), "the new-worker test should be skipped by attach"
    if not os.path.isdir("/proc/sys/net/ipv4/vs"):
        assert any("IPVS" in s for s in skips), "without IPVS the mesh tests should be skipped by name"
    assert counts["passed"] >= 40, counts
    # The swarm is someone else's: still there, whole; what the run deployed is gone.
    assert dind.cluster is not None
    assert [n.name for n in dind.cluster.nodes() if n.ready] == ["master-1", "worker-1", "worker-2"]
    assert dind.cluster.services() == [], [s.name for s in dind.cluster.services()]
