"""uml, the record: what a UML session made (``<run>/uml.json``), written before it is made, and
the removal of exactly what a record lists (``remove_session``, and the sweep of dead runs').
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from .. import images
from ..ownership import UML_STATE_FILE, is_kept, owner_alive, remove_run_dir, run_root
from .processes import stop_recorded
from .uml_kernel import kill_uml
from .uml_net import delete_link, delete_rule

STATE_FILE = UML_STATE_FILE


def state_path(session_id: str) -> Path:
    return run_root() / session_id / STATE_FILE


def read_state(session_id: str) -> dict[str, Any] | None:
    try:
        state: dict[str, Any] = json.loads(state_path(session_id).read_text())
    except (OSError, ValueError):
        return None
    return state


def write_state(session_id: str, state: Mapping[str, Any]) -> None:
    """Write the record atomically: a sweep may read it at any time."""
    path = state_path(session_id)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(state, indent=2))
    os.replace(tmp, path)


def live_states() -> Iterator[dict[str, Any]]:
    """States of UML sessions whose owner is alive or whose cluster is kept."""
    root = run_root()
    if not root.is_dir():
        return
    for folder in root.iterdir():
        state = read_state(folder.name)
        if state is not None and (is_kept(folder.name) or owner_alive(str(state.get("owner", "")))):
            yield state


def remove_session(session_id: str) -> list[str]:
    """Remove what a UML session recorded: processes, taps, bridge, rule, run folder.

    Returns what could not be removed. Without a record there is nothing of UML's to remove
    (the run folder goes all the same).
    """
    state = read_state(session_id)
    problems: list[str] = []
    if state is not None:
        nodes: dict[str, dict[str, Any]] = state.get("nodes", {})
        for record in nodes.values():
            stop_recorded(record.get("ssh_pid"), record.get("ssh_start"))
        for name, record in nodes.items():
            problem = kill_uml(record.get("pid"), record.get("start"))
            if problem:
                problems.append(f"{name}: {problem}")
        for record in nodes.values():
            problem = delete_link(record.get("tap"))
            if problem:
                problems.append(problem)
        for problem in (delete_link(state.get("bridge")), delete_rule(state.get("rule"))):
            if problem:
                problems.append(problem)
    if not problems:
        remove_run_dir(session_id)
    return problems


def sweep(progress: images.Progress) -> list[str]:
    """Remove the UML sessions earlier runs left: their owner is gone and they were not kept."""
    stale = []
    root = run_root()
    if root.is_dir():
        for folder in root.iterdir():
            state = read_state(folder.name)
            if state is None or is_kept(folder.name) or owner_alive(str(state.get("owner", ""))):
                continue
            stale.append(folder.name)
    for session_id in sorted(stale):
        problems = remove_session(session_id)
        if problems:
            progress(f"sweeping UML session {session_id} left: {'; '.join(problems)}")
    if stale:
        progress(f"swept what earlier UML runs left: sessions {', '.join(sorted(stale))}")
    return sorted(stale)
