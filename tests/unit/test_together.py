import threading
import time
from types import SimpleNamespace

import pytest

from pytest_swarm.together import Interrupted, Together, early_work_last, interrupt_all, remove_all, timed


def test_operations_run_at_the_same_time_and_each_keeps_its_outcome() -> None:
    barrier = threading.Barrier(3, timeout=5)  # passes only if all three run at once

    def meet(value: int) -> int:
        barrier.wait()
        return value

    together = Together({key: (lambda key=key: meet(key)) for key in (1, 2, 3)})
    try:
        assert [together.outcome(k, timeout=5).get() for k in (1, 2, 3)] == [1, 2, 3]
    finally:
        together.close()


def test_an_error_or_a_skip_is_raised_by_the_test_that_asks_for_it() -> None:
    def broken() -> None:
        raise ValueError("no such image")

    def skipped() -> None:
        pytest.skip("no -broken variant")

    together = Together({"a": broken, "b": skipped, "c": lambda: "fine"})
    together.close()
    with pytest.raises(ValueError, match="no such image"):
        together.outcome("a", timeout=1).get()
    with pytest.raises(pytest.skip.Exception, match="no -broken variant"):
        together.outcome("b", timeout=1).get()
    assert together.outcome("c", timeout=1).get() == "fine"


def test_an_interrupt_ends_the_waits_of_running_operations() -> None:
    holder: list[Together[str, str]] = []
    started, known = threading.Event(), threading.Event()

    def waits_a_minute() -> str:
        started.set()
        assert known.wait(5)
        for _ in range(600):
            holder[0].sleep(0.1)
        return "not interrupted"

    holder.append(Together({"x": waits_a_minute}))
    known.set()
    assert started.wait(5)
    begun = time.monotonic()
    interrupt_all()  # what Ctrl-C does, through the plugin's pytest_keyboard_interrupt
    holder[0].close()
    assert time.monotonic() - begun < 5
    with pytest.raises(Interrupted):
        holder[0].outcome("x", timeout=1).get()


def test_timed_keeps_the_wall_time() -> None:
    outcome = timed(lambda: time.sleep(0.05) or "done")
    assert outcome.get() == "done" and 0.04 < outcome.seconds < 1


def test_remove_all_removes_every_stack_then_names_the_first_failure() -> None:
    removed: list[str] = []

    class Stack:
        def __init__(self, name: str, fails: bool = False) -> None:
            self.name, self.fails = name, fails

        def remove(self) -> None:
            removed.append(self.name)
            if self.fails:
                raise RuntimeError(f"{self.name}: network still in use")

    with pytest.raises(RuntimeError, match="STAGE: network still in use"):
        remove_all([Stack("STAGE", fails=True), Stack("PROD"), Stack("EXTRA")])
    assert sorted(removed) == ["EXTRA", "PROD", "STAGE"]


def test_modules_around_early_work_keep_their_order_within_each_group() -> None:
    def module(name: str, **attributes: object) -> SimpleNamespace:
        return SimpleNamespace(__name__=name, **attributes)

    updates = module("updates", AFTER_EARLY_WORK=True)
    resilience = module("resilience", start_early=print, OWN_CLUSTER=True)
    envs = module("envs", start_early=print)
    restart = module("restart", start_early=print, START_EARLY_ORDER=1)
    scaling, limits, cluster = module("scaling"), module("limits"), module("cluster")
    infra = module("infra", READS_LATE=True)
    items = [
        SimpleNamespace(module=infra, fixturenames=[], name="i1"),
        SimpleNamespace(module=resilience, fixturenames=[], name="x1"),
        SimpleNamespace(module=restart, fixturenames=[], name="r1"),
        SimpleNamespace(module=updates, fixturenames=[], name="u1"),
        SimpleNamespace(module=scaling, fixturenames=[], name="s1"),
        SimpleNamespace(module=scaling, fixturenames=["swarm_node_control"], name="s2"),
        SimpleNamespace(module=envs, fixturenames=[], name="e1"),
        SimpleNamespace(module=limits, fixturenames=[], name="l1"),
        SimpleNamespace(module=cluster, fixturenames=[], name="c1"),
        SimpleNamespace(module=envs, fixturenames=[], name="e2"),
    ]
    early_work_last(items)  # type: ignore[arg-type]
    # the others as they came, who reads late last among them; then who started early work, in
    # the order it started; then who waits for all of it; last, who works on a cluster of its own
    assert [i.name for i in items] == ["l1", "c1", "i1", "e1", "e2", "r1", "u1", "s1", "s2", "x1"]


def test_operations_wait_for_start_when_their_holder_is_not_ready() -> None:
    """An object holding a Together whose operations use it: they start once it is in place."""

    class Holder:
        def __init__(self) -> None:
            self.together: Together[str, float] = Together({"a": self.work}, start=False)
            self.together.start()

        def work(self) -> float:
            self.together.sleep(0.01)  # the attribute exists by now
            return 1.0

    holder = Holder()
    holder.together.close()
    assert holder.together.outcome("a", timeout=0).get() == 1.0
