"""The base image's bootstrap and the grouping of builds, as commands and files (no engine)."""

from pathlib import Path

import pytest

from pytest_swarm import images
from pytest_swarm.errors import ImageBuildError
from pytest_swarm.images import bootstrap_command, debian_mirror


def test_debian_mirror_from_deb822_and_one_line(tmp_path: Path) -> None:
    (tmp_path / "sources.list.d").mkdir()
    (tmp_path / "sources.list.d" / "debian.sources").write_text(
        "Types: deb\nURIs: http://mirror.example/debian/\nSuites: bookworm\n"
    )
    assert debian_mirror(tmp_path) == "http://mirror.example/debian"
    (tmp_path / "sources.list").write_text("deb [arch=amd64] http://other.example/debian bookworm main\n")
    assert debian_mirror(tmp_path) == "http://other.example/debian"


def test_the_bootstrap_prefers_mmdebstrap_and_unpacks_no_docs(monkeypatch: pytest.MonkeyPatch) -> None:
    installed = {"mmdebstrap", "debootstrap"}
    monkeypatch.setattr(images.shutil, "which", lambda name: name if name in installed else None)
    command = bootstrap_command(Path("/tmp/rootfs"), "http://mirror.example/debian")
    assert command[0] == "mmdebstrap"
    assert command[-3:] == ["bookworm", "/tmp/rootfs", "http://mirror.example/debian"]
    assert "--dpkgopt=path-exclude /usr/share/man/*" in command
    if images.MERGED_USR_HOOK.is_dir():  # mmdebstrap installed here: /usr merged without perl
        assert f"--hook-dir={images.MERGED_USR_HOOK}" in command
    installed.discard("mmdebstrap")
    assert bootstrap_command(Path("/r"), "http://m/debian") == [
        "debootstrap", "--variant=minbase", "bookworm", "/r", "http://m/debian",
    ]  # fmt: skip
    installed.clear()
    with pytest.raises(ImageBuildError, match="apt-get install mmdebstrap"):
        bootstrap_command(Path("/r"), "http://m/debian")


def test_recipes_of_a_kind_are_grouped_to_build_one_after_another(tmp_path: Path) -> None:
    python = "FROM debian:bookworm-slim\nRUN apt-get update \\\n && apt-get install python3\nCOPY {0}.py /\n"
    recipes = {}
    for service, text in {
        "comment": python.format("comment"),
        "node-exporter": "# packages\nFROM debian:bookworm-slim AS pkg\nRUN apt-get install -y exporter\n",
        "post": python.format("post"),
        "ui": "# the same steps, spaced otherwise\n" + python.format("ui").replace(" && ", "    &&  "),
        "web": "FROM busybox\nCOPY index.html /www/\n",
        "gone": None,
    }.items():
        (tmp_path / service).mkdir()
        if text is not None:
            (tmp_path / service / "Dockerfile").write_text(text)
        recipes[service] = images.compose.Build(context=tmp_path / service)
    assert images.recipe_kinds(recipes) == [["comment", "post", "ui"], ["node-exporter"], ["web"], ["gone"]]
