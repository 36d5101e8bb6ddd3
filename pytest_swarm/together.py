"""Slow checks of independent things, run at the same time.

A rolling update spends most of its time waiting (update delay, monitor, healthchecks); so does
a restart policy. A module whose tests each drive such an operation on a different service (or
a stack of its own) starts every selected operation at once, in threads, and each test then
waits for its own outcome and asserts on it. The module's fixture waits for all of them (and so
for every restore) before the module ends, so no other module sees a cluster mid-operation.

An operation reports its own wall time; the terminal summary uses it instead of the test's
call time, which is only the wait for an outcome that was already under way.
"""

from __future__ import annotations

import threading
import time
import weakref
from collections.abc import Callable, Hashable, Iterable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from types import ModuleType
from typing import Any, Generic, TypeVar, cast

import pytest

K = TypeVar("K", bound=Hashable)
T = TypeVar("T")


class Interrupted(Exception):
    """The run is ending (Ctrl-C, a failed session): operations stop waiting."""


@dataclass(frozen=True)
class Outcome(Generic[T]):
    """What one operation returned (or raised), and how long it ran."""

    value: T | None
    error: BaseException | None
    seconds: float

    def get(self) -> T:
        if self.error is not None:
            raise self.error
        return cast(T, self.value)


def timed(operation: Callable[[], T]) -> Outcome[T]:
    """Run ``operation``; keep what it returned or raised (a skip included) and its wall time."""
    started = time.monotonic()
    try:
        value = operation()
    except (Exception, pytest.skip.Exception, pytest.fail.Exception) as exc:  # raised in the test
        return Outcome(None, exc, time.monotonic() - started)
    return Outcome(value, None, time.monotonic() - started)


_LIVE: weakref.WeakSet[Together[Any, Any]] = weakref.WeakSet()


def interrupt_all() -> None:
    """Ctrl-C (or SIGTERM): every running operation stops at its next wait."""
    for together in list(_LIVE):
        together.interrupt()


class Together(Generic[K, T]):
    """Operations keyed by what they touch, all started at once; ``outcome(key)`` waits for one.

    Example::

        scaled = Together({name: partial(scale_and_check, name) for name in ("ui", "post")})
        scaled.close()  # every operation ended
        problems = scaled.outcome("ui", timeout=0).get()  # what it returned, or its error raised
    """

    def __init__(
        self, operations: Mapping[K, Callable[[], T]], name: str = "swarm", start: bool = True
    ) -> None:
        """``start=False``: the operations start with ``start()``, once whatever they use of the
        object that holds this one (its ``sleep``, say) is in place."""
        self._stop = threading.Event()
        self._operations = dict(operations)
        self._pool = ThreadPoolExecutor(max_workers=max(len(operations), 1), thread_name_prefix=name)
        self._futures: dict[K, Future[Outcome[T]]] = {}
        _LIVE.add(self)
        if start:
            self.start()

    def start(self) -> None:
        for key, operation in self._operations.items():
            if key not in self._futures:
                self._futures[key] = self._pool.submit(timed, operation)

    def __contains__(self, key: object) -> bool:
        return key in self._futures

    def outcome(self, key: K, timeout: float) -> Outcome[T]:
        """Wait (at most ``timeout`` s) for the operation on ``key``."""
        return self._futures[key].result(timeout=timeout)

    def sleep(self, seconds: float) -> None:
        """A sleep for the operations' polling loops that ends them when the run stops."""
        if self._stop.wait(seconds):
            raise Interrupted("the run is ending")

    def interrupt(self) -> None:
        self._stop.set()

    @property
    def interrupted(self) -> bool:
        """Whether the run is ending: an operation skips what it would only put back for later."""
        return self._stop.is_set()

    def close(self) -> None:
        """Wait for every operation (each is bounded by its own deadlines)."""
        self._pool.shutdown(wait=True)
        _LIVE.discard(self)


