"""Images without a registry: the Debian base image, builds of source contexts, and wheels.

Every image the project builds starts ``FROM debian:bookworm-slim``. Where that can't be pulled
it is bootstrapped once from the Debian mirror apt already uses (mmdebstrap or debootstrap) and
kept in the local engine. A build context may carry ``wheels.txt`` (pip requirements): the
wheels are downloaded on the host into ``<context>/wheels/`` because containers can't reach
the package index over HTTPS, and the Dockerfile installs them with no network.
"""

from __future__ import annotations

import fcntl
import hashlib
import io
import platform
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable, Collection, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import docker
import docker.errors

from . import compose
from .commands import run_docker
from .errors import ImageBuildError

BASE_IMAGE = "debian:bookworm-slim"
BUILD_HEARTBEAT = 10.0  # seconds between two lines about one build
BUILDS_AT_ONCE = 2  # recipes of different kinds built side by side (bench/README.md)
BASE_SUITE = "bookworm"
BOOTSTRAP_LABEL = "io.pytest-swarm.bootstrap"
MERGED_USR_HOOK = Path("/usr/share/mmdebstrap/hooks/merged-usr")
LOCK_DIR = Path(tempfile.gettempdir()) / "pytest-swarm-locks"
# Like the official slim image: no docs, man pages or translations, in the base and in every
# layer built on it (the dpkg filter stays in the image).
_DPKG_EXCLUDES = """\
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
path-exclude /usr/share/locale/*
path-include /usr/share/locale/locale.alias
"""

Progress = Callable[[str], None]


def _quiet(_: str) -> None:
    return None


