from pathlib import Path

import pytest

from pytest_swarm.settings import SettingsError, parse_node_labels, resolve


@pytest.fixture
def root(tmp_path: Path) -> Path:
    (tmp_path / "envs").mkdir()
    (tmp_path / "envs" / "dev.env").write_text("ENV=DEV\n")
    (tmp_path / "envs" / "stage.env").write_text("ENV=STAGE\n")
    (tmp_path / "stacks").mkdir()
    for name in ("docker-compose.yml", "docker-compose.infra.yml"):
        (tmp_path / "stacks" / name).write_text("services: {}\n")
    return tmp_path


def test_defaults(root: Path) -> None:
    s = resolve({}, {}, {}, root)
    assert (s.provider, s.workers, s.keep, s.reuse, s.timeout) == ("dind", 2, "never", False, 120.0)
    assert s.stacks == ()  # no compose file of compose's own names in the project folder
    (root / "docker-compose.yml").write_text("services: {}\n")
    assert resolve({}, {}, {}, root).stacks == (root / "docker-compose.yml",)
    (root / "compose.yaml").write_text("services: {}\n")
    assert resolve({}, {}, {}, root).stacks == (root / "compose.yaml",)  # compose's own order
    assert s.requirements == "lesson"
    assert s.node_labels == {"master-1": {"reliability": "high"}}
    assert s.node_names == ("master-1", "worker-1", "worker-2")
    assert set(s.sources.values()) == {"default"}


def test_precedence_cli_over_env_over_ini_over_default(root: Path) -> None:
    ini = {"workers": "5", "timeout": "30", "keep": "always"}
    environ = {"SWARM_WORKERS": "4", "SWARM_TIMEOUT": "60"}
    s = resolve({"workers": "3"}, environ, ini, root)
    assert (s.workers, s.timeout, s.keep) == (3, 60.0, "always")
    assert s.sources["workers"] == "cli"
    assert s.sources["timeout"] == "env"
    assert s.sources["keep"] == "ini"
    assert s.sources["provider"] == "default"


def test_linelist_ini_and_env(root: Path) -> None:
    s = resolve({}, {"SWARM_BUILD": "ui=stacks/images/ui post=other/post"}, {}, root)
    assert s.build == {"ui": root / "stacks/images/ui", "post": root / "other/post"}
    s = resolve({}, {}, {"engine_labels": ["*:zone=a", "worker-1:disk=ssd"]}, root)
    assert s.labels_for("worker-1", s.engine_labels) == {"zone": "a", "disk": "ssd"}
    assert s.labels_for("master-1", s.engine_labels) == {"zone": "a"}


@pytest.mark.parametrize(
    ("cli", "message"),
    [
        ({"provider": "kvm"}, "choose one of: dind, uml, machine, attach, ssh"),
        ({"keep": "sometimes"}, "choose one of: never, on-failure, always"),
        ({"workers": "two"}, "whole number >= 0"),
        ({"workers": "-1"}, "whole number >= 0"),
        ({"timeout": "0"}, "number of seconds > 0"),
        ({"env": "qa"}, r"envs found: dev \(envs/dev.env\), stage \(envs/stage.env\)"),
        ({"env": "dev", "stacks": "stacks/nope.yml"}, "compose file not found"),
        ({"env": "dev"}, "no compose file: none of compose.yaml, .*give them with --swarm-stacks"),
        ({"env_file": "nope.env"}, "--swarm-env-file=nope.env: no such file"),
    ],
)
def test_bad_values_name_the_valid_ones(root: Path, cli: dict[str, str], message: str) -> None:
    with pytest.raises(SettingsError, match=message):
        resolve(cli, {}, {}, root)


STACKS = {"stacks": "stacks/docker-compose.yml"}


def test_env_file_found(root: Path) -> None:
    s = resolve({"env": "stage", **STACKS}, {}, {}, root)
    assert s.env_file == root / "envs" / "stage.env"
    assert s.envs == {"dev": root / "envs/dev.env", "stage": root / "envs/stage.env"}


@pytest.mark.parametrize("name", [".env_DEV", ".env.dev", "dev.env", ".env-Dev"])
def test_env_files_as_teams_name_them(tmp_path: Path, name: str) -> None:
    (tmp_path / name).write_text("ENV=DEV\n")
    (tmp_path / "docker-compose.yml").write_text("services: {}\n")
    s = resolve({"env": "dev"}, {}, {}, tmp_path)
    assert (s.env, s.env_file, s.stacks) == ("dev", tmp_path / name, (tmp_path / "docker-compose.yml",))


