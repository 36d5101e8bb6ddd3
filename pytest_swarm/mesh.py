"""Routing-mesh probes and the balance analysis.

A probe sends requests to one node's address on a published port, each on a new TCP
connection (the mesh balances connections, not requests), and reads which container answered
from the ui page's header: "Microservices Reddit in <ENV> <HOSTNAME> container". A task
container's hostname is the first 12 characters of its container id.
"""

from __future__ import annotations

import re
import socket
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import requests

from .errors import ConvergenceTimeout
from .waiting import Poll, wait_for

# how long a node may take to answer on a newly published port (see first_answer)
READY_TIMEOUT = 60.0
# A probe's connection is accepted by a task within CONNECT_TIMEOUT: that is the mesh's part (a
# route to a lost task times out, a port with no task refuses). The page is then read within
# READ_TIMEOUT: a page rendered slowly by a task starved on a loaded node is the app's pace,
# which the mesh checks do not judge.
CONNECT_TIMEOUT = 3.0
READ_TIMEOUT = 20.0

HEADER = re.compile(r"Microservices Reddit in\s+(?P<env>\S+)\s+(?P<host>\S+)\s+container")


@dataclass(frozen=True)
class Answer:
    """One request's outcome: the HTTP status (0 = no answer) and who answered."""

    status: int
    env: str = ""
    host: str = ""
    error: str = ""
    seconds: float = field(default=0.0, compare=False)  # from connecting to the last byte or error


def parse_page(text: str) -> tuple[str, str] | None:
    """(ENV, HOSTNAME) from the ui page header, or None when the page has no such header."""
    match = HEADER.search(text)
    return (match["env"], match["host"]) if match else None


def probe(
    address: str,
    port: int,
    count: int,
    timeout: float = CONNECT_TIMEOUT,
    path: str = "/",
    read_timeout: float = READ_TIMEOUT,
) -> list[Answer]:
    """``count`` GETs to http://address:port/path, each on a fresh connection accepted within
    ``timeout`` seconds and read within ``read_timeout``; bounded in time."""
    answers = []
    deadline = time.monotonic() + count * (timeout + read_timeout)
    for _ in range(count):
        started = time.monotonic()
        if started > deadline:
            answers.append(Answer(0, error="probe deadline passed"))
            continue
        try:
            response = requests.get(
                f"http://{address}:{port}{path}",
                timeout=(timeout, read_timeout),
                headers={"Connection": "close"},
            )
        except requests.RequestException as exc:
            answers.append(Answer(0, error=type(exc).__name__, seconds=time.monotonic() - started))
            continue
        parsed = parse_page(response.text) or ("", "")
        answers.append(
            Answer(response.status_code, env=parsed[0], host=parsed[1], seconds=time.monotonic() - started)
        )
    return answers


def connects(address: str, port: int, timeout: float) -> bool:
    """Whether a TCP connection to ``address:port`` is accepted within ``timeout`` seconds.
    Through the routing mesh only a live task accepts one (one on a lost node times out, a port
    with no task left refuses), whatever protocol it speaks and however slowly it then answers;
    nothing is sent, so the check adds no load to the service."""
    try:
        with socket.create_connection((address, port), timeout=timeout):
            return True
    except OSError:
        return False


def first_answer(address: str, port: int, timeout: float = READY_TIMEOUT, path: str = "/") -> Answer:
    """Ask until one request answers 200 or ``timeout`` seconds pass; return the last answer.

    A converged stack's tasks run, but a node programs a new published port only once the
    service's endpoints reach it by gossip: on a loaded node that comes seconds later, and until
    then the port refuses connections. Checks of the mesh start after this, so they judge the
    balance and the page, not how fast the gossip went.
    """

    def ask() -> Poll[Answer]:
        answer = probe(address, port, count=1, timeout=min(CONNECT_TIMEOUT, timeout), path=path)[0]
        return Poll(answer.status == 200, str(answer), answer)

    try:
        poll = wait_for(ask, what=f"{address}:{port} answering", timeout=timeout, interval=0.5)
    except ConvergenceTimeout:
        poll = ask()  # the last answer, for the check to show
    assert poll.value is not None
    return poll.value


@dataclass
class Balance:
    """How answers spread over the expected containers."""

    counts: dict[str, int]
    expected: list[str]
    failures: int
    errors: dict[str, int] = field(default_factory=dict)  # how the failed requests failed
    slowest: float = 0.0  # seconds, of the answered requests
    unexpected: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    uneven: dict[str, float] = field(default_factory=dict)  # container -> share / even share

    @property
    def ok(self) -> bool:
        return not (self.failures or self.unexpected or self.missing or self.uneven)

    def describe(self) -> str:
        parts = [f"answers per container {self.counts}"]
        if self.failures:
            parts.append(f"{self.failures} requests failed {self.errors}")
        if self.unexpected:
            parts.append(f"answered by containers that are not tasks: {self.unexpected}")
        if self.missing:
            parts.append(f"tasks that never answered: {self.missing}")
        if self.uneven:
            ratios = {k: round(v, 2) for k, v in self.uneven.items()}
            parts.append(f"shares outside 0.5x..1.5x of an even split: {ratios}")
        if self.slowest:
            parts.append(f"slowest answer {self.slowest:.1f} s")
        return "; ".join(parts)


def analyse(
    answers: Sequence[Answer], expected: Iterable[str], low: float = 0.5, high: float = 1.5
) -> Balance:
    """Compare who answered with the expected container hostnames (12-char ids)."""
    wanted = sorted(set(expected))
    ok = [a for a in answers if a.status == 200]
    counts = Counter(a.host for a in ok)
    balance = Balance(
        counts=dict(sorted(counts.items())),
        expected=wanted,
        failures=len(answers) - len(ok),
        errors=dict(Counter(a.error or f"HTTP {a.status}" for a in answers if a.status != 200)),
        slowest=max((a.seconds for a in ok), default=0.0),
    )
    balance.unexpected = sorted(set(counts) - set(wanted))
    balance.missing = [c for c in wanted if c not in counts]
    if ok and wanted:
        even = len(ok) / len(wanted)
        for container in wanted:
            ratio = counts.get(container, 0) / even
            if not low <= ratio <= high:
                balance.uneven[container] = ratio
    return balance