@contextmanager
def file_lock(name: str) -> Iterator[None]:
    """Serialise work that several pytest processes could start at once (e.g. under xdist)."""
    LOCK_DIR.mkdir(parents=True, exist_ok=True)
    with open(LOCK_DIR / f"{name}.lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def image_exists(client: docker.DockerClient, ref: str) -> bool:
    try:
        client.images.get(ref)
    except docker.errors.ImageNotFound:
        return False
    return True


def debian_mirror(sources_dir: Path = Path("/etc/apt")) -> str:
    """The Debian mirror apt on this machine is configured with (deb822 or one-line format)."""
    files = [sources_dir / "sources.list", *sorted((sources_dir / "sources.list.d").glob("*"))]
    for file in files:
        if not file.is_file() or file.suffix not in (".list", ".sources"):
            continue
        text = file.read_text(errors="replace")
        for match in re.finditer(r"^(?:deb\s+(?:\[[^\]]*\]\s+)?|URIs:\s*)(\S+)", text, re.M):
            uri = match.group(1).rstrip("/")
            if uri.endswith("/debian"):
                return uri
    raise ImageBuildError(
        f"no Debian mirror found in {sources_dir}/sources.list*; "
        f"configure apt, or load a {BASE_IMAGE} image into the engine (docker load)"
    )


def ensure_base_image(client: docker.DockerClient, progress: Progress = _quiet) -> None:
    """Make ``debian:bookworm-slim`` present: pulled if possible, else bootstrapped, once."""
    with file_lock("base-image"):
        if image_exists(client, BASE_IMAGE):
            return
        try:
            client.images.pull(BASE_IMAGE)
            progress(f"pulled {BASE_IMAGE}")
            return
        except docker.errors.APIError:
            pass  # no registry here: build it from Debian's packages instead
        progress(f"{BASE_IMAGE} can't be pulled: bootstrapping it from Debian packages (~40 s)")
        bootstrap_base_image(client)
        progress(f"bootstrapped {BASE_IMAGE}")


def bootstrap_command(rootfs: Path, mirror: str) -> list[str]:
    """The command that bootstraps Debian into ``rootfs``: mmdebstrap where installed (one apt
    run, the slim image's dpkg filter applied while unpacking: half the time on 2 cores,
    bench/README.md), else debootstrap."""
    if shutil.which("mmdebstrap"):
        excludes = [f"--dpkgopt={line}" for line in _DPKG_EXCLUDES.splitlines()]
        # /usr merged by its hook, as debootstrap does, not by the usrmerge package: that one
        # brings perl along (46 MB more in every image)
        hook = [f"--hook-dir={MERGED_USR_HOOK}"] if MERGED_USR_HOOK.is_dir() else []
        command = ["mmdebstrap", "--variant=minbase", "--quiet", *hook, *excludes]
        return [*command, BASE_SUITE, str(rootfs), mirror]
    if shutil.which("debootstrap"):
        return ["debootstrap", "--variant=minbase", BASE_SUITE, str(rootfs), mirror]
    raise ImageBuildError(
        f"{BASE_IMAGE} can't be pulled and neither mmdebstrap nor debootstrap is installed: "
        "apt-get install mmdebstrap (or debootstrap, or docker load a base image)"
    )


def bootstrap_base_image(client: docker.DockerClient, mirror: str | None = None) -> None:
    mirror = mirror or debian_mirror()
    with tempfile.TemporaryDirectory(prefix="pytest-swarm-rootfs-") as tmp:
        rootfs = Path(tmp) / "rootfs"
        command = bootstrap_command(rootfs, mirror)
        result = subprocess.run(command, capture_output=True, text=True, timeout=900, check=False)
        if result.returncode != 0:
            tail = "\n".join((result.stdout + result.stderr).splitlines()[-15:])
            raise ImageBuildError(f"{command[0]} {BASE_SUITE} from {mirror} failed:\n{tail}")
        _slim(rootfs)
        archive = io.BytesIO()
        with tarfile.open(fileobj=archive, mode="w") as tar:
            tar.add(str(rootfs), arcname=".")
        archive.seek(0)
        repo, tag = BASE_IMAGE.split(":")
        client.api.import_image_from_data(
            archive.getvalue(),
            repository=repo,
            tag=tag,
            changes=['CMD ["bash"]', f"LABEL {BOOTSTRAP_LABEL}={command[0]}"],
        )


def _slim(rootfs: Path) -> None:
    for pattern in ("var/cache/apt/archives/*.deb", "var/lib/apt/lists/*"):
        for path in rootfs.glob(pattern):
            if path.is_file():
                path.unlink()
    for folder in ("usr/share/doc", "usr/share/man", "usr/share/info", "usr/share/locale"):
        target = rootfs / folder
        if target.is_dir():
            shutil.rmtree(target)
            target.mkdir()
    (rootfs / "etc/dpkg/dpkg.cfg.d/excludes").write_text(_DPKG_EXCLUDES)
    # Keep apt from keeping downloaded packages in every image layer.
    (rootfs / "etc/apt/apt.conf.d/docker-clean").write_text(
        'DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb || true"; };\n'
        'Dir::Cache::pkgcache ""; Dir::Cache::srcpkgcache "";\n'
    )


def fetch_wheels(context: Path, progress: Progress = _quiet) -> None:
    """Download the wheels ``<context>/wheels.txt`` asks for into ``<context>/wheels/`` (cached)."""
    requirements = context / "wheels.txt"
    if not requirements.is_file():
        return
    target = context / "wheels"
    stamp = target / ".requirements.sha256"
    digest = hashlib.sha256(requirements.read_bytes()).hexdigest()
    if stamp.is_file() and stamp.read_text() == digest:
        return
    progress(f"downloading wheels for {context.name} ({requirements})")
    if target.exists():
        shutil.rmtree(target)
    target.mkdir()
    machine = platform.machine()
    command = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--quiet",
        "--disable-pip-version-check",
        "--dest",
        str(target),
        "--only-binary=:all:",
        "--implementation",
        "cp",
        "--python-version",
        "3.11",
        "--abi",
        "cp311",
        "--abi",
        "abi3",
        "--abi",
        "none",
        "--platform",
        f"manylinux2014_{machine}",
        "--platform",
        f"manylinux_2_28_{machine}",
        "--platform",
        "any",
        "-r",
        str(requirements),
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, check=False)
    if result.returncode != 0:
        raise ImageBuildError(
            f"pip download for {requirements} failed (the image needs these wheels):\n"
            + "\n".join(result.stderr.splitlines()[-10:])
        )
    stamp.write_text(digest)


