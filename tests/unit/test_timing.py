from pytest_swarm.timing import DECLARED_WAIT, TOOK, timing_of


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


def test_an_operation_run_beside_others_is_timed_by_itself() -> None:
    found = timing_of(
        "t::z",
        80.0,  # the test waited 80 s for an outcome that was under way before it started
        [(DECLARED_WAIT, "30|monitor"), (TOOK, "42.5|ui roll, beside the others")],
    )
    assert found is not None
    assert (found.seconds, found.rest) == (42.5, 12.5)
    assert "42.5 s (ui roll, beside the others) = declared waits 30.0 s" in found.describe()
