"""Evidence on a failure never hides the failure: a cluster that no longer answers is said."""

from types import SimpleNamespace
from typing import Any, cast

import requests

from pytest_swarm import evidence


def test_a_cluster_that_does_not_answer_is_said_not_raised() -> None:
    def refused() -> list[Any]:
        raise requests.exceptions.ConnectionError("Connection refused")

    stack = SimpleNamespace(name="DEV", cluster=SimpleNamespace(nodes=refused))
    text = evidence.collect(cast(Any, stack))
    assert text == "(no evidence: the cluster of stack DEV did not answer: Connection refused)"
