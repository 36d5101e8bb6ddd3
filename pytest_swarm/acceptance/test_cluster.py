"""The cluster: one Leader, every node Ready/Active, labels as configured (``docker node ls``)."""

from __future__ import annotations

from pytest_swarm import Cluster, Settings


def test_exactly_one_leader(swarm: Cluster) -> None:
    leaders = [n.name for n in swarm.nodes() if n.leader]
    assert len(leaders) == 1, f"expected one Leader, found {leaders or 'none'}"


def test_master_1_is_the_leader(swarm: Cluster) -> None:
    node = swarm.node("master-1")
    assert node.role == "manager" and node.leader, f"master-1 is {node.describe()}"


def test_every_node_ready_and_active(swarm: Cluster) -> None:
    not_ready = [n.describe() for n in swarm.nodes() if not n.ready]
    assert not not_ready, "nodes not Ready/Active:\n" + "\n".join(not_ready)


def test_node_labels_as_configured(swarm: Cluster, swarm_settings: Settings) -> None:
    nodes = {n.name: n for n in swarm.nodes()}
    wrong = []
    for name, wanted in sorted(swarm_settings.node_labels.items()):
        if name == "*":
            continue
        actual = nodes[name].labels if name in nodes else None
        missing = {k: v for k, v in wanted.items() if actual is None or actual.get(k) != v}
        if missing:
            wrong.append(f"{name}: expected labels {dict(wanted)}, has {actual}")
    assert not wrong, "\n".join(wrong)
