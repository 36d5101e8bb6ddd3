"""The machine provider's docker-machine layer, against a stand-in ``docker-machine`` executable.

The stand-in (a small Python script first on PATH) records each call (argv, the environment
keys it saw) and answers like docker-machine does for create, ip, inspect, env, rm and ls; it can
fail transiently N times before succeeding, or fail with an auth error. No cloud is reached:
the GCE path (a real ``docker-machine create --driver google``) has NOT been run by these tests,
nor have the engine/swarm parts of the provider, which need real machines.
"""

from __future__ import annotations

import json
import os
import stat
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pytest_swarm import ownership, waiting
from pytest_swarm.errors import ProvisioningError
from pytest_swarm.ownership import Session, owner_token
from pytest_swarm.providers import machine_cli
from pytest_swarm.providers.base import ProviderRun
from pytest_swarm.providers.machine import MachineProvider
from pytest_swarm.providers.machine_cli import (
    MachineCli,
    MachineError,
    Machines,
    MachineState,
    TransientMachineError,
    create_flags,
    is_transient,
)
from pytest_swarm.settings import DEFAULT_GCE_IMAGE, resolve

SECRET = "/secret/gce-key.json"

STAND_IN = r"""
import fcntl, json, os, sys, time
state = os.environ["STANDIN_DIR"]
args = sys.argv[1:]
with open(os.path.join(state, "calls", f"{time.time_ns()}-{os.getpid()}.json"), "w") as f:
    json.dump({"argv": args, "env": sorted(os.environ)}, f)
# Machines are created in parallel: one call at a time reads and writes the store.
lock = open(os.path.join(state, "store.lock"), "w")
fcntl.flock(lock, fcntl.LOCK_EX)
store_file = os.path.join(state, "store.json")
store = json.load(open(store_file)) if os.path.exists(store_file) else {}
config = json.load(open(os.path.join(state, "config.json")))

def save():
    with open(store_file + ".tmp", "w") as f:
        json.dump(store, f)
    os.replace(store_file + ".tmp", store_file)

def missing(name):
    sys.stderr.write(f'Host does not exist: "{name}"\n')
    sys.exit(1)

command, name = args[0], (args[-1] if len(args) > 1 else "")
if command == "create":
    counter = os.path.join(state, f"failures-{name}")
    failed = int(open(counter).read()) if os.path.exists(counter) else 0
    if config["mode"] == "auth":
        sys.stderr.write('Error with pre-create check: "google: could not find default credentials. '
                         'See https://developers.google.com/accounts/docs/application-default-credentials"\n')
        sys.exit(1)
    if config["mode"] == "transient" and failed < config["fail_times"]:
        open(counter, "w").write(str(failed + 1))
        store[name] = {"ip": "", "half": True}  # docker-machine keeps a half-made host
        save()
        sys.stderr.write("Error creating machine: Error in driver during machine creation: "
                         "googleapi: Error 503: Backend Error, backendError\n")
        sys.exit(1)
    if config["mode"] == "slow":  # what docker-machine says while a machine comes up
        for line in ("Running pre-create checks...", f"({name}) Creating instance",
                     f"({name}) Waiting for SSH"):
            print(line, flush=True)
            time.sleep(0.6)
    if config["mode"] == "hang":
        print("Creating machine...", flush=True)
        time.sleep(60)
    if name in store:
        sys.stderr.write(f'Host already exists: "{name}"\n')
        sys.exit(1)
    store[name] = {"ip": f"10.0.0.{len(store) + 2}"}
    save()
    print(f"Docker is up and running!\nTo see how to connect: docker-machine env {name}")
elif command == "ip":
    if name not in store: missing(name)
    print(store[name]["ip"])
elif command == "inspect":
    if name not in store: missing(name)
    print(json.dumps({"Name": name, "DriverName": "google", "Driver": {
        "IPAddress": store[name]["ip"], "MachineName": name, "SSHUser": "docker-user", "SSHPort": 22,
        "SSHKeyPath": "", "StorePath": os.path.join(state, "machine")}}))
elif command == "env":
    if name not in store: missing(name)
    cert = os.path.join(state, "machine", "machines", name)
    print(f'export DOCKER_TLS_VERIFY="1"\nexport DOCKER_HOST="tcp://{store[name]["ip"]}:2376"\n'
          f'export DOCKER_CERT_PATH="{cert}"\nexport DOCKER_MACHINE_NAME="{name}"\n'
          f'# Run this command to configure your shell: \n# eval $(docker-machine env {name})')
elif command == "rm":
    if name not in store: missing(name)
    del store[name]
    save()
    print(f"Successfully removed {name}")
elif command == "ls":
    print("\n".join(sorted(store)))
else:
    sys.stderr.write(f"stand-in: unknown command {command}\n")
    sys.exit(3)
"""


