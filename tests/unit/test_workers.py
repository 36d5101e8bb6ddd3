"""Under pytest-xdist: a worker's facts cross to the controller, which merges them by worker."""

from __future__ import annotations

from pytest_swarm.report import Checks, NodeRow, RunFacts, StackRow
from pytest_swarm.resilience import Deadline, Figure
from pytest_swarm.timing import Timing
from pytest_swarm.workers import facts_in, facts_out, merged


def facts(cluster: str, note: str) -> RunFacts:
    return RunFacts(
        env="dev",
        provider="dind",
        exit="OK",
        checks=Checks(),
        cluster=cluster,
        nodes=[NodeRow("master-1", "manager (Leader)", "ready/active", "20.10.24", "172.18.0.2")],
        stacks=[StackRow("DEV", "dev", 7, 12.5)],
        timings=[Timing("t::update", 30.0, 25.0, ("delay 5 s x 5",), "its roll")],
        notes=[note],
        variables=[("POST_REPLICAS", "1")],
        profile="lesson",
        requirements=[("L01", "mongo on the reliable node")],
        figures=[
            Figure("worker lost", "to Down", 12.4, deadline=Deadline(18.5, "3 missed heartbeats")),
            Figure("worker lost", "failed requests", 3, "failed requests", note="of 90"),
        ],
    )


def test_a_workers_facts_cross_intact() -> None:
    sent = facts("a1b2c3d4, ready in 1.6 s", "cluster a1b2c3d4 removed")
    assert facts_in(facts_out(sent)) == sent


def test_the_controller_names_each_workers_cluster_nodes_stacks_and_notes() -> None:
    own = facts("", "report written")
    both = merged(
        own, {"gw1": facts("bbbb, ready in 2 s", "bbbb removed"), "gw0": facts("aaaa, ready", "aaaa removed")}
    )
    assert both.cluster == "gw0: aaaa, ready; gw1: bbbb, ready in 2 s"
    assert [n.name for n in both.nodes] == ["gw0 master-1", "gw1 master-1"]
    assert [s.name for s in both.stacks] == ["gw0 DEV", "gw1 DEV"]
    assert both.notes == ["report written", "gw0: aaaa removed", "gw1: bbbb removed"]
    assert [f.value for f in both.figures] == [12.4, 3, 12.4, 3]
    assert len(both.timings) == 2
    assert merged(own, {}) == own