def build_image(
    client: docker.DockerClient,
    context: Path,
    tags: list[str],
    *,
    dockerfile: str = "Dockerfile",
    target: str | None = None,
    buildargs: Mapping[str, str] | None = None,
    labels: Mapping[str, str] | None = None,
    what: str = "",
    progress: Progress = _quiet,
) -> str:
    """Build ``context`` (its ``dockerfile``, up to ``target``) under ``tags``; returns the image id.

    Raises:
        ImageBuildError: naming ``what`` (e.g. the service) and the build's last lines.
    """
    name = what or context.name
    recipe = context / dockerfile
    if not recipe.is_file():
        raise ImageBuildError(f"{name}: no {dockerfile} in build context {context}")
    if re.search(rf"^\s*FROM\s+{re.escape(BASE_IMAGE)}\b", recipe.read_text(), re.M | re.I):
        ensure_base_image(client, progress)
    fetch_wheels(context, progress)
    before = client.images.get(tags[0]).id if image_exists(client, tags[0]) else None
    lines: list[str] = []
    image_id = ""
    started = last_said = time.monotonic()
    step = ""
    try:
        stream: Iterator[dict[str, Any]] = client.api.build(
            path=str(context),
            dockerfile=dockerfile,
            target=target,
            tag=tags[0],
            buildargs=dict(buildargs or {}),
            labels=dict(labels or {}),
            rm=True,
            forcerm=True,
            decode=True,
        )
        for chunk in stream:
            if "stream" in chunk:
                lines.extend(chunk["stream"].rstrip("\n").splitlines())
                step = next((ln for ln in reversed(lines) if ln.startswith("Step ")), step)
            if step and time.monotonic() - last_said >= BUILD_HEARTBEAT:  # a long build is not silent
                last_said = time.monotonic()
                progress(f"building {name}: {step[:100]} ({last_said - started:.0f} s)")
            if "error" in chunk:
                lines.append(chunk["error"].strip())
                raise ImageBuildError(
                    f"building the image of {name} from {context} failed; last lines:\n"
                    + "\n".join(lines[-15:])
                )
            if "aux" in chunk and "ID" in chunk["aux"]:
                image_id = chunk["aux"]["ID"]
    except docker.errors.APIError as exc:
        raise ImageBuildError(f"building the image of {name} from {context} failed: {exc}") from exc
    image = client.images.get(image_id or tags[0])
    for ref in tags[1:]:
        repo, _, tag = ref.rpartition(":")
        image.tag(repo, tag)
    if image.id != before:  # an unchanged recipe rebuilds from cache: nothing worth saying
        progress(f"built {', '.join(tags)} from {context}")
    return str(image.id)


def recipe_digest(folder: Path) -> str:
    """A short digest of every file in ``folder``: the tag of an image built from it."""
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        digest.update(path.relative_to(folder).as_posix().encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:12]


def save_images(refs: list[str], dest: Path) -> None:
    """``docker save`` of ``refs`` from the local engine into one tar (shared layers once)."""
    run_docker(["save", "-o", str(dest), *refs], timeout=600)


STANDIN_LABEL = "io.pytest-swarm.standin"


@dataclass
class ImagePlan:
    """The images a rendered stack needs, made present on the local engine."""

    refs: list[str] = field(default_factory=list)  # to put on every node
    standins: dict[str, str] = field(default_factory=dict)  # service -> image


def prepare_stack_images(
    client: docker.DockerClient,
    model: Mapping[str, Any],
    build: Mapping[str, Path],
    offline: Mapping[str, Path],
    progress: Progress = _quiet,
) -> ImagePlan:
    """``prepare_images`` for a rendered stack: its images, its ``build:`` sections, and the
    update versions of the services that declare an update_config."""
    services: Mapping[str, Any] = model.get("services") or {}
    return prepare_images(
        client,
        {name: str(spec["image"]) for name, spec in services.items() if spec.get("image")},
        build,
        offline,
        progress,
        builds=compose.builds(model),
        updated=[name for name, spec in services.items() if "update_config" in (spec.get("deploy") or {})],
    )


