"""machine, the docker-machine layer (testable without a cloud): the command lines (create, ip,
inspect, rm, ls), the classification of its errors (quota, rate limits, 5xx and timeouts are
retried with backoff; auth and invalid arguments are not), and the record of which machines THIS
run created (``machine.json`` in the run folder; only those are ever removed). A create takes
minutes: its output is read as it comes and the run's heartbeat tells its last line.

Credentials come only from the environment (GOOGLE_APPLICATION_CREDENTIALS) or docker-machine's
own store; none is read or printed here.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import IO, Any

import tenacity

from .. import images
from ..errors import ConvergenceTimeout, ProvisioningError
from ..ownership import MACHINE_STATE_FILE, Session, is_kept, owner_alive, remove_run_dir, run_root
from ..waiting import Poll, wait_for
from .base import parallel
from .remote_access import Remote

STATE_FILE = MACHINE_STATE_FILE
CREATE_TIMEOUT = 900.0  # a GCE machine with docker installed by the provisioner: minutes
QUERY_TIMEOUT = 60.0
# Substrings of docker-machine's stderr (lower-cased) that name a passing cloud condition.
TRANSIENT_MARKS = (
    "quota",
    "ratelimit",
    "rate limit",
    "rate_limit",
    "too many requests",
    "error 429",
    "error 500",
    "error 502",
    "error 503",
    "error 504",
    "backend error",
    "service unavailable",
    "temporarily unavailable",
    "timeout",
    "timed out",
    "deadline exceeded",
    "connection reset",
    "connection refused",
    "try again",
)
# ... and that mean retrying cannot help (checked first: an auth error is never retried).
PERMANENT_MARKS = (
    "could not find default credentials",
    "invalid_grant",
    "unauthorized",
    "error 401",
    "permission denied",
    "does not have permission",
    "invalid value",
    "invalid argument",
    "is not valid",
    "already exists",
    "not found",
)


class MachineError(ProvisioningError):
    """docker-machine failed; ``stderr`` says why (never credentials: it holds none)."""

    def __init__(self, message: str, stderr: str = "") -> None:
        super().__init__(message)
        self.stderr = stderr


class TransientMachineError(MachineError):
    """A cloud condition that passes (quota, rate limit, 5xx, timeout): retried with backoff."""


def is_transient(stderr: str) -> bool:
    """Classify docker-machine's stderr: True for what a retry may get past."""
    text = stderr.lower()
    if any(mark in text for mark in PERMANENT_MARKS):
        return False
    return any(mark in text for mark in TRANSIENT_MARKS)


def _read_lines(stream: IO[str] | None, lines: list[str], last: list[str]) -> None:
    """Collect ``stream``'s lines until it ends; ``last[0]``: the latest one that says something."""
    if stream is None:
        return
    for line in stream:
        lines.append(line)
        if line.strip():
            last[0] = line.strip()[:200]


