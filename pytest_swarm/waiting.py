"""The one polling primitive: poll a probe until it is satisfied or a monotonic deadline passes.

A probe returns a ``Poll``: whether the awaited state is reached, and a short description of
the state seen, so a timeout says desired vs actual instead of just "timed out". Transient
errors (an engine restarting, a socket not yet there) are retried and named in the message.
A long wait is not silent: every ``HEARTBEAT`` seconds it tells the run's heartbeat (the
terminal, once the plugin set it) what it awaits and what it saw last.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

import tenacity

from .errors import ConvergenceTimeout

T = TypeVar("T")
HEARTBEAT = 10.0  # seconds between two lines about one wait


def _silent(_line: str) -> None:
    return None


_heartbeat: list[Callable[[str], None]] = [_silent]


def set_heartbeat(write: Callable[[str], None]) -> Callable[[str], None]:
    """Where long waits say how they stand (the plugin gives its progress lines); returns the
    previous one, to put back."""
    previous, _heartbeat[0] = _heartbeat[0], write
    return previous


@dataclass(frozen=True)
class Poll(Generic[T]):
    """One look at the world: ``done`` when the awaited state is reached."""

    done: bool
    state: str = ""
    value: T | None = None


def wait_for(
    probe: Callable[[], Poll[T]],
    *,
    what: str,
    timeout: float,
    interval: float = 0.2,
    transient: tuple[type[BaseException], ...] = (),
    hint: str = "",
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> Poll[T]:
    """Poll ``probe`` every ``interval`` seconds until it is done; return the final Poll.

    Example::

        web = swarm_stack.service("web")
        wait_for(lambda: Poll(web.reload().running == 3, f"{web.running}/3 running"),
                 what="web at 3 replicas", timeout=60, interval=0.5)

    Raises:
        ConvergenceTimeout: after ``timeout`` seconds, naming ``what``, the last state seen,
            the last transient error and ``hint``.
    """
    started = clock()
    deadline = started + timeout
    last: list[Poll[T]] = []
    errors: list[BaseException] = []
    beat = [started]

    def attempt() -> Poll[T]:
        try:
            poll = probe()
        except transient as exc:
            errors.append(exc)
            poll = Poll(False, f"{type(exc).__name__}: {exc}")
        else:
            last.append(poll)
        if not poll.done and clock() - beat[0] >= HEARTBEAT:
            beat[0] = clock()
            _heartbeat[0](f"{what}: {beat[0] - started:.0f} s of {timeout:g} s: {poll.state}")
        return poll

    retrying = tenacity.Retrying(
        stop=lambda _state: clock() >= deadline,
        wait=lambda _state: max(0.0, min(interval, deadline - clock())),
        retry=tenacity.retry_if_result(lambda poll: not poll.done),
        sleep=sleep,
        retry_error_callback=lambda state: state.outcome.result() if state.outcome else None,
    )
    result: Poll[T] | None = retrying(attempt)
    if result is not None and result.done:
        return result
    seen = last[-1].state if last else "nothing (every probe failed)"
    message = f"{what}: not reached within {timeout:g} s; last seen: {seen}"
    if errors:
        message += f"; last error: {type(errors[-1]).__name__}: {errors[-1]}"
    if hint:
        message += f"\nhint: {hint}"
    raise ConvergenceTimeout(message)
