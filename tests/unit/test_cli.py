"""The ``pytest-swarm`` command, run as a user runs it (a subprocess), on fabricated run records.

Every run gets a run root of its own (``PYTEST_SWARM_RUN_ROOT``) and a ``DOCKER_HOST`` where no
engine answers: nothing here reaches a real engine or another run's records.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import tomllib
from dataclasses import dataclass
from pathlib import Path

import pytest

from pytest_swarm.ownership import KEPT_FILE, PROJECT_FILE, RUN_ROOT_ENV, STATE_DIR, owner_token
from pytest_swarm.runs import format_age

ROOT = Path(__file__).resolve().parents[2]
GONE = "another-boot/4242/1"  # an owner token of no live process
USAGE_EXIT, FAILED_EXIT = 2, 1


@dataclass
class Cli:
    """Runs the command with its own run root, project folder and unreachable engine."""

    run_root: Path
    project: Path
    env: dict[str, str]

    def __call__(self, *args: str, entry: str = "-m") -> subprocess.CompletedProcess[str]:
        argv = [sys.executable, "-m", "pytest_swarm", *args]
        if entry == "script":  # what the [project.scripts] wrapper does: main() reads sys.argv
            code = "import sys; from pytest_swarm.__main__ import main; sys.exit(main())"
            argv = [sys.executable, "-c", code, *args]
        return subprocess.run(
            argv, cwd=self.project, env=self.env, capture_output=True, text=True, timeout=30, check=False
        )

    def record(self, session_id: str, owner: str = GONE, **files: object) -> Path:
        """A run folder as a run leaves it: ``owner`` plus the given files (dicts as JSON)."""
        folder = self.run_root / session_id
        folder.mkdir(parents=True)
        (folder / "owner").write_text(owner)
        for name, content in files.items():
            text = content if isinstance(content, str) else json.dumps(content)
            (folder / name.replace("_", ".")).write_text(text)
        return folder

    def keep_for_project(self, session_id: str, record: dict[str, str]) -> Path:
        state = self.project / STATE_DIR / KEPT_FILE
        state.parent.mkdir(exist_ok=True)
        state.write_text(json.dumps({"session": session_id, **record}))
        return state


@pytest.fixture
def cli(tmp_path: Path) -> Cli:
    project = tmp_path / "project"
    project.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DOCKER_", "PYTEST_SWARM_"))}
    env.update(
        PYTHONPATH=str(ROOT),  # this checkout's package, whatever is installed
        DOCKER_HOST=f"unix://{tmp_path}/no-engine.sock",
        **{RUN_ROOT_ENV: str(tmp_path / "runs")},
    )
    return Cli(tmp_path / "runs", project, env)


@pytest.mark.parametrize("command", [[], ["ls"], ["down"], ["sweep"]], ids=lambda c: " ".join(c) or "main")
def test_help_of_the_command_and_each_subcommand(cli: Cli, command: list[str]) -> None:
    result = cli(*command, "--help")
    assert (result.returncode, result.stderr) == (0, "")
    assert result.stdout.startswith(f"usage: {' '.join(['pytest-swarm', *command])} [-h]")
    assert "exit codes: 0 done" in result.stdout
    if not command:
        assert all(f"    {sub} " in result.stdout for sub in ("ls", "down", "sweep"))


def test_the_console_script_is_the_same_entry_point(cli: Cli) -> None:
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts == {"pytest-swarm": "pytest_swarm.__main__:main"}
    assert cli("ls", entry="script").stdout == cli("ls").stdout


def test_no_command_or_an_unknown_one_is_a_usage_error(cli: Cli) -> None:
    missing, unknown = cli(), cli("up")
    assert missing.returncode == unknown.returncode == USAGE_EXIT
    assert "the following arguments are required: COMMAND" in missing.stderr
    assert "invalid choice: 'up'" in unknown.stderr


def test_ls_with_nothing_recorded(cli: Cli) -> None:
    absent = cli("ls")
    cli.run_root.mkdir()
    empty = cli("ls")
    for result in (absent, empty):
        assert (result.returncode, result.stderr) == (0, "")
        assert result.stdout == f"no kept clusters and no recorded runs in {cli.run_root}\n"


def test_ls_lists_each_recorded_run(cli: Cli, tmp_path: Path) -> None:
    other = tmp_path / "other-project"
    cli.record("keptdind", kept_json={"provider": "dind", "nodes": "master-1", "rootdir": str(other)})
    cli.record("keptuml0", uml_json={"owner": GONE}, kept_json={"provider": "uml", "nodes": "master-1"})
    cli.keep_for_project("keptuml0", {"provider": "uml"})  # a kept record naming no project: this one's
    cli.record("machine0", machine_json={"created": ["master-1"]})
    live = cli.record("inuse000", owner=owner_token(), **{PROJECT_FILE: str(other)})
    two_days_ago = time.time() - 2 * 86400 - 3 * 3600
    os.utime(live / "owner", (two_days_ago, two_days_ago))  # the oldest: listed last

    result = cli("ls")
    assert (result.returncode, result.stderr) == (0, "")
    header, *lines = result.stdout.splitlines()
    assert header.split() == ["ID", "PROVIDER", "AGE", "OWNER", "KEPT", "PROJECT"]
    rows = {line.split()[0]: line.split()[1:] for line in lines}
    assert rows == {
        "keptdind": ["dind", rows["keptdind"][1], "gone", "(pid", "4242)", "yes", str(other)],
        "keptuml0": ["uml", rows["keptuml0"][1], "gone", "(pid", "4242)", "yes", str(cli.project)],
        "machine0": ["machine", rows["machine0"][1], "gone", "(pid", "4242)", "no", "-"],
        "inuse000": ["dind", "2d03h", "alive", "(pid", f"{os.getpid()})", "no", str(other)],
    }
    assert lines[-1].startswith("inuse000")
    assert {rows[k][1][-1] for k in ("keptdind", "keptuml0", "machine0")} <= {"s", "m"}


def test_down_with_no_kept_cluster(cli: Cli, tmp_path: Path) -> None:
    here, there = cli("down"), cli("down", "--rootdir", str(tmp_path))
    assert (here.returncode, here.stderr) == (there.returncode, there.stderr) == (0, "")
    assert here.stdout.startswith(f"no kept cluster recorded under {cli.project}: nothing to remove")
    assert there.stdout.startswith(f"no kept cluster recorded under {tmp_path}: nothing to remove")


def test_down_an_unknown_id(cli: Cli) -> None:
    cli.record("deadbeef")
    result = cli("down", "0badc0de")
    assert (result.returncode, result.stdout) == (FAILED_EXIT, "")
    assert result.stderr == (
        f"pytest-swarm: no run '0badc0de' is recorded in {cli.run_root}: "
        "`pytest-swarm ls` lists the recorded runs and kept clusters by id\n"
    )
    assert (cli.run_root / "deadbeef").is_dir()


def test_down_a_folder_instead_of_an_id_is_a_usage_error(cli: Cli, tmp_path: Path) -> None:
    result = cli("down", str(tmp_path))
    assert result.returncode == USAGE_EXIT
    assert "is a folder, not a run id: for a project's cluster use --rootdir DIR" in result.stderr


def test_down_refuses_a_run_whose_pytest_is_still_running(cli: Cli) -> None:
    folder = cli.record("inuse000", owner=owner_token(), kept_json={"provider": "attach"})
    result = cli("down", "inuse000")
    assert result.returncode == FAILED_EXIT
    assert f"run inuse000 belongs to pytest process {os.getpid()}, which is still running" in result.stderr
    assert (folder / KEPT_FILE).is_file()


def test_down_by_id_removes_a_kept_record_and_the_project_pointer(cli: Cli) -> None:
    """attach: the swarm is someone else's, only the records go (no engine needed to show it)."""
    folder = cli.record("attached", kept_json={"provider": "attach", "rootdir": str(cli.project)})
    state = cli.keep_for_project("attached", {"provider": "attach"})
    result = cli("down", "attached")
    assert (result.returncode, result.stderr) == (0, "")
    assert result.stdout == "cluster attached removed (attach, was kept)\n"
    assert not folder.exists() and not state.exists()


