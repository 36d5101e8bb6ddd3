"""The compose files as a team wrote them: parsed, checked, and read where rendering loses what
matters (which values come from a variable, where relative paths point).

``docker stack config`` renders the files with the env's variables (stack.py); docker resolves
relative paths against the folder of the first compose file, but leaves ``env_file:`` and
``build.context`` relative in what it prints, so a rendered model written elsewhere (the suites'
copies of a service) would point nowhere: ``absolute_paths`` fixes that.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .errors import StackError


def load(path: Path) -> dict[str, Any]:
    """One compose file, parsed; an error names the file and the line."""
    if not path.is_file():
        raise StackError(f"compose file {path} does not exist (check --swarm-stacks)")
    try:
        document = yaml.safe_load(path.read_text())
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        raise StackError(f"{where}: not valid YAML: {exc.problem or exc}") from exc
    if not isinstance(document, dict) or not isinstance(document.get("services"), dict):
        raise StackError(f"{path}: not a compose file (no `services:` mapping at the top)")
    return document


def check(files: Sequence[Path]) -> None:
    """Each file exists and parses as a compose file."""
    for path in files:
        load(path)


def _environment(value: Any) -> dict[str, str | None]:
    """``environment:`` as a mapping; a bare ``KEY`` (list form) or ``KEY:`` maps to None: its
    value comes from the environment of the deploy."""
    if isinstance(value, Mapping):
        return {str(k): None if v is None else str(v) for k, v in value.items()}
    result: dict[str, str | None] = {}
    for item in value or []:
        key, eq, rest = str(item).partition("=")
        result[key] = rest if eq else None
    return result


def _list(value: Any) -> list[Any]:
    return [value] if isinstance(value, str | Mapping) else list(value or [])


def raw_services(files: Sequence[Path]) -> dict[str, dict[str, Any]]:
    """Each service as written, variables unexpanded, the files merged in order: environment
    by key, ports and env files added up, any other key from the last file that sets it."""
    merged: dict[str, dict[str, Any]] = {}
    for path in files:
        for name, spec in (load(path).get("services") or {}).items():
            into = merged.setdefault(str(name), {"environment": {}, "ports": [], "env_file": []})
            for key, value in (spec or {}).items():
                if key == "environment":
                    into["environment"].update(_environment(value))
                elif key in ("ports", "env_file"):
                    into[key] += _list(value)
                else:
                    into[key] = value
    return merged


def uses_variable(text: Any) -> bool:
    """Whether a value as written takes (part of) its value from a variable: ``${UI_PORT}``."""
    return "$" in str(text).replace("$$", "")


def host_port(port: Any) -> str | None:
    """The host side of a ``ports:`` entry as written, or None when it publishes no fixed one
    (``"9292"`` alone: swarm picks a free port)."""
    if isinstance(port, Mapping):
        published = port.get("published")
        return None if published in (None, "") else str(published)
    parts, depth, current = [], 0, ""
    for char in str(port).split("/", 1)[0]:  # split on colons outside ${...}
        depth += {"{": 1, "}": -1}.get(char, 0)
        if char == ":" and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += char
    parts.append(current)
    return parts[-2] if len(parts) >= 2 and parts[-2] else None


_REFERENCE = re.compile(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)")


def published_port_variables(files: Sequence[Path]) -> set[str]:
    """The variables the files take published host ports from (``"${UI_PORT}:9292"``)."""
    found = set()
    for spec in raw_services(files).values():
        for port in spec.get("ports") or []:
            found |= set(_REFERENCE.findall(host_port(port) or ""))
    return found


def base_dir(files: Sequence[Path]) -> Path:
    """Where docker resolves the stack's relative paths: the first compose file's folder."""
    return files[0].parent if files else Path.cwd()


def absolute_paths(model: dict[str, Any], base: Path) -> dict[str, Any]:
    """``env_file:`` entries and ``build.context`` of a rendered model, made absolute (in place)."""
    for spec in (model.get("services") or {}).values():
        if spec.get("env_file"):
            spec["env_file"] = [str((base / str(p)).resolve()) for p in _list(spec["env_file"])]
        build = spec.get("build")
        if isinstance(build, str):
            spec["build"] = {"context": build}
        if isinstance(spec.get("build"), Mapping):
            context = str(spec["build"].get("context") or ".")
            if "://" not in context:  # a git or URL context stays as it is
                spec["build"]["context"] = str((base / context).resolve())
    return model


def referenced_env_files(files: Sequence[Path]) -> list[Path]:
    """Files the services read with ``env_file:``: settings of a service, not envs of their own."""
    base = base_dir(files)
    found = []
    for path in files:
        try:
            document = load(path)
        except StackError:
            continue  # rendering names a broken file, with its line
        for spec in (document.get("services") or {}).values():
            for entry in _list((spec or {}).get("env_file")):
                name = entry.get("path") if isinstance(entry, Mapping) else entry
                if isinstance(name, str) and not uses_variable(name):
                    found.append(base / name)
    return found


@dataclass(frozen=True)
class Build:
    """A service's ``build:`` section, as ``docker compose build`` would run it."""

    context: Path
    dockerfile: str = "Dockerfile"
    args: Mapping[str, str] = field(default_factory=dict)
    target: str | None = None


def builds(model: Mapping[str, Any]) -> dict[str, Build]:
    """service -> its build, from a rendered model whose paths ``absolute_paths`` made absolute."""
    found = {}
    for name, spec in (model.get("services") or {}).items():
        build = spec.get("build")
        if not isinstance(build, Mapping) or "://" in str(build.get("context", "")):
            continue
        args = build.get("args") or {}
        found[str(name)] = Build(
            context=Path(str(build.get("context"))),
            dockerfile=str(build.get("dockerfile") or "Dockerfile"),
            args={str(k): "" if v is None else str(v) for k, v in _environment(args).items()},
            target=None if build.get("target") is None else str(build["target"]),
        )
    return found
