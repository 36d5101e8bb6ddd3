import os
import subprocess
from pathlib import Path

import pytest

from pytest_swarm import ownership
from pytest_swarm.ownership import Session, owner_alive, owner_token


def test_owner_alive_for_this_process_only() -> None:
    assert owner_alive(owner_token())
    child = subprocess.Popen(["true"])
    token = owner_token(child.pid)
    child.wait()
    assert not owner_alive(token)
    assert not owner_alive(f"another-boot/{os.getpid()}/1")
    assert not owner_alive("garbage")


def test_session_labels_and_names() -> None:
    session = Session.new()
    assert session.labels[ownership.SESSION_LABEL] == session.id
    assert session.labels[ownership.OWNER_LABEL] == session.owner
    assert session.prefix == f"pswarm-{session.id}"


def test_a_resource_is_judged_only_under_the_run_root_that_made_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A sweep under one run root can't see another root's kept records: it leaves its things."""
    monkeypatch.setenv(ownership.RUN_ROOT_ENV, str(tmp_path / "a"))
    labels = Session.new().labels
    assert labels[ownership.ROOT_LABEL] == str(tmp_path / "a")
    assert ownership.recorded_here(labels)
    monkeypatch.setenv(ownership.RUN_ROOT_ENV, str(tmp_path / "b"))
    assert not ownership.recorded_here(labels)
    older = {ownership.SESSION_LABEL: "s", ownership.OWNER_LABEL: "o"}  # made before the root label
    assert ownership.recorded_here(older)


def test_kept_record_round_trip(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ownership.RUN_ROOT_ENV, str(tmp_path / "run"))
    rootdir = tmp_path / "project"
    rootdir.mkdir()
    session = Session.new(rootdir)
    assert session.make_run_dir() == tmp_path / "run" / session.id
    assert (session.run_dir / ownership.PROJECT_FILE).read_text() == str(rootdir)
    assert ownership.read_kept(rootdir) is None
    ownership.write_kept(session, rootdir, {"DOCKER_HOST": "unix:///x.sock", "nodes": "master-1"})
    assert ownership.read_kept(rootdir) == {
        "session": session.id,
        "DOCKER_HOST": "unix:///x.sock",
        "nodes": "master-1",
    }
    assert session.id not in set(ownership.stale_run_dirs())  # kept: never swept
    ownership.forget_kept(session.id, rootdir)
    assert ownership.read_kept(rootdir) is None
