"""The attach provider's choice of endpoint (pure logic: no engine is asked) and how an unprobed
capability is reported."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from pytest_swarm.capabilities import skip_reason
from pytest_swarm.errors import ProvisioningError
from pytest_swarm.providers.engines import endpoint_of

PEMS = ("ca.pem", "cert.pem", "key.pem")


def write_pems(folder: Path, names: tuple[str, ...] = PEMS) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        (folder / name).write_text("-")  # the SDK checks the files exist, not what they hold


def write_context(config: Path, name: str, endpoints: object, *, tls: tuple[str, ...] = ()) -> None:
    """A context as `docker context create` writes it: contexts/meta/<sha256 of name>/meta.json,
    its TLS files in contexts/tls/<sha256 of name>/docker/."""
    folder = hashlib.sha256(name.encode()).hexdigest()
    meta = config / "contexts" / "meta" / folder
    meta.mkdir(parents=True)
    (meta / "meta.json").write_text(json.dumps({"Name": name, "Metadata": {}, "Endpoints": endpoints}))
    if tls:
        write_pems(config / "contexts" / "tls" / folder / "docker", tls)


@pytest.fixture
def docker_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty docker config folder (with the config.json the SDK needs to find contexts)."""
    config = tmp_path / "docker-config"
    config.mkdir()
    (config / "config.json").write_text("{}")
    monkeypatch.setenv("DOCKER_CONFIG", str(config))
    return config


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


def test_tls_verify_reads_as_the_docker_cli_does(tmp_path: Path) -> None:
    write_pems(tmp_path)
    environ = {
        "DOCKER_HOST": "tcp://10.0.0.2:2376",
        "DOCKER_TLS_VERIFY": "1",
        "DOCKER_CERT_PATH": str(tmp_path),
    }
    endpoint = endpoint_of("", environ)
    assert (
        endpoint.tls is not None and endpoint.tls.verify and endpoint.tls.ca_cert == str(tmp_path / "ca.pem")
    )


def test_cert_path_alone_gives_the_client_certificate_without_verifying(tmp_path: Path) -> None:
    write_pems(tmp_path)
    endpoint = endpoint_of("", {"DOCKER_HOST": "tcp://10.0.0.2:2376", "DOCKER_CERT_PATH": str(tmp_path)})
    assert endpoint.tls is not None and not endpoint.tls.verify
    assert endpoint.tls.cert == (str(tmp_path / "cert.pem"), str(tmp_path / "key.pem"))


def test_an_https_docker_host_asks_for_tls_and_the_cli_gets_tcp(tmp_path: Path) -> None:
    write_pems(tmp_path)
    endpoint = endpoint_of("", {"DOCKER_HOST": "https://10.0.0.2:2376", "DOCKER_CERT_PATH": str(tmp_path)})
    assert endpoint.url == "tcp://10.0.0.2:2376"
    assert endpoint.tls is not None and endpoint.tls.verify


def test_a_context_as_the_cli_writes_it(docker_config: Path) -> None:
    write_context(docker_config, "lab", {"docker": {"Host": "ssh://me@lab", "SkipTLSVerify": False}})
    endpoint = endpoint_of("lab", {"DOCKER_HOST": "unix:///ignored.sock"})
    assert (endpoint.url, endpoint.tls, endpoint.source, endpoint.cert_path) == (
        "ssh://me@lab",
        None,
        "context lab",
        "",
    )


def test_docker_context_in_the_environment_names_the_context(docker_config: Path) -> None:
    write_context(docker_config, "lab", {"docker": {"Host": "tcp://10.0.0.9:2375", "SkipTLSVerify": False}})
    assert endpoint_of("", {"DOCKER_CONTEXT": "lab"}).url == "tcp://10.0.0.9:2375"
    assert (
        endpoint_of("", {"DOCKER_CONTEXT": "default", "DOCKER_HOST": "unix:///x.sock"}).source
        == "DOCKER_HOST"
    )


def test_a_context_with_tls_verifies_unless_told_to_skip(docker_config: Path) -> None:
    endpoint = {"Host": "tcp://10.0.0.9:2376", "SkipTLSVerify": False}
    write_context(docker_config, "secure", {"docker": endpoint}, tls=PEMS)
    write_context(docker_config, "lax", {"docker": {**endpoint, "SkipTLSVerify": True}}, tls=PEMS)
    secure = endpoint_of("secure", {})
    folder = docker_config / "contexts" / "tls" / hashlib.sha256(b"secure").hexdigest() / "docker"
    assert secure.tls is not None and secure.tls.verify and secure.tls.ca_cert == str(folder / "ca.pem")
    assert secure.cert_path == str(folder)  # where docker CLI calls find the same files
    lax = endpoint_of("lax", {})
    assert lax.tls is not None and not lax.tls.verify and lax.tls.cert is not None


def test_a_context_with_part_of_its_tls_files_is_refused(docker_config: Path) -> None:
    write_context(docker_config, "half", {"docker": {"Host": "tcp://10.0.0.9:2376"}}, tls=("ca.pem",))
    with pytest.raises(ProvisioningError, match=r"--swarm-context=half: its TLS files in .* are incomplete"):
        endpoint_of("half", {})


def test_an_unknown_context_is_refused_naming_docker_context_ls(docker_config: Path) -> None:
    with pytest.raises(ProvisioningError) as caught:
        endpoint_of("no-such-context-here", {})
    message = str(caught.value)
    assert message.startswith(f"--swarm-context=no-such-context-here: no such context in {docker_config};")
    assert "`docker context ls`, or set DOCKER_HOST instead" in message
    assert "config.json" not in message  # there is one: no hint about it


def test_a_context_unseen_for_want_of_config_json_says_so(docker_config: Path) -> None:
    (docker_config / "config.json").unlink()
    write_context(docker_config, "lab", {"docker": {"Host": "tcp://10.0.0.9:2375"}})
    with pytest.raises(ProvisioningError, match=rf"create {docker_config}/config\.json holding {{}}"):
        endpoint_of("lab", {})


def test_a_context_without_a_docker_endpoint_is_refused(docker_config: Path) -> None:
    write_context(docker_config, "kube", {"kubernetes": {"Host": "https://k8s:6443"}})
    with pytest.raises(ProvisioningError, match=r"--swarm-context=kube: the context has no docker endpoint"):
        endpoint_of("kube", {})


def test_a_corrupted_context_record_is_refused(docker_config: Path) -> None:
    write_context(docker_config, "broken", {})
    meta = next((docker_config / "contexts" / "meta").glob("*/meta.json"))
    meta.write_text("{not json")
    with pytest.raises(ProvisioningError, match=r"--swarm-context=broken: its record can't be read"):
        endpoint_of("broken", {})


def test_skip_reason_tells_unprobed_from_missing() -> None:
    missing = skip_reason("needs_routing_mesh", ["worker-1"])
    assert "node(s) worker-1 have no IPVS" in missing
    unknown = skip_reason("needs_routing_mesh", ["worker-1"], {"worker-1": "its engine and host are unknown"})
    assert unknown == (
        "needs_routing_mesh: IPVS (the ingress routing mesh balances through it) could not be probed "
        "on node(s) worker-1: its engine and host are unknown"
    )