class MachineCli:
    """The docker-machine executable: one method per subcommand, a timeout on every call."""

    def __init__(self, executable: str = "docker-machine", environ: Mapping[str, str] | None = None) -> None:
        self.executable = executable
        self.environ = dict(os.environ if environ is None else environ)

    def run(self, args: Sequence[str], timeout: float = QUERY_TIMEOUT) -> str:
        argv = [self.executable, *args]
        try:
            result = subprocess.run(
                argv, capture_output=True, text=True, timeout=timeout, env=self.environ, check=False
            )
        except FileNotFoundError as exc:
            raise self._missing() from exc
        except subprocess.TimeoutExpired as exc:
            raise TransientMachineError(
                f"`{shlex.join(argv)}` did not finish within {timeout:g} s", "timed out"
            ) from exc
        return self._checked(argv, result.returncode, result.stdout, result.stderr)

    def run_watched(self, args: Sequence[str], what: str, timeout: float) -> str:
        """``run`` for a call that takes minutes: its output is read as it comes, and every
        ``waiting.HEARTBEAT`` s the run's heartbeat tells ``what`` is awaited and the last line
        docker-machine wrote (e.g. "(worker-1) Waiting for the instance to be running")."""
        argv = [self.executable, *args]
        try:
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                env=self.environ,
            )
        except FileNotFoundError as exc:
            raise self._missing() from exc
        out: list[str] = []
        err: list[str] = []
        last = ["no output yet"]
        readers = [
            threading.Thread(target=_read_lines, args=(stream, lines, last), daemon=True)
            for stream, lines in ((proc.stdout, out), (proc.stderr, err))
        ]
        for reader in readers:
            reader.start()
        try:
            wait_for(lambda: Poll(proc.poll() is not None, last[0]), what=what, timeout=timeout, interval=0.5)
        except ConvergenceTimeout as exc:
            raise TransientMachineError(
                f"`{shlex.join(argv)}` did not finish within {timeout:g} s; its last line: {last[0]}",
                "timed out",
            ) from exc
        finally:
            if proc.poll() is None:  # timed out or interrupted: the call this run started ends
                proc.kill()
                proc.wait(10)
            for reader in readers:
                reader.join(5)  # a grandchild holding the pipe open must not hold the run
        return self._checked(argv, proc.returncode, "".join(out), "".join(err))

    def _missing(self) -> MachineError:
        return MachineError(
            f"{self.executable} is not installed (or not on PATH); install docker-machine "
            "(see the README: Real clusters) or choose another --swarm-provider"
        )

    @staticmethod
    def _checked(argv: Sequence[str], returncode: int, stdout: str, stderr: str) -> str:
        """``stdout`` of a call that exited 0; else the error its stderr classifies."""
        if returncode != 0:
            said = (stderr.strip() or stdout.strip())[-2000:]
            kind = TransientMachineError if is_transient(said) else MachineError
            raise kind(f"`{shlex.join(argv)}` exited {returncode}: {said}", said)
        return stdout

    def create(self, name: str, flags: Sequence[str]) -> None:
        self.run_watched(["create", *flags, name], f"docker-machine create {name}", CREATE_TIMEOUT)

    def ip(self, name: str) -> str:
        return self.run(["ip", name]).strip()

    def inspect(self, name: str) -> dict[str, Any]:
        found: dict[str, Any] = json.loads(self.run(["inspect", name]))
        return found

    def rm(self, name: str) -> None:
        self.run(["rm", "-y", "-f", name], timeout=CREATE_TIMEOUT)

    def ls(self) -> list[str]:
        return [n for n in self.run(["ls", "-q"]).split() if n]


def create_flags(
    *,
    driver: str,
    project: str,
    zone: str,
    machine_type: str,
    image: str,
    engine_labels: Mapping[str, str],
    extra: Sequence[str],
) -> list[str]:
    """The ``docker-machine create`` flags of one machine (the name comes last, added by create)."""
    flags = ["--driver", driver]
    if driver == "google":
        if project:
            flags += ["--google-project", project]
        flags += [
            "--google-zone",
            zone,
            "--google-machine-type",
            machine_type,
            "--google-machine-image",
            image,
        ]
    for key, value in sorted(engine_labels.items()):
        flags += ["--engine-label", f"{key}={value}"]
    return [*flags, *extra]


class MachineState:
    """Which machines this run created (or began to create): ``<run dir>/machine.json``."""

    def __init__(self, session_id: str) -> None:
        self.path = run_root() / session_id / STATE_FILE
        self._lock = threading.Lock()

    def read(self) -> dict[str, Any]:
        try:
            record: dict[str, Any] = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {"created": [], "swarm_formed_on": []}
        return record

    def _write(self, record: Mapping[str, Any]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(record, indent=2))
        tmp.replace(self.path)

    @property
    def created(self) -> list[str]:
        return list(self.read().get("created", []))

    def add(self, key: str, name: str) -> None:
        """Record ``name`` under ``key`` BEFORE acting: a crash mid-create still leaves its record."""
        with self._lock:
            record = self.read()
            if name not in record.setdefault(key, []):
                record[key].append(name)
            self._write(record)

    def forget(self, key: str, name: str) -> None:
        with self._lock:
            record = self.read()
            record[key] = [n for n in record.get(key, []) if n != name]
            self._write(record)


def retrying(attempts: int, backoff: float, sleep: Callable[[float], None]) -> tenacity.Retrying:
    """Transient docker-machine errors only, exponential backoff, bounded in count and time."""
    return tenacity.Retrying(
        retry=tenacity.retry_if_exception_type(TransientMachineError),
        stop=tenacity.stop_after_attempt(attempts) | tenacity.stop_after_delay(CREATE_TIMEOUT * attempts),
        wait=tenacity.wait_exponential(multiplier=backoff, max=120),
        sleep=sleep,
        reraise=True,
    )


