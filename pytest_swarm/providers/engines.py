"""Docker engine clients every provider makes: the local engine, a node's engine by URL (unix,
ssh, or TCP with TLS), and the endpoint DOCKER_HOST or a docker context names.

Shared by the providers (none of them imports another); nothing here brings up a node.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass

import docker
import docker.errors
import docker.tls
import requests

from ..commands import docker_cli, run
from ..errors import CommandError, EngineUnreachable, ProvisioningError

# What an engine throws while it is still starting or restarting.
TRANSIENT = (docker.errors.APIError, requests.exceptions.ConnectionError, ConnectionError, OSError)
# Engine 20.10's API: the oldest this project supports (service status needs it); newer engines
# still speak it. Fixing it lets a client be made before its engine answers.
API_VERSION = "1.41"


def engine_client(
    url: str, tls: docker.tls.TLSConfig | None = None, timeout: int = 120
) -> docker.DockerClient:
    """A client of the engine at ``url`` (unix://, ssh://, or tcp:// with ``tls``); asks nothing yet."""
    if tls is None:
        return docker.DockerClient(base_url=url, version=API_VERSION, timeout=timeout)
    return docker.DockerClient(base_url=url, version=API_VERSION, timeout=timeout, tls=tls)


def local_engine() -> docker.DockerClient:
    """The engine of this machine (DOCKER_HOST or the default socket): images are built there,
    dind nodes run there.

    Raises:
        EngineUnreachable: no engine answers; says how to start one.
    """
    try:
        client = docker.from_env(timeout=120)
        client.ping()
    except (docker.errors.DockerException, *TRANSIENT) as exc:
        raise EngineUnreachable(
            f"no Docker engine answers at {os.environ.get('DOCKER_HOST', 'unix:///var/run/docker.sock')} "
            f"({type(exc).__name__}); start dockerd (e.g. apt-get install docker.io && dockerd &) "
            "or set DOCKER_HOST"
        ) from exc
    return client


@dataclass(frozen=True)
class Endpoint:
    """Where an engine's API answers, and how to talk to it."""

    url: str
    tls: docker.tls.TLSConfig | None
    source: str  # "DOCKER_HOST", "context NAME", "the default socket"
    cert_path: str = ""  # the folder of the TLS files, for docker CLI calls


def endpoint_of(context: str, environ: Mapping[str, str]) -> Endpoint:
    """The endpoint ``context`` (or DOCKER_CONTEXT) names when given, else DOCKER_HOST's."""
    context = context or environ.get("DOCKER_CONTEXT", "")
    if context and context != "default":
        return context_endpoint(context, environ)
    host = environ.get("DOCKER_HOST", "")
    if not host:
        return Endpoint("unix:///var/run/docker.sock", None, "the default socket (no DOCKER_HOST)")
    tls, cert_path = None, ""
    if environ.get("DOCKER_TLS_VERIFY", "") not in ("", "0") or host.startswith("https://"):
        cert_path = environ.get("DOCKER_CERT_PATH") or os.path.expanduser("~/.docker")
        tls = tls_config(cert_path, verify=True)
    return Endpoint(host.replace("https://", "tcp://", 1), tls, "DOCKER_HOST", cert_path)


def tls_config(cert_path: str, verify: bool) -> docker.tls.TLSConfig:
    """The client TLS of the ca.pem, cert.pem and key.pem in ``cert_path`` (docker-machine's layout)."""
    files = {name: os.path.join(cert_path, name) for name in ("ca.pem", "cert.pem", "key.pem")}
    missing = [path for path in files.values() if not os.path.isfile(path)]
    if missing:
        raise ProvisioningError(
            f"TLS is asked for but {', '.join(missing)} is missing; set DOCKER_CERT_PATH to the folder "
            "holding ca.pem, cert.pem and key.pem (docker-machine env prints it)"
        )
    return docker.tls.TLSConfig(
        client_cert=(files["cert.pem"], files["key.pem"]),
        ca_cert=files["ca.pem"] if verify else None,
        verify=files["ca.pem"] if verify else False,
    )


def context_endpoint(name: str, environ: Mapping[str, str]) -> Endpoint:
    """``docker context inspect NAME``: its docker endpoint and TLS material."""
    env = {k: v for k, v in environ.items() if k not in ("DOCKER_HOST", "DOCKER_CONTEXT")}
    try:
        found = json.loads(run([docker_cli(), "context", "inspect", name], timeout=30, env=env))
    except CommandError as exc:
        raise ProvisioningError(
            f"--swarm-context={name}: {exc}; list the contexts with `docker context ls`"
        ) from exc
    try:
        docker_endpoint = found[0]["Endpoints"]["docker"]
        url = str(docker_endpoint["Host"])
    except (LookupError, TypeError) as exc:
        raise ProvisioningError(
            f"--swarm-context={name}: `docker context inspect` shows no docker endpoint"
        ) from exc
    tls, cert_path = None, ""
    tls_path = str((found[0].get("Storage") or {}).get("TLSPath") or "")
    if tls_path and os.path.isdir(os.path.join(tls_path, "docker")):
        cert_path = os.path.join(tls_path, "docker")
        tls = tls_config(cert_path, verify=not docker_endpoint.get("SkipTLSVerify"))
    return Endpoint(url, tls, f"context {name}", cert_path)
