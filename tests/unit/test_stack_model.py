import shutil
from pathlib import Path

import pytest

from pytest_swarm import compose
from pytest_swarm.errors import StackError
from pytest_swarm.stack import (
    StackSource,
    load_env,
    missing_variables,
    port_clashes,
    published_ports,
    render,
    required_variables,
    stack_name,
)


def test_required_variables_skip_defaults_and_escapes() -> None:
    text = "a: ${A}\nb: ${B:-x}\nc: ${C-y}\nd: ${D:?set D}\ne: $E\nf: $$NOT\ng: ${G}-${G}"
    assert required_variables(text) == {"A", "D", "E", "G"}


def test_missing_variables_name_the_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("UI_PORT", raising=False)
    monkeypatch.setenv("FROM_PROCESS", "1")
    one = tmp_path / "one.yml"
    one.write_text(
        "# ${IN_A_COMMENT} is not interpolated\n"
        "services:\n  ui:\n    image: ${USER_NAME}/ui:${UI_VERSION}\n    x: ${UI_PORT} ${FROM_PROCESS}\n"
    )
    assert missing_variables([one], {"USER_NAME": "r", "UI_VERSION": "1"}) == {"UI_PORT": [str(one)]}


def test_stack_name_from_env_value_or_env_name() -> None:
    assert stack_name("dev", {"ENV": "DEV"}) == "DEV"
    assert stack_name("qa", {}) == "QA"


def test_compose_file_that_does_not_parse_names_file_and_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yml"
    bad.write_text("services:\n  ui:\n    image: [oops\n    ports: 1\n")
    with pytest.raises(StackError, match=r"bad\.yml:\d+:\d+: not valid YAML"):
        compose.check([bad])


def test_compose_file_without_services(tmp_path: Path) -> None:
    odd = tmp_path / "odd.yml"
    odd.write_text("- just a list\n")
    with pytest.raises(StackError, match="no `services:` mapping"):
        compose.check([odd])


def test_missing_compose_file(tmp_path: Path) -> None:
    with pytest.raises(StackError, match="does not exist"):
        compose.check([tmp_path / "nope.yml"])


def test_env_file_missing_lists_the_others(tmp_path: Path) -> None:
    (tmp_path / "dev.env").write_text("A=1\n")
    with pytest.raises(StackError, match="env files found: dev"):
        load_env(tmp_path / "qa.env")


def test_env_key_without_value(tmp_path: Path) -> None:
    env = tmp_path / "dev.env"
    env.write_text("A=1\nLONELY\n")
    with pytest.raises(StackError, match="LONELY has no value"):
        load_env(env)


def test_set_variables_win_over_the_env_file(tmp_path: Path) -> None:
    env = tmp_path / "dev.env"
    env.write_text("ENV=DEV\nPOST_REPLICAS=3\n")
    source = StackSource("dev", env, (), overrides=(("POST_REPLICAS", "1"), ("UI_REPLICAS", "2")))
    assert source.values() == {"ENV": "DEV", "POST_REPLICAS": "1", "UI_REPLICAS": "2"}


def test_port_clashes_are_named() -> None:
    def model(port: int) -> dict[str, object]:
        return {"services": {"ui": {"ports": [{"published": port, "target": 9292}]}}}

    assert published_ports(model(9292)) == {9292: "ui"}
    assert port_clashes({"DEV": model(9292), "STAGE": model(9293)}) == []
    assert port_clashes({"DEV": model(9292), "STAGE": model(9292)}) == ["port 9292: DEV ui and STAGE ui"]


def test_what_docker_refuses_names_the_compose_file_and_its_reason(tmp_path: Path) -> None:
    """Rendering is the docker CLI's (``docker stack config``, no engine needed); its refusal is
    carried with the file it is about, found by rendering each file alone."""
    if shutil.which("docker") is None:
        pytest.skip("needs the docker CLI (docker stack config)")
    env = tmp_path / "dev.env"
    env.write_text("ENV=DEV\n")
    good = tmp_path / "docker-compose.yml"
    good.write_text("version: '3.8'\nservices:\n  web: {image: 'web:1'}\n")
    bad = tmp_path / "docker-compose.override.yml"
    bad.write_text("version: '3.8'\nservices:\n  web: {deploy: {replicas: many}}\n")
    with pytest.raises(StackError) as info:
        render(StackSource("dev", env, (good, bad)))
    message = str(info.value)
    assert message.startswith(f"docker refuses the stack of dev: {bad}: "), message
    assert "replicas" in message