class StandIn:
    """The stand-in's folder: its configuration, the calls it saw, the machines it holds."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        (folder / "calls").mkdir(parents=True)
        self.configure("ok")

    def configure(self, mode: str, fail_times: int = 0) -> None:
        (self.folder / "config.json").write_text(json.dumps({"mode": mode, "fail_times": fail_times}))

    def calls(self) -> list[dict[str, Any]]:
        files = sorted((self.folder / "calls").iterdir(), key=lambda p: int(p.name.split("-")[0]))
        return [json.loads(p.read_text()) for p in files]

    def argvs(self, command: str | None = None) -> list[list[str]]:
        return [c["argv"] for c in self.calls() if command is None or c["argv"][0] == command]

    def machines(self) -> list[str]:
        store = self.folder / "store.json"
        return sorted(json.loads(store.read_text())) if store.exists() else []

    def add_existing(self, name: str) -> None:
        store = self.folder / "store.json"
        found = json.loads(store.read_text()) if store.exists() else {}
        found[name] = {"ip": "10.0.9.9"}
        store.write_text(json.dumps(found))


@pytest.fixture
def stand_in(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[StandIn]:
    """A ``docker-machine`` stand-in first on PATH; run folders go under tmp_path."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    script = bin_dir / "docker-machine"
    script.write_text(f"#!{sys.executable}\n{STAND_IN}")
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}")
    monkeypatch.setenv("STANDIN_DIR", str(tmp_path / "standin"))
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", SECRET)
    monkeypatch.setenv(ownership.RUN_ROOT_ENV, str(tmp_path / "runs"))
    yield StandIn(tmp_path / "standin")


def make_machines(session: Session, progress: list[str], sleeps: list[float] | None = None) -> Machines:
    flags = lambda name: create_flags(  # noqa: E731
        driver="google",
        project="proj-1",
        zone="europe-west1-b",
        machine_type="g1-small",
        image=DEFAULT_GCE_IMAGE,
        engine_labels={"pool": "lesson"} if name == "master-1" else {},
        extra=["--google-open-port", "9292/tcp"],
    )
    return Machines(
        session,
        MachineCli(),
        flags,
        progress.append,
        attempts=4,
        backoff=2.0,
        sleep=(sleeps if sleeps is not None else []).append,
    )


def test_create_command_lines_and_the_record_of_what_this_run_created(stand_in: StandIn) -> None:
    session, progress = Session.new(), []
    machines = make_machines(session, progress)
    machines.create_all(["master-1", "worker-1", "worker-2"])
    creates = sorted(stand_in.argvs("create"), key=lambda argv: argv[-1])
    assert creates[0] == [
        "create",
        "--driver",
        "google",
        "--google-project",
        "proj-1",
        "--google-zone",
        "europe-west1-b",
        "--google-machine-type",
        "g1-small",
        "--google-machine-image",
        "https://www.googleapis.com/compute/v1/projects/ubuntu-os-cloud/global/images/family/ubuntu-2204-lts",
        "--engine-label",
        "pool=lesson",
        "--google-open-port",
        "9292/tcp",
        "master-1",
    ]
    assert [argv[-1] for argv in creates] == ["master-1", "worker-1", "worker-2"]
    assert "--engine-label" not in creates[1]
    assert stand_in.machines() == ["master-1", "worker-1", "worker-2"]
    assert sorted(MachineState(session.id).created) == ["master-1", "worker-1", "worker-2"]
    # Credentials reach docker-machine through the environment, and are never printed.
    assert all("GOOGLE_APPLICATION_CREDENTIALS" in c["env"] for c in stand_in.calls())
    assert not [line for line in progress if SECRET in line]


