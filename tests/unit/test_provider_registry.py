"""The providers' one door: the registry's names, each class held to the Provider protocol, and
the import graph that keeps providers siblings (no engine is asked)."""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import pytest

from pytest_swarm import options, settings
from pytest_swarm.errors import ProvisioningError
from pytest_swarm.ownership import RUN_ROOT_ENV, Session
from pytest_swarm.providers import registry
from pytest_swarm.providers.base import Provider, ProviderRun
from pytest_swarm.providers.registry import NAMES, provider_class

PACKAGE = Path(settings.__file__).parent
PROVIDERS = PACKAGE / "providers"
# Modules every provider may use; the others in providers/ are providers or a provider's parts.
# local_nodes: the skeleton of dind and uml; remote_*: hosts over ssh, of the ssh and machine providers;
# processes: recorded processes and the ssh socket forward, of uml, ssh and machine.
SHARED = {
    "base",
    "engines",
    "local_nodes",
    "processes",
    "remote_access",
    "remote_nodes",
    "remote_state",
    "registry",
    "__init__",
}
CAPABILITIES = {
    "name": str,
    "owns_swarm": bool,
    "can_change_nodes": bool,
    "fixed_nodes_reason": str,
    "joins_networks_first": bool,
    "preloads_images": bool,
    "gives_labels": tuple,
    "second_cluster_cost": str,
}


def test_the_provider_option_offers_the_registry_names() -> None:
    assert settings.PROVIDERS == NAMES == ("dind", "uml", "machine", "attach", "ssh")
    option = options.OPTIONS_BY_NAME["provider"]
    assert option.default == NAMES[0]
    assert all(name in option.help for name in NAMES)
    with pytest.raises(settings.SettingsError, match="dind, uml, machine, attach, ssh"):
        settings.resolve({"provider": "vagrant"}, {}, {}, Path.cwd())


def test_an_unknown_name_is_refused_naming_the_known_ones() -> None:
    with pytest.raises(ProvisioningError, match="no provider is called 'vagrant' \\(known: dind, uml"):
        provider_class("vagrant")


@pytest.mark.parametrize("name", NAMES)
def test_each_provider_meets_the_protocol(name: str) -> None:
    kind = provider_class(name)
    assert kind.name == name
    for attribute, expected in CAPABILITIES.items():
        assert isinstance(getattr(kind, attribute), expected), attribute
    assert set(kind.gives_labels) <= {"node", "engine"}
    assert kind.can_change_nodes or kind.fixed_nodes_reason, "a provider that can't change nodes says why"
    protocol_methods = {
        n
        for n, v in vars(Provider).items()
        if not n.startswith("_") and (callable(v) or isinstance(v, classmethod))
    }
    for method in protocol_methods:
        assert callable(getattr(kind, method)), method
    for method in ("remove_session", "sweep"):  # asked of the class, before (or without) a run
        assert inspect.ismethod(getattr(kind, method)), f"{name}.{method} is a classmethod"
    assert next(iter(inspect.signature(kind).parameters)) == "run"  # Kind(ProviderRun)


def test_what_each_provider_can_do() -> None:
    """The capabilities the lifecycle and fixtures act on, as they were before they were asked of
    the protocol (a change here changes what a run does)."""
    table = {
        name: (k.owns_swarm, k.can_change_nodes, k.joins_networks_first, k.preloads_images, k.gives_labels)
        for name in NAMES
        for k in [provider_class(name)]
    }
    assert table == {
        "dind": (True, True, True, False, ("node", "engine")),
        "uml": (True, True, False, True, ("node", "engine")),
        "machine": (True, True, True, False, ("node",)),
        "attach": (False, False, False, True, ()),
        "ssh": (False, False, False, False, ("node",)),
    }


def test_only_dind_brings_up_a_second_cluster_by_default() -> None:
    """The disruptive suite's cluster of its own: dind's costs seconds; the others say what theirs costs."""
    costs = {name: provider_class(name).second_cluster_cost for name in NAMES}
    assert costs["dind"] == ""
    assert all(costs[name] for name in NAMES if name != "dind")


def test_attach_removes_only_its_record(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(RUN_ROOT_ENV, str(tmp_path))
    session = Session.new()
    session.make_run_dir()
    kind = provider_class("attach")

    def no_engine() -> None:
        raise AssertionError("attach asks no local engine to remove or sweep")

    assert kind.remove_session(session.id, no_engine) == []  # type: ignore[arg-type]
    assert not session.run_dir.exists()
    assert kind.sweep(lambda _line: None, no_engine) == []  # type: ignore[arg-type]


def test_a_provider_is_built_from_settings_and_the_run(tmp_path: Path) -> None:
    resolved = settings.resolve({"provider": "attach", "workers": "3", "timeout": "7"}, {}, {}, tmp_path)
    run = ProviderRun(resolved, Session.new(), lambda _line: None)
    provider = provider_class("attach")(run)
    assert (provider.name, provider.can_change_nodes) == ("attach", False)


def _imports(path: Path) -> set[str]:
    """The pytest_swarm modules ``path`` imports, as dotted names relative to the package."""
    package = path.parent.relative_to(PACKAGE.parent).parts
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = ".".join(package[: len(package) - node.level + 1])
            target = f"{base}.{node.module}" if node.module else base
            found |= {target} if node.module else {f"{base}.{alias.name}" for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("pytest_swarm"):
            found.add(str(node.module))
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("pytest_swarm")}
    return found


def _provider_modules(imports: set[str]) -> set[str]:
    prefix = "pytest_swarm.providers."
    return {m[len(prefix) :] for m in imports if m.startswith(prefix)} - SHARED


@pytest.mark.parametrize("path", sorted(PROVIDERS.glob("*.py")), ids=lambda p: p.stem)
def test_no_provider_imports_another(path: Path) -> None:
    """A provider imports only the shared modules and its own parts (uml: uml_*; machine: machine_cli)."""
    own = path.stem.split("_")[0]
    others = {m for m in _provider_modules(_imports(path)) if m.split("_")[0] != own}
    assert others == set(), f"{path.name} imports {sorted(others)}"


@pytest.mark.parametrize("name", ["lifecycle.py", "fixtures.py", "settings.py", "__main__.py"])
def test_the_rest_of_the_package_uses_the_door(name: str) -> None:
    assert _provider_modules(_imports(PACKAGE / name)) == set()


def test_the_registry_imports_no_provider_until_asked() -> None:
    assert _provider_modules(_imports(Path(registry.__file__))) == set()
