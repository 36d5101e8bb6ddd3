"""Where the disruptive suite runs, how managers join, and text evidence (no engine)."""

from __future__ import annotations

import fnmatch
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import pytest

from pytest_swarm import disruption, evidence, resilience
from pytest_swarm.cluster import Node
from pytest_swarm.errors import SwarmError
from pytest_swarm.providers import base
from pytest_swarm.resilience_view import StackView
from pytest_swarm.settings import resolve


@pytest.mark.parametrize(
    ("provider", "opt_in", "expected"),
    [
        ("dind", False, ""),
        ("uml", False, "on uml that is as many UML kernels again*run it with --swarm-disruptive"),
        ("uml", True, ""),
        ("machine", False, "on machine that is as many machines again*--swarm-disruptive"),
        ("attach", True, "resilience breaks nodes of a cluster of its own: *"),
    ],
)
def test_a_cluster_of_its_own_is_brought_up_where_it_is_cheap_or_asked_for(
    tmp_path: Path, provider: str, opt_in: bool, expected: str
) -> None:
    cli = {"provider": provider, **({"disruptive": "true"} if opt_in else {})}
    why = disruption.IsolatedCluster.why_not(resolve(cli, {}, {}, tmp_path), "resilience")
    if not expected:
        assert why == ""
    else:
        assert fnmatch.fnmatch(why, f"*{expected}*"), why


class FakeApi:
    def __init__(self, joined: list[tuple[str, str]], name: str) -> None:
        self.joined = joined
        self.name = name

    def _url(self, path: str) -> str:
        return path

    def _post_json(self, url: str, data: dict[str, Any]) -> dict[str, Any]:
        self.joined.append((self.name, data["JoinToken"]))
        return data

    def _raise_for_status(self, response: Any) -> None:
        return None


def engine(name: str, joined: list[tuple[str, str]]) -> base.Engine:
    swarm = SimpleNamespace(
        init=lambda **_kw: None, attrs={"JoinTokens": {"Manager": "SWMTKN-m", "Worker": "SWMTKN-w"}}
    )
    client = SimpleNamespace(api=FakeApi(joined, name), swarm=swarm)
    return base.Engine(name, client, f"10.0.0.{len(name)}")  # type: ignore[arg-type]


def test_other_managers_join_one_at_a_time_with_the_manager_token_before_the_workers() -> None:
    joined: list[tuple[str, str]] = []
    names = ["master-2", "worker-1", "master-3", "worker-2"]
    base.form_swarm(engine("master-1", joined), [engine(n, joined) for n in names])
    assert joined[:2] == [("master-2", "SWMTKN-m"), ("master-3", "SWMTKN-m")]
    assert sorted(joined[2:]) == [("worker-1", "SWMTKN-w"), ("worker-2", "SWMTKN-w")]


def test_text_evidence_is_collected_only_when_asked_and_a_broken_collector_says_so() -> None:
    item = SimpleNamespace(stash={})
    calls: list[str] = []

    def timeline() -> str:
        calls.append("timeline")
        return "0.0 s worker-2 ready/active"

    def broken() -> str:
        raise RuntimeError("no manager answers")

    evidence.show_text_on_failure(item, "node states", timeline)  # type: ignore[arg-type]
    evidence.show_text_on_failure(item, "moves", broken)  # type: ignore[arg-type]
    assert calls == []
    assert evidence.texts_of(item) == [  # type: ignore[arg-type]
        ("node states", "0.0 s worker-2 ready/active"),
        ("moves", "(could not collect moves: RuntimeError: no manager answers)"),
    ]


class FakeManagers:
    """What the recorder asks of the managers: one client, or none answering."""

    def __init__(self, api: Any) -> None:
        self.api = api

    def client(self, patience: float | None = None) -> Any:
        assert patience == 0, "the recorder records silent managers as they are, waiting for none"
        if self.api is None:
            raise SwarmError("no manager answers (last: master-1: connection refused)")
        return SimpleNamespace(api=self.api)


def raw_node(nid: str, name: str, state: str) -> dict[str, Any]:
    return {
        "ID": nid,
        "Description": {"Hostname": name},
        "Status": {"State": state},
        "Spec": {"Availability": "active"},
    }


