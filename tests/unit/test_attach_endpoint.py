"""The attach provider's choice of endpoint (pure logic: no engine is asked) and how an unprobed
capability is reported."""

from __future__ import annotations

from pathlib import Path

import pytest

from pytest_swarm.capabilities import skip_reason
from pytest_swarm.errors import ProvisioningError
from pytest_swarm.providers.engines import endpoint_of


def test_docker_host_without_tls() -> None:
    endpoint = endpoint_of("", {"DOCKER_HOST": "unix:///tmp/m/docker.sock"})
    assert (endpoint.url, endpoint.tls, endpoint.source) == ("unix:///tmp/m/docker.sock", None, "DOCKER_HOST")


def test_no_docker_host_means_the_default_socket_and_says_so() -> None:
    endpoint = endpoint_of("", {})
    assert endpoint.url == "unix:///var/run/docker.sock"
    assert "no DOCKER_HOST" in endpoint.source


def test_tls_from_docker_cert_path(tmp_path: Path) -> None:
    for name in ("ca.pem", "cert.pem", "key.pem"):
        (tmp_path / name).write_text("-")
    environ = {
        "DOCKER_HOST": "tcp://10.0.0.2:2376",
        "DOCKER_TLS_VERIFY": "1",
        "DOCKER_CERT_PATH": str(tmp_path),
    }
    endpoint = endpoint_of("", environ)
    assert endpoint.tls is not None and endpoint.tls.cert == (
        str(tmp_path / "cert.pem"),
        str(tmp_path / "key.pem"),
    )
    assert endpoint.cert_path == str(tmp_path)


def test_tls_asked_but_certificates_missing_says_where(tmp_path: Path) -> None:
    environ = {
        "DOCKER_HOST": "tcp://10.0.0.2:2376",
        "DOCKER_TLS_VERIFY": "1",
        "DOCKER_CERT_PATH": str(tmp_path),
    }
    with pytest.raises(ProvisioningError, match=r"ca\.pem.* is missing; set DOCKER_CERT_PATH"):
        endpoint_of("", environ)


def test_an_unknown_context_is_refused_naming_docker_context_ls() -> None:
    with pytest.raises(ProvisioningError, match=r"--swarm-context=no-such-context-here: .*docker context ls"):
        endpoint_of("no-such-context-here", {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": "/nonexistent"})


def test_skip_reason_tells_unprobed_from_missing() -> None:
    missing = skip_reason("needs_routing_mesh", ["worker-1"])
    assert "node(s) worker-1 have no IPVS" in missing
    unknown = skip_reason("needs_routing_mesh", ["worker-1"], {"worker-1": "its engine and host are unknown"})
    assert unknown == (
        "needs_routing_mesh: IPVS (the ingress routing mesh balances through it) could not be probed "
        "on node(s) worker-1: its engine and host are unknown"
    )
