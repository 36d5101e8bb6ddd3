"""The ssh provider without hosts: its settings, its ssh command lines and config, the preflight's
decisions against a stand-in ``ssh`` executable, and its run record (no engine, no network).

The stand-in (a small Python script first on PATH) records each call and answers the preflight
with the facts a test gives it; an install or a group change it is asked for changes those
facts, as on a host. The real path, on hosts that are UML kernels, is tests/integration/test_ssh_provider.py.
"""

from __future__ import annotations

import json
import os
import stat
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pytest_swarm import ownership
from pytest_swarm.errors import ProvisioningError
from pytest_swarm.ownership import Session, owner_token, record_stack, recorded_stacks
from pytest_swarm.providers import remote_state
from pytest_swarm.providers.remote_access import Facts, Remote, SshAccess, prepare_host
from pytest_swarm.providers.remote_state import RemoteState
from pytest_swarm.runs import read_run
from pytest_swarm.settings import SettingsError, SshTarget, parse_ssh_hosts, resolve

STAND_IN = r"""
import json, os, sys
state = os.environ["SSH_STANDIN"]
args = sys.argv[1:]
with open(os.path.join(state, "calls.jsonl"), "a") as f:
    f.write(json.dumps(args) + "\n")
config = json.load(open(os.path.join(state, "host.json")))
if not config["reachable"]:
    sys.stderr.write("ssh: connect to host 10.9.9.9 port 22: Connection refused\n")
    sys.exit(255)
command = args[-1]
facts = config["facts"]
def save():
    json.dump(config, open(os.path.join(state, "host.json"), "w"))
if "apt-get install" in command:
    facts.update(dockerd="yes", socket="yes")
    save()
elif "usermod -aG docker" in command:
    facts.update(access="yes")
    save()
elif "echo \"user=" in command:
    for key, value in facts.items():
        print(f"{key}={value}")
else:
    sys.stderr.write("stand-in: unknown command\n")
    sys.exit(3)
"""
HOST = Remote("worker-1", "10.9.9.9", user="deploy", port=2222, key="/keys/id_ed25519")
READY = {"user": "deploy", "root": "no", "dockerd": "yes", "socket": "yes", "access": "yes", "sudo": "yes",
         "apt": "yes", "address": "192.168.7.3"}  # fmt: skip


class StandIn:
    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def host(self, reachable: bool = True, **facts: str) -> None:
        (self.folder / "host.json").write_text(
            json.dumps({"reachable": reachable, "facts": {**READY, **facts}})
        )

    def calls(self) -> list[list[str]]:
        path = self.folder / "calls.jsonl"
        return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


@pytest.fixture
def stand_in(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[StandIn]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    script = bin_dir / "ssh"
    script.write_text(f"#!{sys.executable}\n{STAND_IN}")
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}")
    (tmp_path / "standin").mkdir()
    monkeypatch.setenv("SSH_STANDIN", str(tmp_path / "standin"))
    monkeypatch.setenv(ownership.RUN_ROOT_ENV, str(tmp_path / "runs"))
    found = StandIn(tmp_path / "standin")
    found.host()
    yield found


@pytest.fixture
def access(tmp_path: Path) -> SshAccess:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    found = SshAccess(run_dir)
    found.write_config()
    return found


# -- settings ----------------------------------------------------------------------------------
def test_hosts_are_named_manager_first_with_user_and_port_optional(tmp_path: Path) -> None:
    ini = {
        "provider": "ssh",
        "ssh_hosts": ["master-1=root@10.0.0.5", "worker-1=node-2:2222", "worker-2=a@b.lan"],
    }
    s = resolve({}, {}, ini, tmp_path)
    assert s.ssh_hosts == (
        SshTarget("master-1", "10.0.0.5", "root", 22),
        SshTarget("worker-1", "node-2", "", 2222),
        SshTarget("worker-2", "b.lan", "a", 22),
    )
    assert (s.workers, s.node_names) == (2, ("master-1", "worker-1", "worker-2"))
    assert [(n.hostname, n.role) for n in s.planned_nodes()] == [
        ("master-1", "manager"),
        ("worker-1", "worker"),
        ("worker-2", "worker"),
    ]
    from_env = resolve({"provider": "ssh"}, {"SWARM_SSH_HOSTS": "m=r@h1,w=r@h2"}, {}, tmp_path)
    assert [t.name for t in from_env.ssh_hosts] == ["m", "w"]


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"provider": "ssh"}, "--swarm-provider=ssh needs the hosts: give swarm_ssh_hosts"),
        (
            {"provider": "ssh", "ssh_hosts": ["master-1"]},
            r"'master-1' is not valid; write NAME=\[USER@\]HOST",
        ),
        ({"ssh_hosts": ["m=root@h:http"]}, "is not valid"),
        ({"ssh_hosts": ["m=root@h:70000"]}, "is not valid"),
        ({"ssh_hosts": ["m=h1", "m=h2"]}, "m named twice"),
        ({"provider": "ssh", "ssh_hosts": ["m=h1"], "workers": "2"}, "--swarm-workers=2 does not match"),
        ({"ssh_key": "no-such-key"}, "--swarm-ssh-key=no-such-key: no such file"),
    ],
)
def test_bad_ssh_settings_say_what_to_write(tmp_path: Path, options: dict[str, Any], message: str) -> None:
    cli = {k: v for k, v in options.items() if k in ("workers", "ssh_key")}
    ini = {k: v for k, v in options.items() if k not in cli}
    with pytest.raises(SettingsError, match=message):
        resolve(cli, {}, ini, tmp_path)


