"""The dind provider on the real local engine: nodes, labels, node operations, cleanup."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import docker
import pytest

from pytest_swarm.errors import ProvisioningError
from pytest_swarm.ownership import Session
from pytest_swarm.providers.base import ProviderRun
from pytest_swarm.providers.dind import DindProvider
from pytest_swarm.settings import Settings
from pytest_swarm.waiting import Poll, wait_for


def make_provider(engine: docker.DockerClient, **overrides: Any) -> DindProvider:
    options: dict[str, Any] = {
        "workers": 2,
        "node_labels": {"master-1": {"reliability": "high"}},
        "engine_labels": {"*": {"pool": "test"}, "worker-1": {"zone": "b"}},
        "timeout": 60,
    }
    options.update(overrides)
    settings = Settings(rootdir=Path.cwd(), provider="dind", **options)
    return DindProvider(ProviderRun(settings, Session.new(), lambda _message: None, local=lambda: engine))


def wait_until_down(provider: DindProvider, name: str) -> None:
    cluster = provider.cluster
    assert cluster is not None
    wait_for(
        lambda: Poll(cluster.node(name).state == "down", cluster.node(name).state),
        what=f"{name} Down",
        timeout=60,
        interval=0.5,
    )


@pytest.fixture(scope="module")
def provider(engine: docker.DockerClient) -> Iterator[DindProvider]:
    provider = make_provider(engine)
    provider.up()
    try:
        yield provider
    finally:
        provider.down()


def test_master_leader_and_workers_ready_with_labels(provider: DindProvider) -> None:
    assert provider.cluster is not None
    nodes = {n.name: n for n in provider.cluster.nodes()}
    assert sorted(nodes) == ["master-1", "worker-1", "worker-2"]
    assert nodes["master-1"].leader
    assert [n.name for n in nodes.values() if n.role == "manager"] == ["master-1"]
    assert all(n.state == "ready" and n.availability == "active" for n in nodes.values())
    assert nodes["master-1"].labels == {"reliability": "high"}
    assert nodes["worker-1"].engine_labels == {"pool": "test", "zone": "b"}
    assert nodes["worker-2"].engine_labels == {"pool": "test"}


def test_manager_reached_over_a_unix_socket_only(provider: DindProvider, engine: docker.DockerClient) -> None:
    assert provider.cluster is not None
    assert provider.cluster.manager_url.startswith("unix://")
    container = engine.containers.get(f"{provider.session.prefix}-master-1")
    assert container.attrs["NetworkSettings"]["Ports"] in ({}, None)  # nothing published


def test_addresses_are_node_ips_and_hostnames_are_node_names(provider: DindProvider) -> None:
    for name in ("master-1", "worker-1", "worker-2"):
        host = provider.address(name)
        assert host.count(".") == 3
        assert provider.cluster is not None and provider.cluster.node(name).addr == host


def test_ipvs_preflight_reports_this_kernel(provider: DindProvider) -> None:
    """On a kernel without IPVS the probe says so for every node (the CI machine's case)."""
    assert provider.cluster is not None
    probe = provider.cluster.capabilities
    assert set(probe) == {"master-1", "worker-1", "worker-2"}
    has_ipvs_on_host = os.path.isdir("/proc/sys/net/ipv4/vs")
    if not has_ipvs_on_host:
        assert all(caps["ipvs"] is False for caps in probe.values())


def test_add_stop_start_remove_a_node(provider: DindProvider, leftovers: Callable[..., list[str]]) -> None:
    cluster = provider.cluster
    assert cluster is not None
    name = provider.add_node(labels={"extra": "yes"})
    assert name == "worker-3"
    node = cluster.node("worker-3")
    assert node.ready and node.role == "worker" and node.labels == {"extra": "yes"}
    # add_node returns a node whose own engine has set up ingress (it stays drained until then)
    ingress = cluster.engines[name].api.inspect_network("ingress")
    assert "ingress-sbox" in ingress["Containers"]

    provider.stop_node(name)
    wait_until_down(provider, name)
    provider.start_node(name)
    assert cluster.node(name).ready

    provider.remove_node(name)
    assert [n.name for n in cluster.nodes()] == ["master-1", "worker-1", "worker-2"]
    assert not [x for x in leftovers(provider.client, provider.session.id) if "worker-3" in x]


def test_load_images_puts_them_on_every_node(provider: DindProvider) -> None:
    provider.load_images(["debian:bookworm-slim"])
    assert provider.cluster is not None
    for name, client in provider.cluster.engines.items():
        assert client.images.get("debian:bookworm-slim"), name


def test_down_leaves_nothing(engine: docker.DockerClient, leftovers: Callable[..., list[str]]) -> None:
    provider = make_provider(engine, workers=1)
    provider.up()
    session = provider.session.id
    assert leftovers(engine, session)  # it made containers, a network, volumes, a folder
    provider.down()
    assert leftovers(engine, session) == []


def test_a_node_that_never_gets_ready_is_named_with_its_dockerd_log(
    engine: docker.DockerClient, leftovers: Callable[..., list[str]]
) -> None:
    provider = make_provider(engine, workers=1, timeout=3)
    provider.up()
    try:
        provider.stop_node("worker-1")
        wait_until_down(provider, "worker-1")
        with pytest.raises(ProvisioningError) as info:
            provider._wait_ready(["master-1", "worker-1"])
        message = str(info.value)
        assert "every node Ready/Active: not reached within 3 s" in message
        assert "worker-1=down/active" in message
        assert "worker-1| " in message  # the tail of worker-1's dockerd log
    finally:
        provider.down()
    assert leftovers(engine, provider.session.id) == []


def test_three_managers_form_one_raft_with_master_1_leading(
    engine: docker.DockerClient, leftovers: Callable[..., list[str]]
) -> None:
    provider = make_provider(engine, managers=3, workers=1)
    provider.up()
    try:
        assert provider.cluster is not None
        nodes = {n.name: n for n in provider.cluster.nodes()}
        assert sorted(nodes) == ["master-1", "master-2", "master-3", "worker-1"]
        assert [n for n, node in nodes.items() if node.role == "manager"] == [
            "master-1",
            "master-2",
            "master-3",
        ]
        assert [n for n, node in nodes.items() if node.leader] == ["master-1"]
        assert all(node.ready for node in nodes.values())
    finally:
        provider.down()
    assert leftovers(engine, provider.session.id) == []
