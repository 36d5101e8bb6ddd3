"""The resilience suite's pure logic: deadlines from the swarm's timers and the declared values,
figures, the partition's rules, and the evidence texts (no engine)."""

from __future__ import annotations

import pytest

from pytest_swarm import declared, resilience
from pytest_swarm.resilience import Deadline, Figure, SwarmTimers

SPEC = {
    "Spec": {
        "Dispatcher": {"HeartbeatPeriod": 5_000_000_000},
        "Raft": {"ElectionTick": 10, "HeartbeatTick": 1},
    }
}


def test_timers_are_read_from_the_swarm_spec() -> None:
    assert SwarmTimers.of_swarm(SPEC) == SwarmTimers(heartbeat=5.0, election_tick=10)
    fast = {"Spec": {"Dispatcher": {"HeartbeatPeriod": 2_000_000_000}, "Raft": {"ElectionTick": 3}}}
    assert SwarmTimers.of_swarm(fast) == SwarmTimers(heartbeat=2.0, election_tick=3)
    assert SwarmTimers.of_swarm({}) == SwarmTimers()  # swarmkit's defaults where the spec says nothing


def test_deadlines_follow_the_heartbeat_and_the_election_tick() -> None:
    timers = SwarmTimers(heartbeat=5.0, election_tick=10)
    down = timers.node_down()
    assert down.seconds == pytest.approx(3 * 5.5 + 2)
    assert "3 missed heartbeats x (5 s + 0.5 s)" in down.basis
    assert SwarmTimers(heartbeat=2.0).node_down().seconds == pytest.approx(3 * 2.5 + 2)
    assert timers.new_leader().seconds == pytest.approx(62.0)  # three rounds of up to 20 ticks
    assert "election tick 10" in timers.new_leader().basis
    assert timers.changes_refused().seconds == pytest.approx(34.0)  # 20 ticks, 11 leaderless, 1 s asking
    assert timers.rejoin().seconds == pytest.approx(8 + 20 + 5.5 + 2)
    assert timers.observation().seconds == pytest.approx(16.5)


def test_a_replacement_waits_the_restart_delay_a_start_and_the_first_healthcheck() -> None:
    spec = {"deploy": {"restart_policy": {"condition": "on-failure", "delay": "3s"}}}
    health = declared.Healthcheck(interval=5.0, start_period=0.0, retries=3)
    got = resilience.replacement(spec, health)
    assert got.seconds == pytest.approx(3 + resilience.TASK_START + 5)
    assert got.basis == "restart delay 3 s + a task's start 20 s + first healthcheck 5 s"
    # no policy: swarm's default delay; no healthcheck: nothing to wait for it
    assert resilience.replacement({}, None).seconds == pytest.approx(5 + resilience.TASK_START)
    # a drained node's task: no restart delay, the old one stops first: out of the load
    # balancer (the engine waits 2 s), then within its stop_grace_period
    drained = resilience.replacement({"stop_grace_period": "1m"}, None, drained=True)
    assert drained.seconds == pytest.approx(2 + 60 + resilience.TASK_START)
    assert drained.basis.startswith("out of the load balancer 2 s + stop_grace_period 60 s")
    default = resilience.replacement({}, None, drained=True)
    assert default.seconds == pytest.approx(2 + 10 + resilience.TASK_START)


def test_a_task_stop_is_the_load_balancers_delay_and_the_declared_grace() -> None:
    assert resilience.task_stop({"stop_grace_period": "30s"}).seconds == 32.0
    assert resilience.task_stop({}).seconds == 12.0  # the engine's default grace, 10 s