def test_parse_keeps_the_order_given() -> None:
    assert [t.name for t in parse_ssh_hosts(["b=h2", "a=h1"])] == ["b", "a"]


# -- ssh command lines -------------------------------------------------------------------------
def test_the_run_config_puts_its_options_first_then_the_users_own(access: SshAccess, tmp_path: Path) -> None:
    text = access.config.read_text()
    assert "BatchMode yes" in text and f"ControlPath {access.run_dir}/ctl-%C" in text
    assert (
        text.index("ControlMaster no")
        < text.index("Include ~/.ssh/config")
        < text.index("Include /etc/ssh/ssh_config")
    )
    given = SshAccess(access.run_dir, tmp_path / "team_ssh_config")
    given.write_config()
    assert given.config.read_text().splitlines()[-1] == f"Include {tmp_path / 'team_ssh_config'}"
    assert "Include ~/.ssh/config" not in given.config.read_text()  # as ssh -F: that file only


def test_the_forward_and_testinfra_ride_on_one_connection(access: SshAccess) -> None:
    sock = access.run_dir / "worker-1" / "docker.sock"
    argv = access.forward_argv(HOST, sock)
    assert argv[:3] == ["ssh", "-F", str(access.config)]
    assert argv[-10:] == [
        "-L", f"{sock}:/var/run/docker.sock",
        "-p", "2222", "-l", "deploy", "-i", "/keys/id_ed25519", "-o", "IdentitiesOnly=yes", "10.9.9.9",
    ][-10:]  # fmt: skip
    assert "ControlMaster=yes" in argv and "ExitOnForwardFailure=yes" in argv
    assert access.host_spec(HOST, sudo=True) == (
        f"ssh://deploy@10.9.9.9:2222?ssh_config={access.config}&controlpersist=0&timeout=20"
        "&ssh_identity_file=/keys/id_ed25519&sudo=true"
    )
    assert Remote.from_record("worker-1", HOST.to_record()) == HOST


# -- preflight ---------------------------------------------------------------------------------
def test_a_ready_host_passes_in_one_login(stand_in: StandIn, access: SshAccess) -> None:
    facts = prepare_host(access, HOST, install=False, progress=print)
    assert (facts.user, facts.address, facts.sudo, facts.root) == ("deploy", "192.168.7.3", True, False)
    assert len(stand_in.calls()) == 1


def test_an_unreachable_host_is_one_error_naming_it_and_what_to_check(
    stand_in: StandIn, access: SshAccess
) -> None:
    stand_in.host(reachable=False)
    with pytest.raises(ProvisioningError) as info:
        prepare_host(access, HOST, install=False, progress=print)
    message = str(info.value)
    assert message.startswith("worker-1: can't log in to deploy@10.9.9.9:2222 over ssh: ssh: connect")
    assert "`ssh -p 2222 deploy@10.9.9.9 true` works without a prompt" in message
    assert "--swarm-ssh-key" in message


def test_a_host_without_docker_says_how_to_get_one(stand_in: StandIn, access: SshAccess) -> None:
    stand_in.host(dockerd="no", socket="no", access="no")
    with pytest.raises(
        ProvisioningError, match=r"worker-1 \(deploy@10.9.9.9:2222\) has no Docker engine: .*"
    ):
        prepare_host(access, HOST, install=False, progress=print)
    with pytest.raises(ProvisioningError, match="or run with --swarm-ssh-install"):
        prepare_host(access, HOST, install=False, progress=print)