def test_transient_errors_are_retried_with_backoff_and_the_half_made_machine_removed(
    stand_in: StandIn,
) -> None:
    stand_in.configure("transient", fail_times=2)
    session, progress, sleeps = Session.new(), [], []
    make_machines(session, progress, sleeps).create("worker-1")
    assert [argv[0] for argv in stand_in.argvs()] == ["create", "rm", "create", "rm", "create"]
    assert stand_in.argvs("rm")[0] == ["rm", "-y", "-f", "worker-1"]
    assert sleeps == [2.0, 4.0]  # exponential backoff between the three attempts
    assert any("retrying docker-machine create (attempt 3/4)" in line for line in progress)
    assert stand_in.machines() == ["worker-1"]


def test_transient_errors_stop_after_the_attempts_and_say_why(stand_in: StandIn) -> None:
    stand_in.configure("transient", fail_times=10)
    machines = make_machines(Session.new(), [])
    with pytest.raises(TransientMachineError, match="Error 503: Backend Error"):
        machines.create("worker-1")
    assert len(stand_in.argvs("create")) == 4


def test_an_auth_error_is_not_retried_and_names_the_credentials_problem(stand_in: StandIn) -> None:
    stand_in.configure("auth")
    session = Session.new()
    with pytest.raises(MachineError) as info:
        make_machines(session, []).create("master-1")
    assert not isinstance(info.value, TransientMachineError)
    assert "could not find default credentials" in str(info.value)
    assert SECRET not in str(info.value)
    assert len(stand_in.argvs("create")) == 1
    assert MachineState(session.id).created == ["master-1"]  # recorded before the attempt


