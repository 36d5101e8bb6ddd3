"""Roles: which of a team's services plays the ui, the database, the node exporter ...

A requirement profile names roles and the names a role goes by; a service plays a role when
it is named so, or when its image's repository is (``reddit/post-py:1.0`` plays ``post`` if
``post-py`` is one of post's names). A team whose names are other still maps them by hand
(ini ``swarm_roles = ui=frontend``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any


def image_name(image: str) -> str:
    """``registry:5000/team/post-py:1.0@sha256:..`` -> ``post-py``."""
    last = image.split("@", 1)[0].rsplit("/", 1)[-1]
    return last.split(":", 1)[0]


def find_roles(
    model: Mapping[str, Any], names: Mapping[str, Sequence[str]], given: Mapping[str, str]
) -> dict[str, list[str]]:
    """role -> the services playing it (sorted; empty when none does).

    Args:
        model: the rendered stack.
        names: role -> the names it goes by (the profile's ``roles:``).
        given: role -> services, comma separated, as the user mapped them (wins).
    """
    services: Mapping[str, Any] = model.get("services") or {}
    found: dict[str, list[str]] = {}
    for role in {*names, *given}:
        if role in given:
            found[role] = sorted(s.strip() for s in given[role].split(",") if s.strip())
            continue
        wanted = {n.lower() for n in (*names.get(role, ()), role)}
        by_name = [s for s in services if s.lower() in wanted]
        by_image = [
            s for s, spec in services.items() if image_name(str(spec.get("image") or "")).lower() in wanted
        ]
        found[role] = sorted(by_name or by_image)  # a service named so wins over a shared image
    return found


def one(roles: Mapping[str, Sequence[str]], role: str) -> str | None:
    """The service playing ``role`` where a check needs one (the first by name), or None."""
    services = roles.get(role) or []
    return services[0] if services else None
