"""Each test's time split into the waits its stack declares and the rest (the suite's overhead)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

DECLARED_WAIT = "swarm_declared_wait"
TOOK = "swarm_took"  # the wall time of an operation that ran beside others (together.py)


@dataclass(frozen=True)
class Timing:
    test: str
    seconds: float
    declared: float
    why: tuple[str, ...]
    took: str = ""  # what ``seconds`` timed when not the test's own call

    @property
    def rest(self) -> float:
        return max(0.0, self.seconds - self.declared)

    def describe(self) -> str:
        share = (
            f"{self.rest / self.declared:.0%} of the declared waits" if self.declared else "no declared wait"
        )
        what = f" ({self.took})" if self.took else ""
        return (
            f"{self.test}: {self.seconds:.1f} s{what} = declared waits {self.declared:.1f} s "
            f"({'; '.join(self.why)}) + rest {self.rest:.1f} s ({share})"
        )


def timing_of(test: str, seconds: float, properties: Iterable[tuple[str, object]]) -> Timing | None:
    """The split for one test's call phase, or None when it declared no wait. When the test
    checked an operation that ran beside others, that operation's own time replaces the call's."""
    properties = list(properties)
    waits = [str(value).split("|", 1) for name, value in properties if name == DECLARED_WAIT]
    if not waits:
        return None
    took = [str(value).split("|", 1) for name, value in properties if name == TOOK]
    seconds, what = (sum(float(s) for s, _ in took), "; ".join(w for _, w in took)) if took else (seconds, "")
    return Timing(test, seconds, sum(float(s) for s, _ in waits), tuple(why for _, why in waits), what)