def test_a_node_stopping_many_tasks_at_once_adds_the_engines_teardown_of_each() -> None:
    ten = resilience.teardown(10)
    assert ten.seconds == pytest.approx(10 * resilience.TASK_TEARDOWN)
    assert ten.basis == f"the engine's teardown {resilience.TASK_TEARDOWN:g} s x 10 tasks"
    assert resilience.teardown(0).seconds == 0.0
    # nodes whose tasks started twice as slowly as TASK_START tear down twice as slowly
    slow = resilience.teardown(10, resilience.task_start(2 * resilience.TASK_START))
    assert slow.seconds == pytest.approx(2 * ten.seconds)


def test_longest_names_the_service_and_says_when_there_is_none() -> None:
    pairs = [("ui", Deadline(30.0, "a")), ("post", Deadline(26.0, "b"))]
    assert resilience.longest(pairs) == ("ui", Deadline(30.0, "a"))
    assert resilience.longest([]) == ("", Deadline(0.0, "nothing to wait for"))
    assert (Deadline(1.0, "x") + Deadline(2.5, "y")) == Deadline(3.5, "x + y")


def test_a_figure_says_whether_it_held_and_gives_junit_properties() -> None:
    held = Figure("worker lost", "to Down", 12.44, deadline=Deadline(18.5, "3 missed heartbeats"))
    assert held.held is True
    assert held.key == "worker_lost_to_down"
    assert held.properties() == [
        ("swarm_resilience_worker_lost_to_down_seconds", "12.4"),
        ("swarm_resilience_worker_lost_to_down_deadline_seconds", "18.5"),
    ]
    assert held.describe() == (
        "worker lost: to Down 12.4 s, within its deadline 18.5 s (3 missed heartbeats)"
    )
    late = Figure("partition", "healed: to Ready", 40.0, deadline=Deadline(35.5, "backoff"))
    assert late.held is False and "PAST its deadline 35.5 s" in late.describe()
    counted = Figure("worker lost", "failed requests during", 3, "requests", note="of 90")
    assert counted.held is None
    assert counted.shown() == "3 requests of 90"
    assert counted.properties() == [("swarm_resilience_worker_lost_failed_requests_during_requests", "3")]


def test_the_partition_drops_swarm_traffic_with_each_peer_both_ways_and_nothing_else() -> None:
    commands = resilience.partition_commands(["10.0.0.2", "10.0.0.3"])
    chain = resilience.PARTITION_CHAIN
    assert commands[:3] == [
        f"iptables -w -N {chain}",
        f"iptables -w -I INPUT 1 -j {chain}",
        f"iptables -w -I OUTPUT 1 -j {chain}",
    ]
    rules = commands[3:]
    assert len(rules) == 2 * 4 * 2 * 2  # peers x ports x (--dport, --sport) x (from, to)
    assert all(r.endswith("-j DROP") for r in rules)
    assert f"iptables -w -A {chain} -s 10.0.0.2 -p tcp --dport 2377 -j DROP" in rules
    assert f"iptables -w -A {chain} -d 10.0.0.3 -p udp --dport 4789 -j DROP" in rules
    assert f"iptables -w -A {chain} -d 10.0.0.3 -p tcp --sport 7946 -j DROP" in rules
    assert not [r for r in rules if "--dport 22 " in r or "--dport 2376" in r]  # ssh, TLS engines untouched
    assert resilience.heal_commands()[-1] == f"iptables -w -X {chain}"


@pytest.mark.parametrize(
    ("error", "refused"),
    [
        (
            "rpc error: code = Unknown desc = The swarm does not have a leader. It's possible that too few "
            "managers are online. Make sure more than half of the managers are online.",
            True,
        ),
        ("rpc error: code = Unavailable desc = connection error: connection refused", False),
        ("update out of sequence", False),
    ],
)
def test_a_refusal_for_want_of_quorum_is_told_from_other_errors(error: str, refused: bool) -> None:
    assert resilience.refuses_for_quorum(error) is refused


def test_the_longest_silence_counts_the_edges() -> None:
    assert resilience.longest_silence([1.0, 2.0, 9.0], 0.0, 10.0) == pytest.approx(7.0)
    assert resilience.longest_silence([], 0.0, 4.0) == pytest.approx(4.0)
    assert resilience.longest_silence([0.5, 3.5, 30.0], 0.0, 4.0) == pytest.approx(3.0)