def test_install_uses_apt_with_sudo_then_gives_the_user_the_engine(
    stand_in: StandIn, access: SshAccess
) -> None:
    stand_in.host(dockerd="no", socket="no", access="no")
    said: list[str] = []
    facts = prepare_host(access, HOST, install=True, progress=said.append)
    assert facts.access and facts.socket
    commands = [call[-1] for call in stand_in.calls()]
    install = next(c for c in commands if "apt-get install" in c)
    assert install.startswith("sh -c 'sudo -n sh -c '") and "docker.io" in install
    assert any("usermod -aG docker deploy" in c for c in commands)
    assert said == [
        "worker-1: installing docker.io with apt-get (--swarm-ssh-install)",
        "worker-1: deploy added to the docker group (to reach the engine over ssh)",
    ]


def test_a_user_who_cant_use_the_engine_is_told_how(stand_in: StandIn, access: SshAccess) -> None:
    stand_in.host(access="no")
    with pytest.raises(
        ProvisioningError, match=r"add it to the docker group there \(sudo usermod -aG docker deploy\)"
    ):
        prepare_host(access, HOST, install=False, progress=print)
    stand_in.host(access="no", sudo="no")
    with pytest.raises(ProvisioningError, match="needs root or password-less sudo"):
        prepare_host(access, HOST, install=True, progress=print)


def test_an_engine_that_does_not_start_is_named(stand_in: StandIn, access: SshAccess) -> None:
    stand_in.host(socket="no", access="no")
    with pytest.raises(
        ProvisioningError, match=r"installed but not running .* \(sudo systemctl start docker\)"
    ):
        prepare_host(access, HOST, install=False, progress=print, engine_timeout=0.5)


def test_facts_parse_ignores_noise() -> None:
    facts = Facts.parse(
        "Welcome!\nuser=root\nroot=yes\ndockerd=yes\nsocket=yes\naccess=yes\naddress=10.1.1.1\n"
    )
    assert (facts.root, facts.access, facts.address, facts.sudo) == (True, True, "10.1.1.1", False)


# -- the record --------------------------------------------------------------------------------
def test_stacks_are_recorded_only_in_a_run_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ownership.RUN_ROOT_ENV, str(tmp_path))
    session = Session.new()
    record_stack(session, "DEV")
    assert not session.run_dir.exists()  # attach makes no folder: nothing recorded
    session.make_run_dir()
    for name in ("DEV", "STAGE", "DEV"):
        record_stack(session, name)
    assert recorded_stacks(session.id) == ["DEV", "STAGE"]


def _recorded(session: Session, provider: str) -> None:
    session.make_run_dir()
    RemoteState(session.id).write({"provider": provider, "session": session.id, "owner": session.owner})


def test_sweep_takes_back_dead_ssh_runs_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ownership.RUN_ROOT_ENV, str(tmp_path))
    dead = Session(id="deadbeef", owner="other-boot/1/1")
    alive = Session(id="a11ve000", owner=owner_token())
    kept = Session(id="0cea7ed0", owner="other-boot/1/1")
    machine = Session(id="3ac41e00", owner="other-boot/1/1")
    for session in (dead, alive, kept):
        _recorded(session, "ssh")
    _recorded(machine, "machine")
    (kept.run_dir / ownership.KEPT_FILE).write_text("{}")
    assert read_run(dead.run_dir, {}).provider == "ssh"
    said: list[str] = []
    assert remote_state.sweep("ssh", said.append) == ["deadbeef"]
    assert not dead.run_dir.exists()
    assert all(s.run_dir.exists() for s in (alive, kept, machine))
    assert said == ["swept what earlier ssh runs left on their hosts: sessions deadbeef"]
    assert list(ownership.stale_run_dirs(unless_holding=(ownership.SSH_STATE_FILE,))) == []


def test_a_record_of_hosts_no_longer_reachable_stays_for_a_later_sweep(
    stand_in: StandIn, tmp_path: Path
) -> None:
    stand_in.host(reachable=False)
    session = Session(id="deadbeef", owner="other-boot/1/1")
    _recorded(session, "ssh")
    state = RemoteState(session.id)
    state.update(manager="master-1", formed=True, joined=["worker-1"])
    state.host("master-1", **Remote("master-1", "10.9.9.9", "root").to_record())
    state.host("worker-1", **Remote("worker-1", "10.9.9.8", "root").to_record())
    problems = remote_state.remove_session(session.id)
    assert problems[0].startswith("master-1 not reached: master-1: can't log in to root@10.9.9.9:22")
    assert "worker-1 not reached: it is still in the swarm" in problems
    assert (session.run_dir / ownership.SSH_STATE_FILE).exists()
