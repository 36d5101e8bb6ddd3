"""Configs and secrets a stack declares ``external``, made on the test cluster from files.

On a team's swarm they were made by hand (``docker secret create site.key ./site.key``); a test
cluster has none, and ``docker stack deploy`` then refuses the stack naming the first one only.
Each one the cluster lacks is created from the file the ini key ``swarm_external_files`` names
for it (``NAME=PATH``), labelled with the run's session (the run removes what it made where the
cluster outlives it); those without a file are all named before the deploy, with the line to add.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import docker
import docker.errors

from .errors import StackError

KINDS = ("configs", "secrets")


def declared(model: Mapping[str, Any]) -> dict[tuple[str, str], list[str]]:
    """(``configs``|``secrets``, its name on the swarm) -> the services using it, for each
    external one the rendered stack declares."""
    found: dict[tuple[str, str], list[str]] = {}
    services: Mapping[str, Any] = model.get("services") or {}
    for kind in KINDS:
        for key, spec in (model.get(kind) or {}).items():
            if not isinstance(spec, dict) or not spec.get("external"):
                continue
            external = spec["external"]
            name = spec.get("name") or (external.get("name") if isinstance(external, dict) else None) or key
            found[(kind, str(name))] = sorted(
                service for service, service_spec in services.items() if key in used(service_spec, kind)
            )
    return found


def used(service: Mapping[str, Any], kind: str) -> set[str]:
    """The configs or secrets (``kind``) a service's spec refers to, by their key in the stack."""
    return {str(r["source"] if isinstance(r, dict) else r) for r in service.get(kind) or []}


def ensure(
    client: docker.DockerClient,
    model: Mapping[str, Any],
    files: Mapping[str, Path],
    labels: Mapping[str, str],
    progress: Callable[[str], None],
) -> None:
    """Create each external config and secret of ``model`` the cluster lacks from its file.

    Raises:
        StackError: naming every one without a file (none given, or not a file).
    """
    missing = []
    for (kind, name), users in sorted(declared(model).items()):
        collection = client.configs if kind == "configs" else client.secrets
        if any(item.name == name for item in collection.list(filters={"name": name})):
            continue  # made by the team on its swarm, or by this run for another stack
        path = files.get(name)
        used_by = ", ".join(users) or "no service"
        if path is None or not path.is_file():
            why = "no file given" if path is None else f"{path} is not a file"
            missing.append(f"  {kind[:-1]} {name} (used by {used_by}): {why}")
            continue
        try:
            collection.create(name=name, data=path.read_bytes(), labels=dict(labels))
        except docker.errors.APIError as exc:
            if exc.status_code != 409:  # 409: another stack of this run made it meanwhile
                raise StackError(f"creating the {kind[:-1]} {name} from {path} failed: {exc}") from exc
        progress(f"{kind[:-1]} {name} created from {path} (external in the stack; used by {used_by})")
    if missing:
        raise StackError(
            "the stack uses configs or secrets made outside it (external: true) that this cluster "
            "lacks; name a file for each in the ini key swarm_external_files (NAME=path/to/file, "
            "one per line; a test value will do):\n" + "\n".join(missing)
        )
