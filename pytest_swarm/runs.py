"""The runs recorded on this machine, read from their folders under ``run_root()``: what
``pytest-swarm ls`` lists and ``pytest-swarm down ID`` removes. No engine is asked."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .ownership import (
    KEPT_FILE,
    MACHINE_STATE_FILE,
    PROJECT_FILE,
    SSH_STATE_FILE,
    STATE_DIR,
    UML_STATE_FILE,
    owner_alive,
    read_kept_raw,
    run_root,
)


@dataclass(frozen=True)
class RecordedRun:
    """One run folder: whose it is, which provider made it, whether its cluster is kept."""

    id: str
    provider: str
    started: float | None  # when the run that made (or last reused) it wrote its owner
    owner_pid: int | None
    owner_alive: bool
    kept: bool
    project: Path | None

    def age(self, now: float) -> str:
        return "-" if self.started is None else format_age(now - self.started)

    @property
    def owner(self) -> str:
        if self.owner_pid is None:
            return "unknown"
        return f"{'alive' if self.owner_alive else 'gone'} (pid {self.owner_pid})"


def format_age(seconds: float) -> str:
    """``42s``, ``7m``, ``3h05m``, ``2d04h``."""
    s = max(0, int(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        record: dict[str, Any] = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def _read_text(path: Path) -> str:
    try:
        return path.read_text().strip()
    except OSError:
        return ""


def _provider(folder: Path, kept: dict[str, Any] | None) -> str:
    if kept and kept.get("provider"):
        return str(kept["provider"])
    if (folder / UML_STATE_FILE).exists():
        return "uml"
    if (folder / MACHINE_STATE_FILE).exists():
        return "machine"
    if (folder / SSH_STATE_FILE).exists():
        return "ssh"
    return "dind"


def _owner_token(folder: Path) -> str:
    token = _read_text(folder / "owner")
    if not token:  # a UML run also records its owner in its state
        token = str((_read_json(folder / UML_STATE_FILE) or {}).get("owner", ""))
    return token


def _pid(token: str) -> int | None:
    parts = token.split("/")
    return int(parts[1]) if len(parts) == 3 and parts[1].isdigit() else None


def _started(folder: Path) -> float | None:
    for path in (folder / "owner", folder):
        try:
            return path.stat().st_mtime
        except OSError:
            continue
    return None


def read_run(folder: Path, projects: dict[str, Path]) -> RecordedRun:
    """The run recorded in ``folder``; ``projects`` maps session ids to the projects that keep them."""
    kept = _read_json(folder / KEPT_FILE)
    token = _owner_token(folder)
    project = (kept or {}).get("rootdir") or _read_text(folder / PROJECT_FILE)
    return RecordedRun(
        id=folder.name,
        provider=_provider(folder, kept),
        started=_started(folder),
        owner_pid=_pid(token),
        owner_alive=owner_alive(token),
        kept=(folder / KEPT_FILE).is_file(),
        project=Path(project) if project else projects.get(folder.name),
    )


def recorded_runs(projects: Sequence[Path] = ()) -> list[RecordedRun]:
    """Every run folder under ``run_root()``, newest first.

    Args:
        projects: project folders whose kept record (``.pytest-swarm/kept.json``) names the
            project of a kept cluster whose run folder does not (clusters kept before it did).
    """
    root = run_root()
    if not root.is_dir():
        return []
    keepers = {str(read_kept_raw(p / STATE_DIR / KEPT_FILE).get("session", "")): p for p in projects}
    runs = [read_run(folder, keepers) for folder in root.iterdir() if folder.is_dir()]
    return sorted(runs, key=lambda run: (-(run.started or 0.0), run.id))


def find_run(session_id: str) -> RecordedRun | None:
    """The run recorded as ``session_id`` (matched by folder name, never joined into a path)."""
    return next((run for run in recorded_runs() if run.id == session_id), None)


def table(runs: Sequence[RecordedRun], now: float | None = None) -> list[str]:
    """The lines ``pytest-swarm ls`` prints: a header, then one line per run."""
    now = time.time() if now is None else now
    rows = [("ID", "PROVIDER", "AGE", "OWNER", "KEPT", "PROJECT")]
    rows += [
        (r.id, r.provider, r.age(now), r.owner, "yes" if r.kept else "no", str(r.project or "-"))
        for r in runs
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    return ["  ".join([*(c.ljust(w) for c, w in zip(row, widths, strict=False)), row[-1]]) for row in rows]