class Machines:
    """The docker-machine layer: create / remove the run's machines, and read how to reach them."""

    def __init__(
        self,
        session: Session,
        cli: MachineCli,
        flags: Callable[[str], list[str]],
        progress: images.Progress,
        attempts: int = 4,
        backoff: float = 10.0,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.session = session
        self.cli = cli
        self.flags = flags  # node name -> its create flags
        self.progress = progress
        self.state = MachineState(session.id)
        self.attempts = attempts
        self.backoff = backoff
        self.sleep = sleep

    def create(self, name: str) -> None:
        """Create ``name``, retrying transient cloud errors; a half-made machine is removed first."""
        self.session.make_run_dir()
        self.state.add("created", name)
        for attempt in retrying(self.attempts, self.backoff, self.sleep):
            with attempt:
                number = attempt.retry_state.attempt_number
                if number > 1:
                    self.progress(
                        f"{name}: retrying docker-machine create (attempt {number}/{self.attempts})"
                    )
                    self._remove_quietly(name)
                self.cli.create(name, self.flags(name))
        self.progress(f"machine {name} created")

    def create_all(self, names: Sequence[str]) -> None:
        parallel(self.create, names)

    def _remove_quietly(self, name: str) -> None:
        try:
            self.cli.rm(name)
        except MachineError:
            pass  # nothing (or nothing usable) was made: create starts afresh

    def remove(self, name: str) -> None:
        """Remove a machine this run created; any other is refused."""
        if name not in self.state.created:
            raise ProvisioningError(
                f"machine {name} was not created by this run ({self.session.id}); it is never removed"
            )
        try:
            self.cli.rm(name)
        except MachineError as exc:
            if "not exist" not in exc.stderr.lower():
                raise
        self.state.forget("created", name)

    def remove_created(self) -> list[str]:
        """Remove every machine this run created; returns what could not be removed."""
        problems: list[str] = []

        def remove(name: str) -> None:
            try:
                self.remove(name)
            except MachineError as exc:
                problems.append(f"machine {name}: {exc}")

        parallel(remove, self.state.created)
        return problems

    def remote(self, name: str, options: Sequence[str] = ()) -> Remote:
        """How the test runner reaches ``name`` over ssh: its address, docker-machine's ssh user,
        port and key (``docker-machine ip`` and ``inspect``); ``options``: more ssh options."""
        address = self.cli.ip(name)
        driver = self.cli.inspect(name).get("Driver") or {}
        user = str(driver.get("SSHUser") or "docker-user")
        port = int(driver.get("SSHPort") or 22)
        key = str(driver.get("SSHKeyPath") or "")
        if not key and driver.get("StorePath"):
            key = str(Path(str(driver["StorePath"])) / "machines" / name / "id_rsa")
        return Remote(name, address, user, port, key, tuple(options))


def remove_session(session_id: str, cli: MachineCli | None = None, remove_folder: bool = True) -> list[str]:
    """Remove the machines a (kept or crashed) run recorded as created, then its run folder."""
    session = Session(id=session_id, owner="")
    machines = Machines(session, cli or MachineCli(), lambda _name: [], lambda _line: None)
    problems = machines.remove_created()
    if not problems and remove_folder:
        remove_run_dir(session_id)
    return problems


def sweep(
    progress: images.Progress,
    cli: MachineCli | None = None,
    remove: Callable[[str], list[str]] | None = None,
) -> list[str]:
    """Remove the machines of earlier runs whose owner is gone and that were not kept
    (``remove(session_id)``: what removes one run, by default its created machines)."""
    swept: list[str] = []
    root = run_root()
    if not root.is_dir():
        return swept
    for folder in sorted(root.iterdir()):
        if not (folder / STATE_FILE).is_file() or is_kept(folder.name):
            continue
        try:
            owner = (folder / "owner").read_text().strip()
        except OSError:
            owner = ""
        if owner_alive(owner):
            continue
        problems = remove(folder.name) if remove is not None else remove_session(folder.name, cli)
        if problems:
            progress(f"sweep: machines of run {folder.name} not removed: {'; '.join(problems)}")
        else:
            swept.append(folder.name)
    if swept:
        progress(f"swept the machines earlier runs left: sessions {', '.join(swept)}")
    return swept
