"""External commands: argument lists, a timeout on every call, stderr carried into the error."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Mapping, Sequence

from .errors import CommandError


def docker_cli() -> str:
    path = shutil.which("docker")
    if path is None:
        raise CommandError("the docker CLI is not on PATH: install a docker client >= 23")
    return path


def run(
    argv: Sequence[str],
    *,
    timeout: float,
    env: Mapping[str, str] | None = None,
    input: str | None = None,
) -> str:
    """Run ``argv``; return stdout. Raises CommandError with the command and its stderr."""
    try:
        result = subprocess.run(
            list(argv),
            capture_output=True,
            text=True,
            timeout=timeout,
            env=None if env is None else dict(env),
            input=input,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise CommandError(f"`{' '.join(argv)}` did not finish within {timeout:g} s") from exc
    if result.returncode != 0:
        raise CommandError(
            f"`{' '.join(argv)}` exited {result.returncode}: {result.stderr.strip() or result.stdout.strip()}"
        )
    return result.stdout


# Engines behind TLS (docker-machine's tcp://...:2376, a TLS context): host URL -> the folder of
# its ca.pem, cert.pem and key.pem, so CLI calls to that host verify it as the SDK clients do.
TLS_CERT_PATHS: dict[str, str] = {}


def run_docker(
    args: Sequence[str],
    *,
    host: str | None = None,
    timeout: float = 120,
    env: Mapping[str, str] | None = None,
) -> str:
    """Run the docker CLI against ``host`` (e.g. ``unix:///.../docker.sock``) or the default;
    returns its stdout, raises CommandError with its stderr.

    Example::

        run_docker(["service", "scale", "--detach", "DEV_ui=4"], host=swarm.manager_url, timeout=60)
    """
    full_env = dict(os.environ if env is None else env)
    if host is not None:
        full_env["DOCKER_HOST"] = host
        full_env.pop("DOCKER_CONTEXT", None)
        if host in TLS_CERT_PATHS:
            full_env.update(DOCKER_TLS_VERIFY="1", DOCKER_CERT_PATH=TLS_CERT_PATHS[host])
    return run([docker_cli(), *args], timeout=timeout, env=full_env)