@pytest.fixture
def heartbeat(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """The lines the run's heartbeat gets, every 0.2 s instead of every 10 s."""
    monkeypatch.setattr(waiting, "HEARTBEAT", 0.2)
    lines: list[str] = []
    previous = waiting.set_heartbeat(lines.append)
    yield lines
    waiting.set_heartbeat(previous)


def test_a_long_create_tells_what_is_awaited_and_its_last_line(
    stand_in: StandIn, heartbeat: list[str]
) -> None:
    stand_in.configure("slow")
    MachineCli().create("worker-1", ["--driver", "google"])
    assert all(line.startswith("docker-machine create worker-1: ") for line in heartbeat)
    said = [line.split(" of 900 s: ", 1)[1] for line in heartbeat]
    # each line docker-machine wrote is told in turn, while it is the last one
    assert [line for i, line in enumerate(said) if i == 0 or said[i - 1] != line] == [
        "Running pre-create checks...",
        "(worker-1) Creating instance",
        "(worker-1) Waiting for SSH",
    ]
    assert stand_in.machines() == ["worker-1"]


def test_a_create_past_its_timeout_is_ended_as_a_transient_error(
    stand_in: StandIn, heartbeat: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    stand_in.configure("hang")
    monkeypatch.setattr(machine_cli, "CREATE_TIMEOUT", 1.0)
    started = time.monotonic()
    with pytest.raises(
        TransientMachineError, match=r"did not finish within 1 s; its last line: Creating machine"
    ):
        MachineCli().create("worker-1", [])
    assert time.monotonic() - started < 15  # the stand-in was ended, not waited for
    assert heartbeat[-1].startswith("docker-machine create worker-1: ")


@pytest.mark.parametrize(
    ("stderr", "transient"),
    [
        (
            "googleapi: Error 403: Quota 'CPUS' exceeded. Limit: 8.0 in region europe-west1., quotaExceeded",
            True,
        ),
        ("googleapi: Error 429: Rate Limit Exceeded, rateLimitExceeded", True),
        ("googleapi: Error 503: Backend Error, backendError", True),
        ("Error creating machine: Maximum number of retries (60) exceeded: operation timed out", True),
        ("ssh: dial tcp 35.1.2.3:22: i/o timeout", True),
        ("google: could not find default credentials. See https://...", False),
        ('oauth2: cannot fetch token: 400 Bad Request Response: {"error": "invalid_grant"}', False),
        ("googleapi: Error 400: Invalid value for field 'resource.machineType': 'g9-huge'", False),
        (
            "googleapi: Error 403: Required 'compute.instances.create' permission: does not have permission",
            False,
        ),
        ('Host already exists: "master-1"', False),
        ("something nobody has seen", False),
    ],
)
def test_error_classification(stderr: str, transient: bool) -> None:
    assert is_transient(stderr) is transient


def test_a_machine_is_handed_on_as_an_ssh_host(stand_in: StandIn, tmp_path: Path) -> None:
    """After create, docker-machine's ip and inspect say how to reach a machine; from there it is a
    host of the ssh code path (engine, testinfra, images, swarm), never its TLS port."""
    settings = resolve({"provider": "machine", "workers": "0"}, {}, {}, tmp_path)
    provider = MachineProvider(ProviderRun(settings, Session.new(), lambda _line: None))
    provider.machines.create("master-1")
    remote = provider.remote("master-1")
    key = stand_in.folder / "machine" / "machines" / "master-1" / "id_rsa"
    known_hosts = provider.session.run_dir / "known_hosts"
    assert (remote.name, remote.host, remote.user, remote.port, remote.key) == (
        "master-1",
        "10.0.0.2",
        "docker-user",
        22,
        str(key),
    )
    assert remote.options == (f"UserKnownHostsFile={known_hosts}", "StrictHostKeyChecking=accept-new")
    assert [argv[0] for argv in stand_in.argvs()] == ["create", "ip", "inspect"]  # no `env`: no TLS
    provider.nodes.start("master-1")
    assert provider.nodes.access.forward_argv(remote, provider.session.run_dir / "s.sock")[-3:] == [
        "-o",
        "StrictHostKeyChecking=accept-new",
        "10.0.0.2",
    ]
    provider.down()
    assert stand_in.machines() == []


def test_only_machines_this_run_created_are_removed(stand_in: StandIn) -> None:
    stand_in.add_existing("worker-9")  # someone else's machine
    session = Session.new()
    machines = make_machines(session, [])
    machines.create_all(["master-1", "worker-1"])
    with pytest.raises(ProvisioningError, match="worker-9 was not created by this run"):
        machines.remove("worker-9")
    assert machines.remove_created() == []
    assert stand_in.machines() == ["worker-9"]
    assert sorted(argv[-1] for argv in stand_in.argvs("rm")) == ["master-1", "worker-1"]
    assert MachineState(session.id).created == []


def test_a_kept_run_is_removed_later_from_its_record(stand_in: StandIn) -> None:
    session = Session.new()
    make_machines(session, []).create_all(["master-1", "worker-1"])
    stand_in.add_existing("worker-9")
    assert machine_cli.remove_session(session.id) == []
    assert stand_in.machines() == ["worker-9"]
    assert not session.run_dir.exists()


def test_sweep_removes_machines_of_dead_runs_only(stand_in: StandIn) -> None:
    dead = Session(id="deadbeef", owner="other-boot/1/1")
    alive = Session(id="a11ve000", owner=owner_token())
    kept = Session(id="0cea7ed0", owner="other-boot/1/1")
    for session, name in ((dead, "worker-1"), (alive, "worker-2"), (kept, "worker-3")):
        make_machines(session, []).create(name)
    (kept.run_dir / ownership.KEPT_FILE).write_text("{}")
    progress: list[str] = []
    assert machine_cli.sweep(progress.append) == ["deadbeef"]
    assert stand_in.machines() == ["worker-2", "worker-3"]
    assert progress == ["swept the machines earlier runs left: sessions deadbeef"]


def test_a_missing_docker_machine_says_how_to_get_it(tmp_path: Path) -> None:
    cli = MachineCli(executable=str(tmp_path / "no-such-docker-machine"))
    with pytest.raises(MachineError, match=r"is not installed .* install docker-machine"):
        cli.ls()


def test_provider_attached_to_named_machines_never_removes_them(
    stand_in: StandIn, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("m1", "w1"):
        stand_in.add_existing(name)
    settings = resolve({"provider": "machine", "machines": "m1,w1"}, {}, {}, tmp_path)
    provider = MachineProvider(ProviderRun(settings, Session.new(), lambda _line: None))
    assert (provider.names, provider.create) == (["m1", "w1"], False)
    provider.down()
    assert stand_in.argvs("rm") == []
    assert stand_in.machines() == ["m1", "w1"]


def test_provider_refuses_google_without_a_project(
    stand_in: StandIn, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("GOOGLE_PROJECT", raising=False)
    settings = resolve({"provider": "machine", "workers": "1"}, {}, {}, tmp_path)
    provider = MachineProvider(ProviderRun(settings, Session.new(), lambda _line: None))
    with pytest.raises(ProvisioningError, match="needs a GCE project: give --swarm-gce-project"):
        provider.up()
    assert stand_in.argvs("create") == []
