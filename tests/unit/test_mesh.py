import http.server
import threading
from collections.abc import Iterator

import pytest

from pytest_swarm.mesh import Answer, analyse, parse_page, probe


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


def test_failures_count() -> None:
    balance = analyse(answers("a", "b", failures=2), ["a", "b"])
    assert balance.failures == 2 and not balance.ok


@pytest.fixture
def page_server() -> Iterator[int]:
    """A local server on 127.0.0.1 that answers like a ui task, for the probe itself."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = b"<h1>Microservices Reddit in STAGE abcdefabcdef container</h1>"
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


def test_probe_reads_each_answer(page_server: int) -> None:
    got = probe("127.0.0.1", page_server, count=3)
    assert got == [Answer(200, "STAGE", "abcdefabcdef")] * 3


def test_probe_names_a_refused_connection() -> None:
    got = probe("127.0.0.1", 1, count=2, timeout=1)
    assert [a.status for a in got] == [0, 0]
    assert got[0].error == "ConnectionError"
