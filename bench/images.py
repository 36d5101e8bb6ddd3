"""Benchmark: building the reddit stack's images, and their sizes.

    python bench/images.py                 # a rebuild with nothing changed, and the sizes
    python bench/images.py --from-nothing  # first untags the base image and the stack's images

--from-nothing removes (untags) only what this project builds under the names the dev env
renders (and debian:bookworm-slim, which it bootstraps), then times the base bootstrap and the
builds separately. Don't run it while a pytest-swarm run builds images.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import docker

from pytest_swarm import images
from pytest_swarm.settings import resolve
from pytest_swarm.stack import StackSource, render, service_images

ROOT = Path(__file__).resolve().parents[1]


def stack_images() -> tuple[dict[str, Any], dict[str, Path], dict[str, Path]]:
    import tomllib

    ini = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["pytest"]["ini_options"]
    settings = resolve({"env": "dev"}, {}, {k.removeprefix("swarm_"): v for k, v in ini.items()}, ROOT)
    source = StackSource("dev", settings.env_file_of("dev"), settings.stacks)
    return render(source), dict(settings.build), dict(settings.offline_images)


def project_images(model: dict[str, Any], build: dict[str, Path]) -> list[str]:
    """What this project builds under the names the dev env renders, its variants included."""
    refs = service_images(model)
    variants = [images.variant_ref(r, v) for s, r in refs.items() if s in build for v in images.VARIANTS]
    return [*refs.values(), *variants]


def untag(client: docker.DockerClient, refs: list[str]) -> None:
    for ref in refs:
        if images.image_exists(client, ref):
            client.images.remove(ref)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--from-nothing", action="store_true")
    from_nothing = parser.parse_args().from_nothing
    client = docker.from_env(timeout=600)
    model, build, offline = stack_images()
    if from_nothing:
        untag(client, [*project_images(model, build), images.BASE_IMAGE])
        started = time.monotonic()
        images.ensure_base_image(client, print)
        print(f"base image bootstrap: {time.monotonic() - started:.1f} s")
    started = time.monotonic()
    plan = images.prepare_stack_images(client, model, build, offline, lambda _m: None)
    took = time.monotonic() - started
    print(f"{'build from nothing (base present)' if from_nothing else 'rebuild, nothing changed'}: "
          f"{took:.1f} s for {len(plan.refs)} images")  # fmt: skip
    layers: dict[str, int] = {}
    print("image sizes (MB, each with its base):")
    for ref in sorted(plan.refs):
        image = client.images.get(ref)
        print(f"  {ref:40s} {image.attrs['Size'] / 1e6:7.1f}")
        for entry in client.api.history(ref):
            if entry["Id"] != "<missing>":
                layers[entry["Id"]] = entry["Size"]
    print(f"all of them together, shared layers counted once: {sum(layers.values()) / 1e6:.1f} MB")


if __name__ == "__main__":
    main()
