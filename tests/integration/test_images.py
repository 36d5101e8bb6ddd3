"""Image preparation on the real engine: failures name the service and show the build's end."""

from __future__ import annotations

from pathlib import Path

import docker
import pytest

from pytest_swarm.errors import ImageBuildError
from pytest_swarm.images import prepare_images


def test_a_failing_build_names_the_service_and_its_last_lines(
    engine: docker.DockerClient, tmp_path: Path
) -> None:
    (tmp_path / "Dockerfile").write_text("FROM debian:bookworm-slim\nRUN echo about to fail && exit 7\n")
    with pytest.raises(ImageBuildError) as info:
        prepare_images(engine, {"ui": "pytest-swarm-test/failing:1.0"}, {"ui": tmp_path}, {})
    message = str(info.value)
    assert "building the image of ui from" in message
    assert "about to fail" in message and "returned a non-zero code: 7" in message


def test_every_image_nobody_can_build_or_pull_is_named_at_once(engine: docker.DockerClient) -> None:
    with pytest.raises(ImageBuildError) as info:
        prepare_images(engine, {"api": "nowhere/to-be-found:1.0", "db": "nowhere/db"}, {}, {})
    message = str(info.value)
    assert "swarm_build" in message
    assert "  api: nowhere/to-be-found:1.0\n  db: nowhere/db" in message