def test_the_recorder_sees_node_states_running_tasks_and_silent_managers() -> None:
    nodes = [raw_node("n1", "worker-1", "ready"), raw_node("n2", "worker-2", "ready")]
    tasks = [
        {"ServiceID": "s1", "NodeID": "n1", "Status": {"State": "running"}},
        {"ServiceID": "s1", "NodeID": "n1", "Status": {"State": "running"}},
        {"ServiceID": "s1", "NodeID": "n2", "Status": {"State": "running"}},
        {"ServiceID": "s1", "NodeID": "n2", "Status": {"State": "preparing"}},
    ]
    api = SimpleNamespace(
        nodes=lambda: nodes,
        tasks=lambda filters: tasks,
        services=lambda filters: [{"ID": "s1", "Spec": {"Name": "DEV_ui"}}],
    )
    managers = FakeManagers(api)
    timeline = resilience.Timeline(start=0.0)
    recorder = disruption.Recorder(managers, "DEV", timeline, limit=1.0)  # type: ignore[arg-type]
    recorder.look()
    nodes[1] = raw_node("n2", "worker-2", "down")
    del tasks[2]
    recorder.look()
    managers.api = None
    recorder.look()
    seen = [what for _, what in timeline.events]
    assert seen[:4] == [
        "managers answering",
        "worker-1 ready/active",
        "worker-2 ready/active",
        "DEV_ui 3 running (worker-1 x2, worker-2)",
    ]
    assert "worker-2 ready/active -> down/active" in seen
    assert "DEV_ui 3 running (worker-1 x2, worker-2) -> 2 running (worker-1 x2)" in seen
    assert seen[-1].startswith("managers answering -> silent (no manager answers (last: master-1")


def test_asking_again_gets_past_a_call_the_engine_holds() -> None:
    """A manager holding the first call (its lost leader's deadline) does not hold the look:
    a later call's answer comes back first and is the one seen."""
    release = threading.Event()
    calls: list[int] = []

    def call() -> int:
        calls.append(len(calls))
        if len(calls) == 1:
            release.wait(10)  # held
            raise RuntimeError("context deadline exceeded")
        return len(calls)

    pool = ThreadPoolExecutor(max_workers=4)
    try:
        asking = disruption.Asking(call, pool, every=0.05, most=3)
        started = time.monotonic()
        seen = None
        while seen is None and time.monotonic() - started < 5:
            seen = asking.look(wait=0.05)
        assert seen is not None and seen.error is None and seen.value == 2
        assert time.monotonic() - started < 2
        assert len(asking.pending) == 1  # the held call, still pending
    finally:
        release.set()
        pool.shutdown(wait=True)


def test_a_question_is_asked_anew_while_earlier_calls_are_held(monkeypatch: pytest.MonkeyPatch) -> None:
    """A manager holds every call asked before it would refuse (HELD_CALL long), then refuses at
    once: the refusal is seen as soon as it is possible, not when a held call frees a place."""
    monkeypatch.setattr(disruption, "HELD_CALL", 2.0)
    started = time.monotonic()
    refuses_from = started + 0.5

    def call() -> str:
        if time.monotonic() < refuses_from:
            time.sleep(disruption.HELD_CALL)
            raise RuntimeError("context deadline exceeded")
        return "refused"

    managers = disruption.Managers(SimpleNamespace(nodes=lambda: [], engines={}))  # type: ignore[arg-type]
    try:
        asking = managers.asking(call, every=0.05)
        seen = None
        while (seen is None or seen.value != "refused") and time.monotonic() - started < 5:
            seen = asking.look(wait=0.05)
        assert seen is not None and seen.value == "refused"
        assert time.monotonic() - refuses_from < 1.0, "the refusal waited for a held call to end"
    finally:
        managers.close()


def test_a_restarted_nodes_global_tasks_may_wait_out_an_overlay_join_stall_on_old_engines() -> None:
    """Engines before 29.6 may stall a restarted node's overlay joins for libnetwork's bulk-sync
    timeout: that node's global tasks get it on top; a newer engine, or a node that only went
    active again, does not."""

    def node(nid: str, name: str, version: str) -> dict[str, Any]:
        return {
            **raw_node(nid, name, "ready"),
            "Description": {"Hostname": name, "Engine": {"EngineVersion": version}},
        }

    api = SimpleNamespace(
        services=lambda **_: [{"ID": "s1", "Spec": {"Name": "DEV_exporter"}}], tasks=lambda **_: []
    )
    managers = SimpleNamespace(
        nodes=lambda: [
            Node(node("n1", "worker-1", "20.10.24+dfsg1")),
            Node(node("n2", "worker-2", "29.6.0")),
        ],
        client=lambda: SimpleNamespace(api=api),
    )
    models = {"exporter": {"image": "exporter:1", "deploy": {"mode": "global"}}}
    stack = SimpleNamespace(name="DEV", declared_services=list(models), declared=models.__getitem__)
    images = SimpleNamespace(get=lambda ref: SimpleNamespace(attrs={"Config": {}}))
    view = StackView(SimpleNamespace(client=SimpleNamespace(images=images)), stack, managers)  # type: ignore[arg-type]

    start = resilience.replacement(models["exporter"], None).seconds
    assert view.global_deadline("worker-1").seconds == start
    assert view.global_deadline("worker-1", restarted=True).seconds == start + resilience.BULK_SYNC_TIMEOUT
    assert view.global_deadline("worker-2", restarted=True).seconds == start


