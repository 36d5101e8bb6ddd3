import pytest

from pytest_swarm.errors import ConvergenceTimeout
from pytest_swarm.waiting import Poll, set_heartbeat, wait_for


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def test_returns_when_done() -> None:
    clock = FakeClock()
    states = iter([Poll(False, "1/3"), Poll(False, "2/3"), Poll(True, "3/3", value=3)])
    poll = wait_for(lambda: next(states), what="x", timeout=10, interval=1, clock=clock, sleep=clock.sleep)
    assert poll.value == 3
    assert clock.now == 2.0


def test_timeout_says_desired_state_last_seen_and_hint() -> None:
    clock = FakeClock()
    with pytest.raises(ConvergenceTimeout) as info:
        wait_for(
            lambda: Poll(False, "ui 1/3"),
            what="stack DEV converged",
            timeout=5,
            interval=1,
            hint="docker stack ps DEV",
            clock=clock,
            sleep=clock.sleep,
        )
    message = str(info.value)
    assert "stack DEV converged: not reached within 5 s" in message
    assert "last seen: ui 1/3" in message
    assert "hint: docker stack ps DEV" in message
    assert 5.0 <= clock.now <= 6.0  # bounded: never polls past the deadline by more than a step


def test_transient_errors_are_retried_and_named() -> None:
    clock = FakeClock()
    calls = {"n": 0}

    def probe() -> Poll[None]:
        calls["n"] += 1
        if calls["n"] < 3:
            raise ConnectionError("socket not there yet")
        return Poll(True, "up")

    assert wait_for(
        probe,
        what="engine",
        timeout=5,
        interval=0.5,
        transient=(ConnectionError,),
        clock=clock,
        sleep=clock.sleep,
    ).done
    with pytest.raises(ConvergenceTimeout, match="last error: ConnectionError: down"):
        wait_for(
            lambda: (_ for _ in ()).throw(ConnectionError("down")),
            what="engine",
            timeout=1,
            interval=0.5,
            transient=(ConnectionError,),
            clock=clock,
            sleep=clock.sleep,
        )


def test_other_errors_propagate_at_once() -> None:
    clock = FakeClock()
    with pytest.raises(KeyError):
        wait_for(lambda: {}["x"], what="x", timeout=5, clock=clock, sleep=clock.sleep)
    assert clock.now == 0.0


def test_a_long_wait_says_how_it_stands_every_ten_seconds() -> None:
    clock = FakeClock()
    lines: list[str] = []
    previous = set_heartbeat(lines.append)
    try:
        counts = iter(range(100))
        wait_for(
            lambda: Poll((n := next(counts)) >= 25, f"post {n % 3}/3"),
            what="stack DEV converged",
            timeout=60,
            interval=1,
            clock=clock,
            sleep=clock.sleep,
        )
    finally:
        set_heartbeat(previous)
    assert lines == [
        "stack DEV converged: 10 s of 60 s: post 1/3",
        "stack DEV converged: 20 s of 60 s: post 2/3",
    ]