def test_the_timeline_keeps_changes_only() -> None:
    timeline = resilience.Timeline(start=100.0)
    timeline.see(100.0, "worker-2", "ready/active")
    timeline.mark(101.0, "worker-2 killed")
    timeline.see(102.0, "worker-2", "ready/active")
    timeline.see(115.5, "worker-2", "down/active")
    assert timeline.render().splitlines() == [
        "    0.0 s  worker-2 ready/active",
        "    1.0 s  worker-2 killed",
        "   15.5 s  worker-2 ready/active -> down/active",
    ]


def test_node_state_names_the_leader_and_the_reachability() -> None:
    leader = {
        "Status": {"State": "ready"},
        "Spec": {"Availability": "active"},
        "ManagerStatus": {"Leader": True},
    }
    lost = {
        "Status": {"State": "down"},
        "Spec": {"Availability": "active"},
        "ManagerStatus": {"Reachability": "unreachable"},
    }
    worker = {"Status": {"State": "ready"}, "Spec": {"Availability": "drain"}}
    assert resilience.node_state(leader) == "ready/active leader"
    assert resilience.node_state(lost) == "down/active unreachable"
    assert resilience.node_state(worker) == "ready/drain"


def task(
    tid: str, service: str, slot: int | None, node: str, state: str, desired: str, at: str, err: str = ""
) -> dict:
    status = {"State": state, "Timestamp": f"2026-11-30T{at}Z", **({"Err": err} if err else {})}
    return {
        "ID": tid,
        "ServiceID": service,
        "Slot": slot,
        "NodeID": node,
        "DesiredState": desired,
        "CreatedAt": f"2026-11-30T{at}Z",
        "Status": status,
    }


def test_task_moves_show_each_place_with_its_tasks_in_order() -> None:
    origin = resilience.seconds("2026-11-30T01:00:00.000Z")
    tasks = [
        task("t2", "s1", 1, "n1", "running", "running", "01:00:20.0"),
        task("t1", "s1", 1, "n2", "running", "shutdown", "01:00:00.0"),  # its node lost: last seen running
        task("t3", "s1", 2, "n1", "running", "running", "00:59:00.0"),  # before the scenario, never moved
        task("t4", "s2", None, "n2", "shutdown", "shutdown", "01:00:05.0", err="node down"),
    ]
    moves = resilience.task_moves(
        tasks, {"s1": "DEV_ui", "s2": "DEV_node-exporter"}, {"n1": "worker-1", "n2": "worker-2"}, origin
    )
    assert moves == [
        "DEV_node-exporter node worker-2: worker-2 shutdown (desired shutdown) at +5.0 s 'node down'",
        "DEV_ui slot 1: worker-2 running (desired shutdown) at +0.0 s"
        " -> worker-1 running (desired running) at +20.0 s",
    ]


def test_stop_grace_period_is_declared_or_the_engines() -> None:
    assert declared.stop_grace_period({"stop_grace_period": "30s"}) == 30.0
    assert declared.stop_grace_period({}) == 10.0


def test_a_task_gets_as_long_to_start_as_the_deploy_took_where_the_nodes_are_slower() -> None:
    assert (
        resilience.task_start(9.3)
        == resilience.task_start()
        == resilience.Deadline(resilience.TASK_START, "a task's start 20 s")
    )
    slow = resilience.task_start(61.2)  # UML: the deploy's slowest task, created to running
    assert slow.seconds == 62
    assert slow.basis == "a task's start as slow as the deploy's slowest 62 s"
    got = resilience.replacement({}, None, start=slow)
    assert got.seconds == pytest.approx(5 + 62)
    assert got.basis == "restart delay 5 s + a task's start as slow as the deploy's slowest 62 s"
