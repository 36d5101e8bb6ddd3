"""Env files as teams name them: ``envs/dev.env``, ``dev.env``, ``.env.dev``, ``.env_DEV`` ...

A pattern is a path relative to the project folder with ``{env}`` where the env's name goes,
in the file's name or a folder's (``{env}/.env``: one folder per env); names match without
regard to case (``.env_DEV`` is the env ``dev``). The first pattern that finds an env wins.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from . import compose

DEFAULT_PATTERNS = ("envs/{env}.env", "{env}.env", ".env.{env}", ".env_{env}", ".env-{env}")
PLACEHOLDER = "{env}"
# What a team keeps beside its envs as a model to copy (``.env.example``): not an env. Such a
# file is still taken when given directly (--swarm-env-file).
TEMPLATE_NAMES = frozenset({"example", "sample", "template", "tmpl", "tpl", "dist", "orig", "bak"})


def check_pattern(pattern: str) -> str:
    """``pattern`` if it has exactly one ``{env}``; else ValueError saying why."""
    if pattern.count(PLACEHOLDER) != 1:
        raise ValueError(
            f"{pattern!r} needs one {PLACEHOLDER} where the env's name goes, e.g. .env_{PLACEHOLDER} "
            f"or {PLACEHOLDER}/.env"
        )
    return pattern


def _matcher(pattern: str) -> tuple[str, re.Pattern[str], str]:
    """(folder to list, what an entry's name must match, the path under a matching entry):
    ``envs/.env_{env}`` -> ("envs", ``.env_(?P<env>...)``, ""); ``{env}/.env`` -> ("", ..., ".env")."""
    parts = pattern.replace("\\", "/").split("/")
    at = next(i for i, part in enumerate(parts) if PLACEHOLDER in part)
    head, _, tail = parts[at].partition(PLACEHOLDER)
    name = re.compile(re.escape(head) + r"(?P<env>[A-Za-z0-9][A-Za-z0-9_.-]*?)" + re.escape(tail), re.I)
    return "/".join(parts[:at]), name, "/".join(parts[at + 1 :])


def find_envs(root: Path, patterns: Sequence[str], exclude: Iterable[Path] = ()) -> dict[str, Path]:
    """Every env the patterns find under ``root``: env name (lower case) -> file.

    ``exclude``: files that are not envs of their own (e.g. what a service's ``env_file:`` reads).
    Templates (``.env.example``, ``dev.env.sample``, see TEMPLATE_NAMES) are not envs either.
    """
    skipped = {p.resolve() for p in exclude}
    found: dict[str, Path] = {}
    for pattern in patterns:
        folder, matcher, below = _matcher(pattern)
        where = root / folder if folder else root
        if not where.is_dir():
            continue
        for entry in sorted(where.iterdir()):
            match = matcher.fullmatch(entry.name)
            path = entry / below if below else entry
            if not match or not path.is_file() or path.resolve() in skipped:
                continue
            env = match.group("env").lower()
            if not TEMPLATE_NAMES.intersection(re.split(r"[._-]", env)):
                found.setdefault(env, path)
    return found


def env_of_file(path: Path, root: Path, patterns: Sequence[str], values: Mapping[str, str]) -> str:
    """The env name of a file given directly: what a pattern reads from its name, else its ``ENV``
    value, else its name without dots and ``env`` (``.env`` -> ``env``)."""
    for env, found in find_envs(root, patterns).items():
        if found.resolve() == path.resolve():
            return env
    if values.get("ENV"):
        return values["ENV"].lower()
    return re.sub(r"[^a-z0-9]+", "-", path.name.lower().replace(".env", "")).strip("-") or "env"


def describe(found: Mapping[str, Path], root: Path) -> str:
    """``dev (envs/dev.env), stage (.env_STAGE)`` for error messages."""
    if not found:
        return "none"
    return ", ".join(f"{env} ({_short(path, root)})" for env, path in sorted(found.items()))


def _short(path: Path, root: Path) -> str:
    try:
        return str(path.relative_to(root))
    except ValueError:
        return str(path)


def shifted_env(source: Path, folder: Path, name: str, shift: int, compose_files: Sequence[Path]) -> Path:
    """A copy of the env file ``source`` whose stack is ``name`` (its ``ENV``), with every
    variable the compose files publish a host port from moved by ``shift``."""
    from .stack import load_env  # stack's reading, python-dotenv's rules

    values = load_env(source)
    for variable in compose.published_port_variables(compose_files):
        if values.get(variable, "").isdigit():
            values[variable] = str(int(values[variable]) + shift)
    values["ENV"] = name
    target = folder / f"{name.lower()}.env"
    target.write_text("".join(f"{key}={_quoted(value)}\n" for key, value in values.items()))
    return target


def _quoted(value: str) -> str:
    """A value as an env file holds it literally: single quotes (no escapes, no ``$``
    expansion), double quotes for one that holds a single quote."""
    return f"'{value}'" if "'" not in value else json.dumps(value, ensure_ascii=False)