def test_only_a_stack_with_global_services_has_global_tasks_to_wait_for() -> None:
    """A drained or restarted node gets back the global tasks it may run; a stack that declares
    none has nothing to wait for there (no figure, no deadline of 0 s to be past)."""

    def view_of(models: dict[str, Any]) -> StackView:
        specs = [{"ID": f"s{i}", "Spec": {"Name": f"DEV_{name}"}} for i, name in enumerate(models)]
        api = SimpleNamespace(services=lambda **_: specs, tasks=lambda **_: [])
        managers = SimpleNamespace(
            nodes=lambda: [Node(raw_node("n1", "worker-1", "ready"))], client=lambda: SimpleNamespace(api=api)
        )
        stack = SimpleNamespace(name="DEV", declared_services=list(models), declared=models.__getitem__)
        images = SimpleNamespace(get=lambda ref: SimpleNamespace(attrs={"Config": {}}))
        return StackView(SimpleNamespace(client=SimpleNamespace(images=images)), stack, managers)  # type: ignore[arg-type]

    replicated = {"consumer": {"image": "c:1", "deploy": {"replicas": 1}}}
    assert view_of(replicated).globals_for("worker-1") == []
    with_global = {**replicated, "exporter": {"image": "e:1", "deploy": {"mode": "global"}}}
    assert view_of(with_global).globals_for("worker-1") == ["exporter"]


def test_a_manager_slower_than_a_second_still_answers_within_the_patience() -> None:
    def slow_nodes() -> list[dict[str, Any]]:
        time.sleep(1.5)  # a busy manager on slow nodes
        return [raw_node("n1", "master-1", "ready")]

    engine = SimpleNamespace(api=SimpleNamespace(nodes=slow_nodes))
    cluster = SimpleNamespace(
        nodes=lambda: [SimpleNamespace(name="master-1", role="manager")], engines={"master-1": engine}
    )
    managers = disruption.Managers(cast(Any, cluster), answer_within=1.0, patience=5.0)
    try:
        with pytest.raises(SwarmError, match="master-1: no answer within 1 s"):
            managers.nodes(patience=0)
        started = time.monotonic()
        assert [n.name for n in managers.nodes()] == ["master-1"]
        assert time.monotonic() - started < 3
    finally:
        managers.close()


def test_only_the_declared_services_task_containers_count_as_the_stacks() -> None:
    """Right after a deploy the network-join helpers (deployed under the stack's name) may
    still be stopping: their containers going is no task of the stack stopped."""

    def container(cid: str, service: str) -> dict[str, Any]:
        return {
            "Id": cid,
            "Labels": {"com.docker.stack.namespace": "DEV", disruption.SERVICE_NAME_LABEL: service},
        }

    listed = [container("a1", "DEV_ui"), container("j1", "DEV_network-join-2"), container("p1", "DEV_post")]
    engine = SimpleNamespace(api=SimpleNamespace(containers=lambda filters: listed))
    engines = cast(Any, {"worker-1": engine})
    assert disruption.running_containers(engines, "DEV", {"DEV_ui", "DEV_post"}) == {
        "a1": "worker-1",
        "p1": "worker-1",
    }


def test_a_stopped_container_is_told_by_its_task_as_the_managers_show_it() -> None:
    """A container gone from a worker says whether swarm replaced its task, and why."""
    tasks = [
        {
            "ID": "t1",
            "Slot": 2,
            "Status": {
                "State": "failed",
                "Err": "task: non-zero exit (137)",
                "ContainerStatus": {"ContainerID": "a" * 64},
            },
            "DesiredState": "shutdown",
        },
        {
            "ID": "t2",
            "Slot": 1,
            "Status": {"State": "running", "ContainerStatus": {"ContainerID": "b" * 64}},
            "DesiredState": "running",
        },
    ]
    api = SimpleNamespace(
        services=lambda **_: [{"ID": "s1", "Spec": {"Name": "DEV_ui"}}], tasks=lambda **_: tasks
    )
    managers = SimpleNamespace(nodes=lambda: [], client=lambda: SimpleNamespace(api=api))
    models: dict[str, Any] = {"ui": {"image": "ui:1"}}
    stack = SimpleNamespace(name="DEV", declared_services=list(models), declared=models.__getitem__)
    images = SimpleNamespace(get=lambda ref: SimpleNamespace(attrs={"Config": {}}))
    view = StackView(SimpleNamespace(client=SimpleNamespace(images=images)), stack, managers)  # type: ignore[arg-type]

    assert view.explain_stopped(["a" * 12, "b" * 12, "c" * 12]) == [
        "aaaaaaaaaaaa: ui slot 2, failed (desired shutdown, task: non-zero exit (137))",
        "bbbbbbbbbbbb: ui slot 1, running (desired running)",
        "cccccccccccc: no task of the stack has it now",
    ]
