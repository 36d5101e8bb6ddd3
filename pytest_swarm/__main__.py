"""``pytest-swarm`` (or ``python -m pytest_swarm``): the clusters pytest-swarm runs left on this machine.

Commands::

    pytest-swarm ls [--rootdir DIR]     kept clusters and recorded runs, one line each
    pytest-swarm down [--rootdir DIR]   remove the cluster kept for the project in DIR (default: .)
    pytest-swarm down ID                remove the cluster of the run recorded as ID (see ``ls``)
    pytest-swarm sweep                  remove what runs whose pytest process is gone left, unless kept

Everything is found by the runs' own records (run folders under ``$PYTEST_SWARM_RUN_ROOT``, else
``<tmp>/pytest-swarm``, and the project's ``.pytest-swarm/kept.json``); only what those list is
removed, never anything chosen by name.

Exit codes:
    0: done, also when there was nothing to do (``down`` with no kept cluster, an empty sweep).
    1: it could not be done (an unknown ID, a run still in use, an engine that does not answer,
       something that could not be removed); the message on stderr says what to do.
    2: usage error (argparse's message on stderr).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NoReturn

from .errors import SwarmError
from .ownership import run_root
from .runs import find_run, recorded_runs, table

PROG = "pytest-swarm"
EPILOG = "exit codes: 0 done (also: nothing to do), 1 could not be done (stderr says why), 2 usage error"


def build_parser() -> argparse.ArgumentParser:
    """The ``pytest-swarm`` parser: one subcommand each for ls, down and sweep."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="The Docker Swarm clusters pytest-swarm runs made on this machine: list, remove, sweep.",
        epilog=EPILOG,
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    ls = commands.add_parser(
        "ls",
        help="list kept clusters and recorded runs",
        description="List the kept clusters and recorded runs on this machine: id, provider, age (since "
        "the run that made or last reused it started), whether its pytest process is alive, "
        "whether it is kept, and its project folder when known.",
        epilog=EPILOG,
    )
    ls.add_argument("--rootdir", type=Path, default=Path("."), help="also read this project's kept record")
    down = commands.add_parser(
        "down",
        help="remove the project's kept cluster, or a run's cluster by its id",
        description="Without ID: remove the cluster kept (--swarm-keep, --swarm-reuse) for the project "
        "in --rootdir. With ID: remove the cluster of that run, kept or left behind (ids: "
        f"`{PROG} ls`). A run whose pytest process is still running is refused.",
        epilog=EPILOG,
    )
    down.add_argument("id", nargs="?", metavar="ID", help="a run id as `ls` shows it")
    down.add_argument("--rootdir", type=Path, help="the project folder (default: the current folder)")
    down.set_defaults(usage_error=down.error)
    commands.add_parser(
        "sweep",
        help="remove what dead runs left",
        description="Remove what earlier runs on this machine left (dind containers, UML kernels and "
        "links, machines a run created): runs whose pytest process is gone and whose cluster "
        "was not kept, each by its own record.",
        epilog=EPILOG,
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; returns the exit code (argparse exits with 2 on a usage error)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "ls":
        return list_runs(args.rootdir)
    # Only removing needs the engine's client and the providers (`ls` and `--help` stay quick).
    import docker.errors

    try:
        if args.command == "down":
            return down(args.id, args.rootdir, args.usage_error)
        return sweep()
    except SwarmError as exc:
        return fail(str(exc))
    except docker.errors.DockerException as exc:
        return fail(f"the Docker engine failed: {exc}; check that `docker info` answers, then run it again")


def fail(message: str) -> int:
    """Print ``message`` on stderr; returns exit code 1."""
    print(f"{PROG}: {message}", file=sys.stderr)
    return 1


def list_runs(rootdir: Path) -> int:
    """``ls``: a header and a line per recorded run, or one line saying there is none."""
    runs = recorded_runs([rootdir.resolve()])
    if not runs:
        print(f"no kept clusters and no recorded runs in {run_root()}")
        return 0
    print("\n".join(table(runs)))
    return 0


def down(session_id: str | None, rootdir: Path | None, usage_error: Callable[[str], NoReturn]) -> int:
    """``down``: the project's kept cluster (no id), or the run recorded as ``session_id``."""
    from .lifecycle import down_kept, down_run

    if session_id is None:
        print(down_kept((rootdir or Path(".")).resolve()))
        return 0
    if rootdir is not None:
        usage_error("give either ID or --rootdir, not both")
    if find_run(session_id) is None and Path(session_id).is_dir():
        usage_error(f"{session_id!r} is a folder, not a run id: for a project's cluster use --rootdir DIR")
    print(down_run(session_id))
    return 0


def sweep() -> int:
    """``sweep``: fails (1) when a run whose process is gone is still recorded afterwards."""
    from .lifecycle import sweep_leftovers

    swept = sweep_leftovers(print)
    print(f"swept {len(swept)} run(s)" + (f": {', '.join(swept)}" if swept else ""))
    left = [run.id for run in recorded_runs() if not run.kept and not run.owner_alive]
    if left:
        return fail(
            f"runs whose process is gone are still recorded: {', '.join(left)} (see the lines above); "
            f"fix what they say, then run `{PROG} sweep` again"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
