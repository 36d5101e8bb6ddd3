import pytest

from pytest_swarm.declared import (
    limits,
    parse_bytes,
    parse_duration,
    replicas,
    restart_policy,
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
