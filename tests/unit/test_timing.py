from pytest_swarm.timing import DECLARED_WAIT, timing_of


def test_split_into_declared_waits_and_the_rest() -> None:
    found = timing_of(
        "t::x",
        45.0,
        [
            (DECLARED_WAIT, "20.000|update delay 10 s x 2"),
            (DECLARED_WAIT, "10|monitor"),
            ("other", "ignored"),
        ],
    )
    assert found is not None
    assert (found.declared, found.rest) == (30.0, 15.0)
    assert found.describe() == (
        "t::x: 45.0 s = declared waits 30.0 s (update delay 10 s x 2; monitor) "
        "+ rest 15.0 s (50% of the declared waits)"
    )


def test_no_declared_wait_no_line() -> None:
    assert timing_of("t::y", 3.0, [("other", "x")]) is None
