"""Which stacks need their networks joined one by one, and the stack file that does it."""

from __future__ import annotations

import pytest

from pytest_swarm.network_join import (
    engine_release,
    join_compose,
    networks_to_join,
    stalls_on_parallel_joins,
)

REDDIT = {
    "version": "3.8",
    "services": {
        "mongo": {"networks": {"back_net": {"aliases": ["post_db"]}}},
        "post": {"networks": {"front_net": None, "back_net": None}},
        "ui": {"networks": {"front_net": None}},
        "metrics": {"networks": {"outside": None}},
        "plain": {},
    },
    "networks": {
        "back_net": {},
        "front_net": {"driver_opts": {"encrypted": ""}},
        "outside": {"external": True},
    },
}


@pytest.mark.parametrize(
    ("version", "release"),
    [("20.10.24+dfsg1", (20, 10)), ("29.6.0", (29, 6)), ("26.1.5+dfsg1", (26, 1)), ("dev", (0, 0))],
)
def test_engine_release_reads_major_and_minor(version: str, release: tuple[int, int]) -> None:
    assert engine_release(version) == release


def test_engines_before_29_6_stall_and_later_ones_do_not() -> None:
    assert stalls_on_parallel_joins(["29.6.0", "20.10.24+dfsg1"])
    assert stalls_on_parallel_joins(["29.5.2"])
    assert not stalls_on_parallel_joins(["29.6.0", "30.0.1"])


def test_networks_in_order_of_first_use_without_external_ones() -> None:
    assert networks_to_join(REDDIT) == ["back_net", "front_net"]


def test_networks_given_as_a_list_count_too() -> None:
    model = {
        "services": {"a": {"networks": ["x", "y"]}, "b": {"networks": ["y"]}},
        "networks": {"x": {}, "y": {}},
    }
    assert networks_to_join(model) == ["x", "y"]


def test_the_join_stack_declares_the_networks_as_the_stack_does() -> None:
    compose = join_compose(REDDIT, ["back_net", "front_net"], "debian:bookworm-slim", "n0d3", 2)
    assert compose["networks"] == {"back_net": {}, "front_net": {"driver_opts": {"encrypted": ""}}}
    (name, service), *others = compose["services"].items()
    assert not others
    assert name == "network-join-2"
    assert service["networks"] == ["back_net", "front_net"]
    assert service["deploy"] == {"replicas": 1, "placement": {"constraints": ["node.id == n0d3"]}}
    assert service["entrypoint"] == ["sleep", "infinity"]
