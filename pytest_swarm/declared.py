"""What a rendered compose service declares under ``deploy:``, with swarm's defaults filled in.

The suites compare these declared values with the service spec swarm applied and with what
the nodes enforce; every duration is in seconds, every size in bytes.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from itertools import pairwise
from typing import Any

_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h)")
_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)i?b?\s*$", re.I)


def parse_duration(value: Any) -> float:
    """``"1m30s"`` -> 90.0; a bare number is seconds (compose writes Go durations)."""
    if isinstance(value, int | float):
        return float(value)
    text = str(value).strip()
    if re.fullmatch(r"\d+(\.\d+)?", text):
        return float(text)
    parts = _DURATION.findall(text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise ValueError(f"{value!r} is not a duration (e.g. 10s, 1m30s, 500ms)")
    return sum(float(number) * _UNITS[unit] for number, unit in parts)


def parse_bytes(value: Any) -> int:
    """``"150M"`` -> 157286400; ``"314572800"`` (how ``docker stack config`` writes it) -> itself."""
    if isinstance(value, int):
        return value
    match = _SIZE.match(str(value))
    if not match:
        raise ValueError(f"{value!r} is not a size (e.g. 150M, 1G, 314572800)")
    number, unit = match.groups()
    return int(float(number) * 1024 ** "bkmgt".index((unit or "b").lower()))


def deploy_section(service: Mapping[str, Any]) -> dict[str, Any]:
    return dict(service.get("deploy") or {})


@dataclass(frozen=True)
class Limits:
    cpus: float | None
    memory: int | None


def limits(service: Mapping[str, Any]) -> Limits:
    raw = ((deploy_section(service).get("resources") or {}).get("limits")) or {}
    cpus = raw.get("cpus")
    memory = raw.get("memory")
    return Limits(
        cpus=None if cpus is None else float(cpus),
        memory=None if memory is None else parse_bytes(memory),
    )


@dataclass(frozen=True)
class RestartPolicy:
    condition: str
    delay: float
    max_attempts: int | None  # None: no limit
    window: float


def restart_problems(
    policy: RestartPolicy, runs: Sequence[tuple[float, float]], stopped: bool, margin: float = 1.0
) -> list[str]:
    """Where a failing task's runs (start, end, in order; seconds) break ``policy``.

    Every restart waits ``delay``. Without a window, a task runs ``1 + max_attempts`` times.
    With one, swarm restarts it after a failure while fewer than ``max_attempts`` restarts
    happened in the ``window`` before that failure (a restart counts from the failure it
    follows), so a task that fails slowly enough restarts forever; ``stopped``: no run came
    after the last one. Times near a window's edge (``margin``) are not judged.
    """
    problems = []
    gaps = [later[0] - earlier[1] for earlier, later in pairwise(runs)]
    short = [round(g, 3) for g in gaps if g < policy.delay]
    if short:
        problems.append(f"restart delay {policy.delay:g} s, yet runs started {short} s after the one before")
    if policy.max_attempts is None:
        return problems
    if policy.window <= 0:
        if stopped and len(runs) != 1 + policy.max_attempts:
            problems.append(
                f"max_attempts {policy.max_attempts} -> {1 + policy.max_attempts} runs expected, "
                f"swarm ran it {len(runs)} times"
            )
        return problems
    restarts = [end for _, end in runs[:-1]]  # restart k follows the end of run k-1
    for index, (_, failed) in enumerate(runs):

        def within(span: float, index: int = index, failed: float = failed) -> int:
            return sum(1 for at in restarts[:index] if at > failed - span)

        if index < len(runs) - 1 and within(policy.window - margin) >= policy.max_attempts:
            problems.append(
                f"restarted after run {index + 1} though {within(policy.window - margin)} restarts fell in "
                f"the {policy.window:g} s window before it (max_attempts {policy.max_attempts})"
            )
        if index == len(runs) - 1 and stopped and within(policy.window + margin) < policy.max_attempts:
            problems.append(
                f"not restarted after run {index + 1} though only {within(policy.window + margin)} restarts "
                f"fell in the {policy.window:g} s window before it (max_attempts {policy.max_attempts})"
            )
    return problems


def restart_policy(service: Mapping[str, Any]) -> RestartPolicy | None:
    """The declared policy, or None when the service declares none (swarm then restarts forever)."""
    raw = deploy_section(service).get("restart_policy")
    if raw is None:
        return None
    attempts = raw.get("max_attempts")
    return RestartPolicy(
        condition=str(raw.get("condition", "any")),
        delay=parse_duration(raw.get("delay", "5s")),  # swarm's default delay
        max_attempts=None if attempts in (None, 0) else int(attempts),
        window=parse_duration(raw.get("window", 0)),
    )


@dataclass(frozen=True)
class UpdateConfig:
    parallelism: int
    delay: float
    failure_action: str
    monitor: float
    max_failure_ratio: float
    order: str

    def crowded(self, starts: list[float]) -> list[tuple[float, float]]:
        """Where new tasks came faster than this config lets them: each (first, last) of
        ``parallelism + 1`` starts less than ``delay`` apart (0.5 s when no delay is declared).

        Swarm updates with ``parallelism`` workers, each starting one task, waiting for it to
        run, then waiting ``delay`` before its next: no window shorter than the delay holds more
        than ``parallelism`` starts, however the workers drift apart. (Grouping starts into
        batches by the gaps between them does not hold when a worker's task starts late.)
        """
        if self.parallelism <= 0:  # every task at once
            return []
        window = self.delay if self.delay > 0 else 0.5
        ordered = sorted(starts)
        p = self.parallelism
        return [
            (ordered[k - p], ordered[k])
            for k in range(p, len(ordered))
            if ordered[k] - ordered[k - p] < window
        ]


def update_config(service: Mapping[str, Any], key: str = "update_config") -> UpdateConfig:
    """``update_config`` (or ``rollback_config``) with the defaults ``docker stack deploy`` applies."""
    raw = deploy_section(service).get(key) or {}
    return UpdateConfig(
        parallelism=int(raw.get("parallelism", 1)),
        delay=parse_duration(raw.get("delay", 0)),
        failure_action=str(raw.get("failure_action", "pause")),
        monitor=parse_duration(raw.get("monitor", "5s")),
        max_failure_ratio=float(raw.get("max_failure_ratio", 0)),
        order=str(raw.get("order", "stop-first")),
    )


DEFAULT_STOP_GRACE = 10.0  # the engine's, when a service declares no stop_grace_period


def stop_grace_period(service: Mapping[str, Any]) -> float:
    """How long a task's container gets to stop before it is killed (``stop_grace_period``)."""
    value = service.get("stop_grace_period")
    return DEFAULT_STOP_GRACE if value is None else parse_duration(value)


def replicas(service: Mapping[str, Any]) -> int | None:
    """Declared replicas of a replicated service (1 when unset); None for a global one."""
    section = deploy_section(service)
    if section.get("mode") == "global":
        return None
    return int(section.get("replicas", 1))


def bind_sources(service: Mapping[str, Any]) -> list[str]:
    """The host paths a rendered service bind-mounts (``docker stack config`` writes each
    ``./x:/y`` as ``type: bind`` with an absolute ``source``)."""
    return [
        str(v["source"])
        for v in service.get("volumes") or []
        if isinstance(v, Mapping) and v.get("type") == "bind" and v.get("source")
    ]


@dataclass(frozen=True)
class Healthcheck:
    """A task's healthcheck timings. The engine runs the first check ``interval`` after the start
    (20.10 has no start_interval), so every new task waits at least that before it counts as up."""

    interval: float
    start_period: float
    retries: int

    def seconds_to_unhealthy(self) -> float:
        """When a check that always fails marks a new task unhealthy: failures inside the start
        period don't count, then ``retries`` failures in a row (lower bound: the check landing on
        the end of the start period counts)."""
        return self.interval * (int(self.start_period // self.interval) + self.retries - 1)


_HEALTHCHECK_DEFAULTS = Healthcheck(interval=30.0, start_period=0.0, retries=3)  # the engine's


def healthcheck(service: Mapping[str, Any], image_config: Mapping[str, Any] | None) -> Healthcheck | None:
    """The compose ``healthcheck:`` over the image's HEALTHCHECK (``image_config``: the image's
    ``Config`` from ``docker image inspect``); None when neither declares one or it is disabled."""
    image = (image_config or {}).get("Healthcheck") or {}
    compose = service.get("healthcheck") or {}
    if compose.get("disable") or (compose.get("test") or image.get("Test") or ["NONE"])[0] == "NONE":
        return None

    def pick(key: str, image_key: str, default: float) -> float:
        if key in compose:
            return parse_duration(compose[key])
        return image[image_key] / 1e9 if image.get(image_key) else default

    return Healthcheck(
        interval=pick("interval", "Interval", _HEALTHCHECK_DEFAULTS.interval),
        start_period=pick("start_period", "StartPeriod", _HEALTHCHECK_DEFAULTS.start_period),
        retries=int(compose.get("retries") or image.get("Retries") or _HEALTHCHECK_DEFAULTS.retries),
    )
