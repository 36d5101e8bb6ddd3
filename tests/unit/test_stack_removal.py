"""What ``docker stack rm`` leaves behind is removed once free (a fake manager API)."""

from __future__ import annotations

from typing import Any

import docker.errors

from pytest_swarm.stack import _remove_networks

LABEL = {"label": "com.docker.stack.namespace=DEV"}


class FakeApi:
    """Networks a task holds for ``busy`` more removal attempts; services still listed."""

    def __init__(self, services: int, networks: dict[str, int]) -> None:
        self.service_count = services
        self.busy = dict(networks)
        self.removals: list[str] = []

    def services(self, filters: dict[str, str]) -> list[dict[str, Any]]:
        assert filters == LABEL
        return [{"ID": str(n)} for n in range(self.service_count)]

    def networks(self, filters: dict[str, str]) -> list[dict[str, Any]]:
        assert filters == LABEL
        return [{"Id": name} for name in self.busy]

    def remove_network(self, name: str) -> None:
        self.removals.append(name)
        if self.busy[name] > 0:
            self.busy[name] -= 1
            raise docker.errors.APIError(f"network {name} is in use by task t1")
        del self.busy[name]


class FakeClient:
    def __init__(self, api: FakeApi) -> None:
        self.api = api


def test_networks_wait_while_the_stack_s_services_are_still_there() -> None:
    api = FakeApi(services=1, networks={"n1": 0})
    assert _remove_networks(FakeClient(api), LABEL) == 1  # type: ignore[arg-type]
    assert api.removals == []


def test_a_network_still_in_use_is_counted_then_removed_once_free() -> None:
    api = FakeApi(services=0, networks={"busy": 1, "free": 0})
    client = FakeClient(api)
    assert _remove_networks(client, LABEL) == 1  # type: ignore[arg-type]
    assert api.busy == {"busy": 0}
    assert _remove_networks(client, LABEL) == 0  # type: ignore[arg-type]
    assert api.busy == {}