def test_down_keeps_the_record_when_the_engine_does_not_answer(cli: Cli) -> None:
    folder = cli.record("keptdind", kept_json={"provider": "dind", "rootdir": str(cli.project)})
    state = cli.keep_for_project("keptdind", {"provider": "dind"})
    result = cli("down")
    assert result.returncode == FAILED_EXIT
    assert result.stderr.startswith(f"pytest-swarm: no Docker engine answers at {cli.env['DOCKER_HOST']}")
    assert "start dockerd" in result.stderr
    assert (folder / KEPT_FILE).is_file() and state.is_file()  # `down` again once the engine is up


def test_sweep_with_nothing_to_sweep(cli: Cli) -> None:
    cli.record("keptdind", kept_json={"provider": "dind"})  # kept: never swept
    result = cli("sweep")
    assert (result.returncode, result.stderr) == (0, "")
    assert result.stdout.splitlines()[-1] == "swept 0 run(s)"
    assert (cli.run_root / "keptdind").is_dir()


def test_sweep_fails_naming_the_runs_it_could_not_remove(cli: Cli) -> None:
    cli.record("deaddind")  # a dead dind run, and no engine to remove its containers from
    result = cli("sweep")
    assert result.returncode == FAILED_EXIT
    assert "dind: no local engine to sweep" in result.stdout
    assert "runs whose process is gone are still recorded: deaddind" in result.stderr


@pytest.mark.parametrize(
    ("seconds", "shown"),
    [(-3, "0s"), (59, "59s"), (60, "1m"), (3599, "59m"), (3660, "1h01m"), (90000, "1d01h")],
)
def test_format_age(seconds: float, shown: str) -> None:
    assert format_age(seconds) == shown