def selected_params(
    request: pytest.FixtureRequest, argnames: Iterable[str], module: ModuleType | None = None
) -> dict[str, set[Any]]:
    """For each test function of ``module`` (default: the requesting one): the values its
    parameter (the first of ``argnames`` it has) takes in the items this run will execute
    (after -k, --deselect, ...)."""
    names = tuple(argnames)
    module = module or request.module
    found: dict[str, set[Any]] = {}
    for item in request.session.items:
        if not isinstance(item, pytest.Function) or item.module is not module:
            continue
        params = getattr(item, "callspec", None)
        argname = next((a for a in names if params is not None and a in params.params), None)
        if params is not None and argname is not None:
            found.setdefault(item.originalname, set()).add(params.params[argname])
    return found


# Handles of operations a suite module started at the session's start (acceptance/conftest.py
# calls the module's ``start_early``), by module name, until the module's fixture takes them.
EARLY = pytest.StashKey[dict[str, Any]]()


def wait_early(config: pytest.Config) -> None:
    """Until what the suites started early is under way no more (a check that adds or stops
    nodes first lets them finish: a node leaving mid-way would change what they watch)."""
    early_work_so_far(config)()


def early_work_so_far(config: pytest.Config) -> Callable[[], None]:
    """A wait for the work the suites have started early so far (not what starts later): what
    a ``start_early`` hands its own work to run first, when that work would slow it."""
    before = list(config.stash.get(EARLY, {}).values())

    def wait() -> None:
        for handle in before:
            handle.wait()

    return wait


def early_work_last(items: list[pytest.Item]) -> None:
    """Order the modules around the work started early, each group keeping the order it had
    (pytest-randomly's shuffle, or the files'):

    1. the others: they run while the early work does, instead of waiting for it; those that
       say ``READS_LATE = True`` last among them (their check waits on the stack's own pace,
       e.g. prometheus finding and scraping new tasks: by then that wait has mostly passed);
    2. those that started early work (they define ``start_early``): they wait for it, check it
       and remove what it made (side-by-side envs load every node while they are up); in the
       order their work was started (``START_EARLY_ORDER``), so the first checks its work
       while the next one's still runs;
    3. those that wait for all of it: a test that changes nodes (``swarm_node_control``), or a
       module that says ``AFTER_EARLY_WORK = True`` (its timings are what it checks);
    4. those whose work runs on a cluster of its own (``OWN_CLUSTER = True``): nothing waits for
       it, so the others run while it does, and its tests come when it is most likely done.
    """

    def group(item: pytest.Item) -> tuple[int, int]:
        module = getattr(item, "module", None)
        if getattr(module, "OWN_CLUSTER", False):
            return (3, 0)
        if getattr(module, "AFTER_EARLY_WORK", False):
            return (2, 0)
        if hasattr(module, "start_early"):
            return (1, getattr(module, "START_EARLY_ORDER", 0))
        return (0, 1) if getattr(module, "READS_LATE", False) else (0, 0)

    def module_of(item: pytest.Item) -> str | None:
        return getattr(getattr(item, "module", None), "__name__", None)

    groups: dict[str | None, tuple[int, int]] = {}
    for item in items:
        waits = (2, 0) if "swarm_node_control" in getattr(item, "fixturenames", ()) else group(item)
        groups[module_of(item)] = max(groups.get(module_of(item), (0, 0)), waits)
    items.sort(key=lambda item: groups[module_of(item)])  # stable: each group keeps its order


def take_early(request: pytest.FixtureRequest) -> Any | None:
    """What the requesting module's ``start_early`` returned, if it ran; the caller closes it."""
    return request.config.stash.get(EARLY, {}).pop(request.module.__name__, None)


def remove_all(stacks: Iterable[Any]) -> None:
    """``stack.remove()`` for every stack at the same time; after all ran, raise the first error
    (a stack left behind fails whoever removes it)."""
    by_name = {stack.name: stack for stack in stacks}
    removing = Together({name: stack.remove for name, stack in by_name.items()}, name="remove")
    removing.close()
    for name in by_name:
        removing.outcome(name, timeout=0).get()
