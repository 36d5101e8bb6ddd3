"""What a declared update_config implies in batches, time and declared waits."""

from __future__ import annotations

from pytest_swarm import declared, rolling

ONE_BY_ONE = declared.UpdateConfig(
    parallelism=1,
    delay=10.0,
    failure_action="rollback",
    monitor=5.0,
    max_failure_ratio=0.0,
    order="start-first",
)
HEALTH = declared.Healthcheck(interval=5.0, start_period=0.0, retries=3)


def test_batches_follow_parallelism_and_zero_means_all_at_once() -> None:
    assert rolling.batch_count(3, ONE_BY_ONE) == 3
    assert rolling.batch_count(5, declared.UpdateConfig(2, 0.0, "pause", 0.0, 0.0, "stop-first")) == 3
    assert rolling.batch_count(4, declared.UpdateConfig(0, 0.0, "pause", 0.0, 0.0, "stop-first")) == 1
    assert rolling.batch_count(0, ONE_BY_ONE) == 1  # a global service on no node yet: one batch


def test_an_update_gets_each_batchs_start_check_and_delay_then_the_monitor() -> None:
    per_batch = rolling.START_ALLOWANCE + HEALTH.interval + ONE_BY_ONE.delay
    expected = 3 * per_batch + max(ONE_BY_ONE.monitor, HEALTH.seconds_to_unhealthy()) + 60
    assert rolling.update_deadline(3, ONE_BY_ONE, HEALTH) == expected


def test_declared_waits_name_the_delays_the_monitor_and_the_first_checks() -> None:
    waits = rolling.declared_update_waits(3, ONE_BY_ONE, HEALTH)
    assert waits == [
        (20.0, "update delay 10 s x 2"),
        (5.0, "monitor 5 s"),
        (20.0, "first healthcheck 5 s x 4"),
    ]
