"""The compose files as written: merged services, ports, paths made absolute, build sections."""

from __future__ import annotations

from pathlib import Path

import pytest

from pytest_swarm import compose
from pytest_swarm.images import variant_ref
from pytest_swarm.placement import NodeFacts, missing_labels


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_files_merge_environment_by_key_and_add_up_ports_and_env_files(tmp_path: Path) -> None:
    base = write(
        tmp_path / "a.yml",
        "services:\n  ui:\n    image: u\n    environment: [ENV=DEV, TOKEN]\n    ports: ['${UI_PORT}:9292']\n"
        "    env_file: ui.env\n",
    )
    over = write(
        tmp_path / "b.yml",
        "services:\n  ui:\n    image: u2\n    environment: {ENV: '${ENV}'}\n    ports: ['5000:5000']\n",
    )
    ui = compose.raw_services([base, over])["ui"]
    assert ui["image"] == "u2"
    assert ui["environment"] == {"ENV": "${ENV}", "TOKEN": None}
    assert ui["ports"] == ["${UI_PORT}:9292", "5000:5000"]
    assert ui["env_file"] == ["ui.env"]


@pytest.mark.parametrize(
    ("port", "host"),
    [
        ("9292", None),
        ("${UI_PORT}:9292", "${UI_PORT}"),
        ("127.0.0.1:8080:80/tcp", "8080"),
        ({"target": 80, "published": 8080}, "8080"),
        ({"target": 80}, None),
    ],
)
def test_the_host_side_of_a_port_as_written(port: object, host: str | None) -> None:
    assert compose.host_port(port) == host


def test_variables_the_published_ports_come_from(tmp_path: Path) -> None:
    files = [
        write(
            tmp_path / "c.yml",
            "services:\n  a: {image: a, ports: ['${A_PORT:-80}:80', '$B_PORT:81', '82:82']}\n"
            "  b: {image: b, ports: [{target: 90, published: '${C}'}]}\n",
        )
    ]
    assert compose.published_port_variables(files) == {"A_PORT", "B_PORT", "C"}


def test_env_files_and_build_contexts_become_absolute(tmp_path: Path) -> None:
    model = {
        "services": {
            "ui": {
                "image": "u",
                "env_file": [".env", "../shared.env"],
                "build": {"context": "./ui", "args": {"A": 1}},
            },
            "post": {"image": "p", "build": "./post"},
            "git": {"image": "g", "build": {"context": "https://example.test/repo.git"}},
        }
    }
    compose.absolute_paths(model, tmp_path / "stack")
    ui = model["services"]["ui"]
    assert ui["env_file"] == [str(tmp_path / "stack/.env"), str(tmp_path / "shared.env")]
    assert ui["build"]["context"] == str(tmp_path / "stack/ui")
    builds = compose.builds(model)
    assert builds["ui"] == compose.Build(tmp_path / "stack/ui", "Dockerfile", {"A": "1"}, None)
    assert builds["post"].context == tmp_path / "stack/post"
    assert "git" not in builds


def test_a_services_env_file_resolves_against_the_first_compose_file(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    first = write(tmp_path / "docker-compose.yml", "services: {a: {image: a}}\n")
    second = write(
        tmp_path / "sub" / "more.yml", "services: {b: {image: b, env_file: [b.env, '${X}.env']}}\n"
    )
    assert compose.referenced_env_files([first, second]) == [tmp_path / "b.env"]


def test_variant_names() -> None:
    assert variant_ref("reddit/ui:1.0", "next") == "reddit/ui:1.0-next"
    assert variant_ref("reddit/ui", "next") == "reddit/ui:latest-next"
    assert variant_ref("registry:5000/team/ui", "broken") == "registry:5000/team/ui:latest-broken"


def test_labels_no_node_carries_are_named() -> None:
    nodes = [NodeFacts("m", "master-1", "manager", labels={"reliability": "high"}, engine_labels={})]
    services = {
        "ui": ["node.role == worker", "engine.labels.provider == google"],
        "db": ["node.labels.reliability == high", "node.labels.disk != hdd"],
        "cache": ["node.labels.disk == ssd"],
    }
    found = missing_labels(services, nodes, ["node", "engine"])
    assert [(s, str(c)) for s, c in found] == [
        ("cache", "node.labels.disk == ssd"),
        ("ui", "engine.labels.provider == google"),
    ]
    assert missing_labels(services, nodes, ["node"]) == found[:1]
