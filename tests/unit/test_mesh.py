import contextlib
import http.server
import socket
import threading
import time
from collections.abc import Iterator

import pytest

from pytest_swarm.mesh import Answer, analyse, connects, first_answer, parse_page, probe


def answers(*hosts: str, failures: int = 0) -> list[Answer]:
    return [Answer(200, "DEV", h) for h in hosts] + [Answer(0, error="ConnectTimeout")] * failures


def test_parse_page_header() -> None:
    page = "<h1>Microservices Reddit in DEV 0123456789ab container</h1>"
    assert parse_page(page) == ("DEV", "0123456789ab")
    assert parse_page("<h1>something else</h1>") is None


def test_even_round_robin_is_balanced() -> None:
    balance = analyse(answers(*["a", "b", "c"] * 20), ["a", "b", "c"])
    assert balance.ok, balance.describe()
    assert balance.counts == {"a": 20, "b": 20, "c": 20}


def test_a_task_that_never_answers_and_a_stranger() -> None:
    balance = analyse(answers(*["a", "b", "x"] * 10), ["a", "b", "c"])
    assert not balance.ok
    assert balance.missing == ["c"]
    assert balance.unexpected == ["x"]
    assert "tasks that never answered: ['c']" in balance.describe()


def test_uneven_shares_are_named_with_their_ratio() -> None:
    balance = analyse(answers(*(["a"] * 40 + ["b"] * 10 + ["c"] * 10)), ["a", "b", "c"])
    assert balance.uneven == {"a": 2.0}
    assert "0.5x..1.5x" in balance.describe()


def test_failures_count_and_say_how_they_failed() -> None:
    balance = analyse([*answers("a", "b", failures=2), Answer(502)], ["a", "b"])
    assert balance.failures == 3 and not balance.ok
    assert "3 requests failed {'ConnectTimeout': 2, 'HTTP 502': 1}" in balance.describe()


class PageHandler(http.server.BaseHTTPRequestHandler):
    """Answers like a ui task."""

    delay = 0.0  # seconds before the page is sent: a task starved on a loaded node

    def do_GET(self) -> None:
        time.sleep(self.delay)
        body = b"<h1>Microservices Reddit in STAGE abcdefabcdef container</h1>"
        with contextlib.suppress(ConnectionError):  # a probe that gave up has closed its end
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@contextlib.contextmanager
def serving(port: int = 0, delay: float = 0.0) -> Iterator[int]:
    """A page server on 127.0.0.1 (``port`` 0: any free one) that answers after ``delay``
    seconds; yields its port."""
    handler = type("Handler", (PageHandler,), {"delay": delay})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def page_server() -> Iterator[int]:
    with serving() as port:
        yield port


def test_probe_reads_each_answer(page_server: int) -> None:
    got = probe("127.0.0.1", page_server, count=3)
    assert got == [Answer(200, "STAGE", "abcdefabcdef")] * 3


def test_a_page_read_slowly_still_answers_the_probe() -> None:
    """The connect timeout bounds the mesh's part only: a slow page is the app's pace."""
    with serving(delay=1.5) as port:
        got = probe("127.0.0.1", port, count=1, timeout=1.0)
        late = probe("127.0.0.1", port, count=1, timeout=1.0, read_timeout=0.5)
    assert got == [Answer(200, "STAGE", "abcdefabcdef")] and got[0].seconds >= 1.5
    assert late[0].status == 0 and late[0].error == "ReadTimeout"
    assert f"slowest answer {got[0].seconds:.1f} s" in analyse(got, ["abcdefabcdef"]).describe()


def test_probe_names_a_refused_connection() -> None:
    got = probe("127.0.0.1", 1, count=2, timeout=1)
    assert [a.status for a in got] == [0, 0]
    assert got[0].error == "ConnectionError"


def test_first_answer_waits_for_a_port_that_opens_later() -> None:
    with socket.socket() as sock:  # a free port, closed again: refused until the server starts
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    opened = threading.Event()

    def open_later() -> None:
        time.sleep(1.0)
        with serving(port):
            opened.set()
            time.sleep(5.0)

    threading.Thread(target=open_later, daemon=True).start()
    started = time.monotonic()
    got = first_answer("127.0.0.1", port, timeout=10)
    assert got == Answer(200, "STAGE", "abcdefabcdef")
    assert opened.is_set() and time.monotonic() - started < 5


def test_first_answer_gives_up_after_its_timeout() -> None:
    started = time.monotonic()
    got = first_answer("127.0.0.1", 1, timeout=1)
    assert got.status == 0 and got.error == "ConnectionError"
    assert time.monotonic() - started < 4


def test_a_port_answers_when_a_connection_is_accepted_whatever_is_then_said() -> None:
    with socket.socket() as listening:
        listening.bind(("127.0.0.1", 0))
        listening.listen()
        port = listening.getsockname()[1]
        assert connects("127.0.0.1", port, timeout=1.0)  # nothing accepted in code, nothing sent
    assert not connects("127.0.0.1", port, timeout=1.0)  # closed: refused
