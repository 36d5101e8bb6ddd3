"""Who owns what: session ids, owner labels, the run folder, kept clusters and the sweep.

Everything a run creates carries ``io.pytest-swarm.session=<id>`` and
``io.pytest-swarm.owner=<boot id>/<pid>/<process start time>``. A later run removes what an
earlier one left only when that owner process is gone (same boot, pid not alive with the same
start time; or another boot) and the cluster was not kept.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SESSION_LABEL = "io.pytest-swarm.session"
OWNER_LABEL = "io.pytest-swarm.owner"
# The run root whose records (kept or not, its folder) speak for the resource: a sweep under
# another root must not judge it (it can't see that it is kept).
ROOT_LABEL = "io.pytest-swarm.root"
RUN_ROOT_ENV = "PYTEST_SWARM_RUN_ROOT"  # where run folders go instead of <tmp>/pytest-swarm
CGROUP_ROOT = Path("/sys/fs/cgroup")
CGROUP_PREFIX = "pytest-swarm-"
KEPT_FILE = "kept.json"  # in the run folder: the cluster is kept, and how to reach it
PROJECT_FILE = "project"  # in the run folder: the rootdir of the run that made it
UML_STATE_FILE = "uml.json"  # in the run folder: a UML run's record; its own sweep removes what it lists
MACHINE_STATE_FILE = "machine.json"  # in the run folder: the machines a machine run created
SSH_STATE_FILE = "ssh.json"  # in the run folder: the hosts an ssh (or machine) run reached, what it did there
STACKS_FILE = "stacks"  # in the run folder: the stacks the run deployed, one name a line
STATE_DIR = ".pytest-swarm"  # under the rootdir: which kept cluster belongs to this project


def run_root() -> Path:
    """The folder holding every run folder: ``$PYTEST_SWARM_RUN_ROOT``, else ``<tmp>/pytest-swarm``.

    Read at each call, so a test (or a second checkout) can point a run at a folder of its own.
    Runs, ``sweep`` and ``down`` must agree on it: a kept cluster is known by its run folder.
    Keep it short: the dind nodes' sockets are under it (a unix socket path has at most 107 bytes).
    """
    return Path(os.environ.get(RUN_ROOT_ENV) or Path(tempfile.gettempdir()) / "pytest-swarm")


def recorded_here(labels: dict[str, str]) -> bool:
    """Whether a labelled resource's records live under this process's run root (resources
    made before the root was labelled count as this root's)."""
    return labels.get(ROOT_LABEL, str(run_root())) == str(run_root())


def boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return "unknown"


def process_start_time(pid: int) -> str:
    """Field 22 of /proc/<pid>/stat: tells a live owner from a reused pid."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return ""
    return stat.rsplit(")", 1)[1].split()[19]


def owner_token(pid: int | None = None) -> str:
    pid = os.getpid() if pid is None else pid
    return f"{boot_id()}/{pid}/{process_start_time(pid)}"


def owner_alive(token: str) -> bool:
    try:
        boot, pid_text, start = token.split("/")
        pid = int(pid_text)
    except ValueError:
        return False
    if boot != boot_id():
        return False
    return bool(start) and process_start_time(pid) == start


@dataclass(frozen=True)
class Session:
    """One run's identity and its folder for sockets, logs and rendered stacks."""

    id: str
    owner: str
    rootdir: Path | None = None  # the project of the run, recorded in its folder for `ls`

    @classmethod
    def new(cls, rootdir: Path | None = None) -> Session:
        return cls(id=uuid.uuid4().hex[:8], owner=owner_token(), rootdir=rootdir)

    @property
    def labels(self) -> dict[str, str]:
        return {SESSION_LABEL: self.id, OWNER_LABEL: self.owner, ROOT_LABEL: str(run_root())}

    @property
    def run_dir(self) -> Path:
        return run_root() / self.id

    @property
    def prefix(self) -> str:
        """Prefix of every container, network and volume name of this session."""
        return f"pswarm-{self.id}"

    @property
    def cgroup_prefix(self) -> str:
        return f"{CGROUP_PREFIX}{self.id}-"

    def make_run_dir(self) -> Path:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        (self.run_dir / "owner").write_text(self.owner)
        if self.rootdir is not None:
            (self.run_dir / PROJECT_FILE).write_text(str(self.rootdir))
        return self.run_dir


def is_kept(session_id: str) -> bool:
    return (run_root() / session_id / KEPT_FILE).is_file()


def write_kept(session: Session, rootdir: Path, record: dict[str, Any]) -> Path:
    """Mark the session's cluster as kept; point the project's state file at it."""
    session.run_dir.mkdir(parents=True, exist_ok=True)  # attach makes no run folder of its own
    kept = {**record, "rootdir": str(rootdir)}
    (session.run_dir / KEPT_FILE).write_text(json.dumps(kept, indent=2))
    state = rootdir / STATE_DIR / KEPT_FILE
    state.parent.mkdir(exist_ok=True)
    (state.parent / ".gitignore").write_text("*\n")
    state.write_text(json.dumps({"session": session.id, **record}, indent=2))
    return state


def read_kept(rootdir: Path) -> dict[str, Any] | None:
    """The kept cluster recorded for this project, if it is still kept."""
    state = rootdir / STATE_DIR / KEPT_FILE
    try:
        record: dict[str, Any] = json.loads(state.read_text())
    except (OSError, ValueError):
        return None
    return record if is_kept(str(record.get("session", ""))) else None


def forget_kept(session_id: str, rootdir: Path | None) -> None:
    (run_root() / session_id / KEPT_FILE).unlink(missing_ok=True)
    if rootdir is not None:
        state = rootdir / STATE_DIR / KEPT_FILE
        record = read_kept_raw(state)
        if record.get("session") == session_id:
            state.unlink(missing_ok=True)


def read_kept_raw(state: Path) -> dict[str, Any]:
    try:
        record: dict[str, Any] = json.loads(state.read_text())
    except (OSError, ValueError):
        return {}
    return record


def cgroup_dirs(prefix: str) -> list[Path]:
    """Host cgroup folders named ``prefix*`` (v1: one per hierarchy; v2: one)."""
    if not CGROUP_ROOT.is_dir():
        return []
    found = list(CGROUP_ROOT.glob(f"{prefix}*")) + list(CGROUP_ROOT.glob(f"*/{prefix}*"))
    return [p for p in found if p.is_dir()]


def remove_cgroup_tree(top: Path) -> list[str]:
    """rmdir a cgroup folder bottom-up (cgroup files can't be unlinked, folders can)."""
    problems: list[str] = []
    for folder in sorted((p for p in [top, *top.rglob("*")] if p.is_dir()), key=lambda p: -len(p.parts)):
        try:
            folder.rmdir()
        except FileNotFoundError:
            pass
        except OSError as exc:
            problems.append(f"{folder}: {exc.strerror}")
    return problems


def record_stack(session: Session, name: str) -> None:
    """Note, before it is deployed, a stack the run deploys (a provider whose swarm outlives the
    run removes what a killed run deployed by this list). Only where the run has a folder."""
    if not session.run_dir.is_dir():
        return
    if name not in recorded_stacks(session.id):
        with open(session.run_dir / STACKS_FILE, "a") as stacks:
            stacks.write(name + "\n")


def recorded_stacks(session_id: str) -> list[str]:
    try:
        return [line for line in (run_root() / session_id / STACKS_FILE).read_text().splitlines() if line]
    except OSError:
        return []


def remove_run_dir(session_id: str) -> None:
    shutil.rmtree(run_root() / session_id, ignore_errors=True)


def stale_run_dirs(unless_holding: tuple[str, ...] = ()) -> Iterator[str]:
    """Session ids of run folders whose owner is gone and whose cluster was not kept.

    A folder holding one of ``unless_holding`` (another provider's record of what it made) is
    left to that provider's sweep, which must read the record to remove what it lists.
    """
    root = run_root()
    if not root.is_dir():
        return
    for folder in root.iterdir():
        if any((folder / name).exists() for name in unless_holding):
            continue
        try:
            token = (folder / "owner").read_text().strip()
        except OSError:
            token = ""
        if not is_kept(folder.name) and not owner_alive(token):
            yield folder.name