def prepare_images(
    client: docker.DockerClient,
    service_images: Mapping[str, str],
    build: Mapping[str, Path],
    offline: Mapping[str, Path],
    progress: Progress = _quiet,
    *,
    builds: Mapping[str, compose.Build] | None = None,
    updated: Collection[str] = (),
) -> ImagePlan:
    """Build, pull or find every image the stack's services use, under the rendered names.

    ``build`` contexts (ini swarm_build) are always built, then ``builds`` (the compose files'
    ``build:`` sections), like ``docker compose build`` (the build cache makes an unchanged one
    cheap); ``offline`` contexts only when the image can't be pulled and is not already
    present. Build args: the compose file's, and ``VERSION`` = the image's tag. The services
    in ``updated`` also get the versions the update suites deploy (``build_variants``).

    Raises:
        ImageBuildError: images neither present, buildable nor pullable: names each service.
    """
    plan = ImagePlan()
    recipes = {
        **(builds or {}),
        **{service: compose.Build(context=context) for service, context in build.items()},
    }

    def prepare(service: str) -> list[str] | None:
        """The refs ``service`` brings to the nodes; None when its image is neither present,
        buildable nor pullable."""
        ref = service_images[service]
        tag = ref.rpartition(":")[2] if ":" in ref.rsplit("/", 1)[-1] else "latest"
        recipe = recipes.get(service)
        if recipe is not None:
            build_image(
                client,
                recipe.context,
                [ref],
                dockerfile=recipe.dockerfile,
                target=recipe.target,
                buildargs={"VERSION": tag, **recipe.args},
                what=service,
                progress=progress,
            )
        elif image_exists(client, ref) and not _is_standin(client, ref):
            pass
        elif service in offline:
            if not _pull(client, ref):  # a real image where a registry answers
                build_image(
                    client,
                    offline[service],
                    [ref],
                    buildargs={"VERSION": tag},
                    labels={STANDIN_LABEL: service},
                    what=service,
                    progress=progress,
                )
                plan.standins[service] = ref
        elif not _pull(client, ref):
            return None
        return [ref, *(build_variants(client, recipe, ref, progress) if service in updated else [])]

    # what is built first: a service may run the image another service's build makes
    order = sorted(service_images, key=lambda service: (service not in recipes, service))
    # Recipes of different kinds build side by side: one build mostly keeps one core busy
    # (unpacking packages, committing a layer). Those of a kind share their first steps through
    # the build cache, so they build one after another.
    kinds = recipe_kinds({service: recipes[service] for service in order if service in recipes})
    prepared: dict[str, list[str] | None] = {}
    if len(kinds) > 1:
        with ThreadPoolExecutor(max_workers=BUILDS_AT_ONCE, thread_name_prefix="swarm-build") as pool:
            started = [pool.submit(lambda kind: {s: prepare(s) for s in kind}, kind) for kind in kinds]
        for future in started:
            prepared.update(future.result())  # the first kind's error, raised here
    missing: list[str] = []  # services whose image is neither present, buildable nor pullable
    for service in order:
        refs = prepared[service] if service in prepared else prepare(service)
        if refs is None:
            missing.append(service)
        else:
            plan.refs += refs
    if missing:  # every one at once: a team fixes them together
        raise ImageBuildError(
            "images neither on the local engine nor pullable: build each (docker build -t IMAGE ...), "
            "give it a build: section in the compose file, or name its build context in the ini key "
            "swarm_build (SERVICE=path/to/context; swarm_offline_images for a stand-in used only "
            "where the image can't be pulled):\n"
            + "\n".join(f"  {service}: {service_images[service]}" for service in sorted(missing))
        )
    return plan


def recipe_kinds(recipes: Mapping[str, compose.Build]) -> list[list[str]]:
    """The services grouped by kind of recipe, each group and the groups in order: recipes of a
    kind begin with the same instructions up to their first ``RUN`` (the step the build cache
    then shares)."""
    kinds: dict[str, list[str]] = {}
    for service, recipe in recipes.items():
        try:
            text = (recipe.context / recipe.dockerfile).read_text()
        except OSError:
            text = service  # build_image names the missing recipe
        kinds.setdefault(_opening(text), []).append(service)
    return list(kinds.values())