def test_env_file_pattern_from_ini_and_env_file_given(tmp_path: Path) -> None:
    (tmp_path / "docker-compose.yml").write_text("services: {}\n")
    (tmp_path / "config").mkdir()
    (tmp_path / "config" / "reddit-prod.vars").write_text("ENV=PROD\n")
    s = resolve({"env": "prod"}, {}, {"env_files": ["config/reddit-{env}.vars"]}, tmp_path)
    assert s.env_file == tmp_path / "config/reddit-prod.vars"
    with pytest.raises(SettingsError, match=r"swarm_env_files: 'config/x.vars' needs one \{env\}"):
        resolve({}, {}, {"env_files": ["config/x.vars"]}, tmp_path)
    with pytest.raises(SettingsError, match=r"'\{env\}/\{env\}.env' needs one \{env\}"):
        resolve({}, {}, {"env_files": ["{env}/{env}.env"]}, tmp_path)
    (tmp_path / ".env").write_text("ENV=QA\n")
    s = resolve({"env_file": ".env"}, {}, {}, tmp_path)
    assert (s.env, s.env_file) == ("qa", tmp_path / ".env")  # named after its ENV value
    s = resolve({"env_file": ".env", "env": "dev"}, {}, {}, tmp_path)
    assert (s.env, s.env_file) == ("dev", tmp_path / ".env")


def test_one_folder_per_env(tmp_path: Path) -> None:
    (tmp_path / "docker-compose.yml").write_text("services: {}\n")
    for env in ("PROD", "TEST", "docs"):
        (tmp_path / env).mkdir()
    (tmp_path / "PROD" / ".env").write_text("ENV=PROD\n")
    (tmp_path / "TEST" / ".env").write_text("ENV=TEST\n")
    s = resolve({"env": "test"}, {}, {"env_files": ["{env}/.env"]}, tmp_path)
    assert s.envs == {"prod": tmp_path / "PROD/.env", "test": tmp_path / "TEST/.env"}  # docs/ has none
    assert (s.env_file, s.side_by_side) == (tmp_path / "TEST/.env", ("prod",))
    s = resolve({"env_file": "PROD/.env"}, {}, {"env_files": ["{env}/.env"]}, tmp_path)
    assert s.env == "prod"


def test_a_services_own_env_file_is_not_an_env(tmp_path: Path) -> None:
    (tmp_path / "docker-compose.yml").write_text("services: {ui: {image: u, env_file: ui.env}}\n")
    (tmp_path / "ui.env").write_text("COLOR=blue\n")
    (tmp_path / "dev.env").write_text("ENV=DEV\n")
    assert resolve({}, {}, {}, tmp_path).envs == {"dev": tmp_path / "dev.env"}


def test_a_template_beside_the_envs_is_not_an_env(tmp_path: Path) -> None:
    (tmp_path / "docker-compose.yml").write_text("services: {}\n")
    for name in (".env_DEV", ".env_PROD", ".env.example", ".env.dev.sample", "template.env"):
        (tmp_path / name).write_text("ENV=X\n")
    s = resolve({"env": "dev"}, {}, {}, tmp_path)
    assert s.envs == {"dev": tmp_path / ".env_DEV", "prod": tmp_path / ".env_PROD"}
    assert s.side_by_side == ("prod",)
    s = resolve({"env_file": ".env.example"}, {}, {}, tmp_path)  # given directly: taken
    assert s.env_file == tmp_path / ".env.example"


def test_unknown_env_with_no_env_file(tmp_path: Path) -> None:
    with pytest.raises(
        SettingsError, match=r"no env file for it; envs found: none \(looked for envs/dev.env, dev.env"
    ):
        resolve({"env": "dev"}, {}, {}, tmp_path)


@pytest.mark.parametrize("entry", ["master-1", "master-1:reliability", ":a=b", "m:=b"])
def test_bad_node_labels(entry: str) -> None:
    with pytest.raises(SettingsError, match="NODE:KEY=VALUE"):
        parse_node_labels("node_labels", [entry])


def test_reuse_flag_values(root: Path) -> None:
    assert resolve({"reuse": "true"}, {}, {}, root).reuse is True
    assert resolve({}, {"SWARM_REUSE": "0"}, {}, root).reuse is False
    with pytest.raises(SettingsError, match="use true or false"):
        resolve({}, {"SWARM_REUSE": "maybe"}, {}, root)


def test_side_by_side_defaults_to_every_other_env(root: Path) -> None:
    assert resolve({"env": "dev", **STACKS}, {}, {}, root).side_by_side == ("stage",)
    (root / ".env_PROD").write_text("ENV=PROD\n")
    assert resolve({"env": "dev", "side_by_side": "PROD", **STACKS}, {}, {}, root).side_by_side == ("prod",)
    with pytest.raises(
        SettingsError,
        match=r"no env file for qa; envs found: dev \(envs/dev.env\), prod \(.env_PROD\), stage",
    ):
        resolve({"env": "dev", "side_by_side": "qa", **STACKS}, {}, {}, root)


def test_attach_and_machine_are_available(root: Path) -> None:
    assert resolve({"provider": "attach"}, {}, {}, root).provider == "attach"
    assert resolve({"provider": "machine"}, {}, {}, root).provider == "machine"


