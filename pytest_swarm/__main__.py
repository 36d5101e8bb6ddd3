"""``python -m pytest_swarm down [ROOTDIR]``: remove the cluster kept for a project.
``python -m pytest_swarm sweep``: remove what earlier runs on this machine left behind (their
pytest process is gone, their cluster was not kept), by each run's own record."""

from __future__ import annotations

import sys
from pathlib import Path

from .errors import SwarmError
from .lifecycle import down_kept, sweep_leftovers

USAGE = (
    "usage: python -m pytest_swarm down [ROOTDIR]   (remove the cluster kept by --swarm-keep)\n"
    "       python -m pytest_swarm sweep            (remove what killed or crashed runs left)"
)


def main(argv: list[str]) -> int:
    if argv == ["sweep"]:
        swept = sweep_leftovers(print)
        print(f"swept {len(swept)} run(s)" + (f": {', '.join(swept)}" if swept else ""))
        return 0
    if not argv or argv[0] != "down" or len(argv) > 2:
        print(USAGE, file=sys.stderr)
        return 2
    rootdir = Path(argv[1] if len(argv) == 2 else ".").resolve()
    try:
        print(down_kept(rootdir))
    except SwarmError as exc:
        print(f"pytest-swarm: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