def _opening(dockerfile: str) -> str:
    """The instructions up to the first ``RUN`` and its continuation lines, comments and
    spacing aside."""
    lines = [ln.strip() for ln in dockerfile.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    opening: list[str] = []
    in_run = False
    for line in lines:
        if in_run and not opening[-1].endswith("\\"):
            break
        opening.append(" ".join(line.split()))
        in_run = in_run or line.upper().startswith("RUN ")
    return "\n".join(opening)


VARIANTS = {"next": {}, "broken": {"BROKEN": "1"}}  # suffix -> extra build args
VARIANT_LABEL = "io.pytest-swarm.variant"


def variant_ref(ref: str, variant: str) -> str:
    """``reddit/ui:1.0`` -> ``reddit/ui:1.0-next``: the image a suite updates to."""
    base = ref.partition("@")[0]
    last = base.rsplit("/", 1)[-1]
    return f"{base}-{variant}" if ":" in last else f"{base}:latest-{variant}"


def build_variants(
    client: docker.DockerClient, recipe: compose.Build | None, ref: str, progress: Progress = _quiet
) -> list[str]:
    """The versions of ``ref`` the update suites deploy: ``-next`` (the same program, another
    image) and, where its recipe opts in by declaring ``ARG BROKEN``, ``-broken`` (built with
    ``BROKEN=1``: it runs but fails its own healthcheck, as a bad release does).

    Without that recipe, ``-next`` is ``ref`` with one more label, and a failing version is
    made by the suite itself (the update sets a healthcheck that never passes). Both differ
    from ``ref`` only in their last layers: cheap to build and to load on every node.
    """
    recipe_text = (recipe.context / recipe.dockerfile).read_text() if recipe is not None else ""
    if recipe is None or not re.search(r"^\s*ARG\s+BROKEN\b", recipe_text, re.M):
        target = variant_ref(ref, "next")
        _derive(client, ref, target, progress)
        return [target]
    refs = []
    for variant, extra in VARIANTS.items():
        target = variant_ref(ref, variant)
        version = target.rpartition(":")[2]
        build_image(
            client,
            recipe.context,
            [target],
            dockerfile=recipe.dockerfile,
            target=recipe.target,
            buildargs={"VERSION": version, **recipe.args, **extra},
            what=target,
            progress=progress,
        )
        refs.append(target)
    return refs


def _derive(client: docker.DockerClient, ref: str, target: str, progress: Progress) -> None:
    """``target``: ``ref`` with a label of its own (a new image id; nothing else changes)."""
    recipe = f"FROM {ref}\nLABEL {VARIANT_LABEL}={target.rpartition('-')[2]}\n".encode()
    before = client.images.get(target).id if image_exists(client, target) else None
    try:
        for chunk in client.api.build(fileobj=io.BytesIO(recipe), tag=target, rm=True, decode=True):
            if "error" in chunk:
                raise ImageBuildError(f"making {target} from {ref} failed: {chunk['error'].strip()}")
    except docker.errors.APIError as exc:
        raise ImageBuildError(f"making {target} from {ref} failed: {exc}") from exc
    if client.images.get(target).id != before:
        progress(f"made {target} from {ref}")


def _is_standin(client: docker.DockerClient, ref: str) -> bool:
    try:
        labels = client.images.get(ref).labels or {}
    except docker.errors.ImageNotFound:
        return False
    return STANDIN_LABEL in labels


def _pull(client: docker.DockerClient, ref: str) -> bool:
    try:
        client.images.pull(ref)
    except docker.errors.APIError:
        return False
    return True


def load_image_file(client: docker.DockerClient, tar: Path) -> None:
    """``docker load`` a tar written by save_images into the engine of ``client``."""
    with open(tar, "rb") as handle:
        # The answer is a stream: read it to the end, or the engine may stop loading half-way.
        for chunk in client.api.load_image(handle, quiet=True):
            if isinstance(chunk, dict) and chunk.get("error"):
                raise ImageBuildError(f"docker load of {tar.name} failed: {chunk['error']}")
