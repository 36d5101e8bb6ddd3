import pytest

from pytest_swarm import declared
from pytest_swarm.declared import (
    RestartPolicy,
    limits,
    parse_bytes,
    parse_duration,
    replicas,
    restart_policy,
    restart_problems,
    update_config,
)


@pytest.mark.parametrize(
    ("text", "seconds"), [("10s", 10), ("1m30s", 90), ("500ms", 0.5), ("2h", 7200), (3, 3), ("5", 5)]
)
def test_durations(text: object, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["ten seconds", "10x", "1m30", ""])
def test_bad_durations(text: str) -> None:
    with pytest.raises(ValueError, match="not a duration"):
        parse_duration(text)


@pytest.mark.parametrize(
    ("text", "size"),
    [("150M", 150 * 2**20), ("1G", 2**30), ("314572800", 314572800), ("512k", 524288), (7, 7)],
)
def test_sizes(text: object, size: int) -> None:
    assert parse_bytes(text) == size


def test_what_a_rendered_service_declares() -> None:
    service = {
        "deploy": {
            "replicas": 3,
            "resources": {"limits": {"cpus": "0.25", "memory": "157286400"}},
            "restart_policy": {"condition": "on-failure", "max_attempts": 3, "delay": "3s"},
            "update_config": {"parallelism": 2, "delay": "10s", "failure_action": "rollback"},
        }
    }
    assert replicas(service) == 3
    assert limits(service).cpus == 0.25 and limits(service).memory == 150 * 2**20
    policy = restart_policy(service)
    assert policy is not None and (policy.condition, policy.max_attempts, policy.delay) == (
        "on-failure",
        3,
        3.0,
    )
    update = update_config(service)
    assert (update.parallelism, update.delay, update.failure_action) == (2, 10.0, "rollback")
    assert (update.monitor, update.order) == (5.0, "stop-first")  # swarm's defaults


def test_defaults_when_nothing_is_declared() -> None:
    assert replicas({}) == 1
    assert replicas({"deploy": {"mode": "global"}}) is None
    assert limits({}).cpus is None and limits({}).memory is None
    assert restart_policy({}) is None
    assert update_config({}).failure_action == "pause"


def test_healthcheck_from_the_image_unless_compose_overrides_it() -> None:
    seconds = 1_000_000_000  # the engine's unit
    image = {"Healthcheck": {"Test": ["CMD", "true"], "Interval": 5 * seconds, "StartPeriod": 10 * seconds}}
    found = declared.healthcheck({}, image)
    assert found == declared.Healthcheck(interval=5.0, start_period=10.0, retries=3)
    assert found.seconds_to_unhealthy() == 20.0  # checks at 10 (end of the start period), 15, 20
    override = declared.healthcheck({"healthcheck": {"interval": "2s", "retries": 5}}, image)
    assert override == declared.Healthcheck(interval=2.0, start_period=10.0, retries=5)


def test_no_healthcheck_or_a_disabled_one() -> None:
    assert declared.healthcheck({}, {}) is None
    assert declared.healthcheck({}, {"Healthcheck": {"Test": ["NONE"]}}) is None
    image = {"Healthcheck": {"Test": ["CMD", "true"]}}
    assert declared.healthcheck({"healthcheck": {"disable": True}}, image) is None
    engine_defaults = declared.Healthcheck(interval=30.0, start_period=0.0, retries=3)
    assert declared.healthcheck({}, image) == engine_defaults


def test_crowded_starts_follow_each_update_worker_not_batches() -> None:
    config = update_config({"deploy": {"update_config": {"parallelism": 2, "delay": "10s"}}})
    # two workers: the second's first task ran 4 s late, and so did its next (seen in a round)
    assert config.crowded([0.0, 4.0, 10.5, 14.6]) == []
    # a third task within 10 s of two others: more than 2 at once
    assert config.crowded([0.0, 4.0, 9.0]) == [(0.0, 9.0)]
    one = update_config({"deploy": {"update_config": {"parallelism": 1, "delay": "5s"}}})
    assert one.crowded([0.0, 5.2, 10.4]) == []
    assert one.crowded([0.0, 3.0]) == [(0.0, 3.0)]
    assert update_config({"deploy": {"update_config": {"parallelism": 0}}}).crowded([0.0, 0.0, 0.1]) == []


def runs_every(gap: float, count: int, length: float = 0.2) -> list[tuple[float, float]]:
    """``count`` runs of ``length`` s, each starting ``gap`` s after the one before ended."""
    found, start = [], 100.0
    for _ in range(count):
        found.append((start, start + length))
        start += length + gap
    return found


def test_restarts_without_a_window_count_every_attempt() -> None:
    policy = RestartPolicy(condition="on-failure", delay=1.0, max_attempts=3, window=0.0)
    assert restart_problems(policy, runs_every(1.2, 4), stopped=True) == []
    assert restart_problems(policy, runs_every(1.2, 6), stopped=True) == [
        "max_attempts 3 -> 4 runs expected, swarm ran it 6 times"
    ]
    assert restart_problems(policy, runs_every(0.4, 4), stopped=True) == [
        "restart delay 1 s, yet runs started [0.4, 0.4, 0.4] s after the one before"
    ]


def test_restarts_within_a_window_are_counted_in_it() -> None:
    """max_attempts 3 in 10 s: restarts 1.5 s apart hit the limit; 5 s apart never do."""
    policy = RestartPolicy(condition="on-failure", delay=1.0, max_attempts=3, window=10.0)
    assert restart_problems(policy, runs_every(1.5, 4), stopped=True) == []
    assert restart_problems(policy, runs_every(5.0, 9), stopped=False) == []  # restarts forever
    wrong = restart_problems(policy, runs_every(1.5, 6), stopped=True)
    assert wrong[0].startswith("restarted after run 4 though 3 restarts fell in the 10 s window")
    wrong = restart_problems(policy, runs_every(5.0, 3), stopped=True)
    assert wrong == [
        "not restarted after run 3 though only 2 restarts fell in the 10 s window before it (max_attempts 3)"
    ]


def test_bind_sources_are_the_bind_mounts_host_paths() -> None:
    service = {
        "volumes": [
            {"type": "bind", "source": "/srv/app/conf", "target": "/etc/app"},
            {"type": "volume", "source": "data", "target": "/data"},
            {"type": "tmpfs", "target": "/tmp"},
        ]
    }
    assert declared.bind_sources(service) == ["/srv/app/conf"]
    assert declared.bind_sources({}) == []