def test_machine_defaults_and_precedence(root: Path) -> None:
    s = resolve({"provider": "machine"}, {}, {}, root)
    assert (s.machine_driver, s.gce_zone, s.gce_machine_type) == ("google", "europe-west1-b", "g1-small")
    assert s.gce_image.endswith("/ubuntu-os-cloud/global/images/family/ubuntu-2204-lts")
    assert (s.gce_project, s.machines, s.machine_args) == ("", (), ())
    s = resolve(
        {"gce_zone": "us-east1-b", "machines": "master-1,worker-1"},
        {"SWARM_GCE_ZONE": "asia-east1-a", "SWARM_GCE_PROJECT": "proj-1"},
        {"gce_machine_type": "e2-small", "machine_args": "--google-open-port 9292/tcp --google-tags 'a b'"},
        root,
    )
    assert (s.gce_zone, s.gce_project, s.gce_machine_type) == ("us-east1-b", "proj-1", "e2-small")
    assert s.machines == ("master-1", "worker-1")
    assert s.machine_args == ("--google-open-port", "9292/tcp", "--google-tags", "a b")
    sources = (s.sources["gce_zone"], s.sources["gce_project"], s.sources["machine_args"])
    assert sources == ("cli", "env", "ini")


def test_attach_context_and_node_overrides(root: Path) -> None:
    s = resolve(
        {"context": "lesson"},
        {"SWARM_ATTACH_NODES": "worker-1:engine=unix:///tmp/w1.sock worker-1:address=10.0.0.3"},
        {"attach_nodes": ["master-1:host=ssh://docker-user@10.0.0.2"]},
        root,
    )
    assert s.context == "lesson"
    assert s.attach_nodes == {"worker-1": {"engine": "unix:///tmp/w1.sock", "address": "10.0.0.3"}}
    s = resolve({}, {}, {"attach_nodes": ["master-1:host=ssh://docker-user@10.0.0.2"]}, root)
    assert s.attach_nodes == {"master-1": {"host": "ssh://docker-user@10.0.0.2"}}


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ("worker-1:socket=/tmp/a", "the keys are address, engine, host"),
        ("worker-1:engine=/tmp/a.sock", "starting with unix://, tcp://, ssh://"),
        ("worker-1:host=worker-1", "ssh://user@host or docker://container"),
        ("worker-1", "NODE:KEY=VALUE"),
    ],
)
def test_bad_attach_nodes(root: Path, entry: str, message: str) -> None:
    with pytest.raises(SettingsError, match=message):
        resolve({}, {}, {"attach_nodes": [entry]}, root)


@pytest.mark.parametrize(
    ("machines", "message"),
    [("master_1,worker-1", "not a docker-machine name"), ("master-1,master-1", "named twice")],
)
def test_bad_machine_names(root: Path, machines: str, message: str) -> None:
    with pytest.raises(SettingsError, match=message):
        resolve({"machines": machines}, {}, {}, root)


def test_set_variables_over_the_env_files(root: Path) -> None:
    s = resolve({"set": "POST_REPLICAS=1,COMMENT_REPLICAS=1"}, {}, {}, root)
    assert s.variables == {"POST_REPLICAS": "1", "COMMENT_REPLICAS": "1"}
    assert "set COMMENT_REPLICAS=1 set POST_REPLICAS=1" in s.describe()
    assert resolve({}, {}, {"set": "UI_REPLICAS=2"}, root).variables == {"UI_REPLICAS": "2"}
    assert resolve({}, {"SWARM_SET": "A=1 B=2"}, {}, root).variables == {"A": "1", "B": "2"}


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ("POST_REPLICAS", "write KEY=VALUE"),
        ("=1", "write KEY=VALUE"),
        ("POST-REPLICAS=1", "not a variable name"),
    ],
)
def test_bad_set_entries(root: Path, entry: str, message: str) -> None:
    with pytest.raises(SettingsError, match=message):
        resolve({"set": entry}, {}, {}, root)


def test_managers_name_master_nodes_and_show_in_the_header(root: Path) -> None:
    s = resolve({"managers": "3", "workers": "2"}, {}, {}, root)
    assert s.manager_names == ("master-1", "master-2", "master-3")
    assert s.node_names == ("master-1", "master-2", "master-3", "worker-1", "worker-2")
    roles = {n.hostname: n.role for n in s.planned_nodes()}
    assert roles == {
        "master-1": "manager",
        "master-2": "manager",
        "master-3": "manager",
        "worker-1": "worker",
        "worker-2": "worker",
    }
    assert "managers=3 workers=2" in s.describe()
    assert "managers=" not in resolve({}, {}, {}, root).describe()  # the lesson's one manager: as before
    with pytest.raises(SettingsError, match="whole number >= 1"):
        resolve({"managers": "0"}, {}, {}, root)


def test_disruptive_flag_from_cli_env_or_ini(root: Path) -> None:
    assert resolve({}, {}, {}, root).disruptive is False
    assert resolve({"disruptive": "true"}, {}, {}, root).disruptive is True
    assert resolve({}, {"SWARM_DISRUPTIVE": "1"}, {}, root).disruptive is True
    assert resolve({}, {}, {"disruptive": "yes"}, root).disruptive is True
    assert "disruptive=on" in resolve({"disruptive": "true"}, {}, {}, root).describe()
