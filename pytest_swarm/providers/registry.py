"""The one door to the providers: name -> class, and every operation that starts from a name.

Adding a provider is one module (a class meeting ``base.Provider``, built as ``Kind(run)``) and
one line in ``PROVIDERS``. A provider's module is imported only when a run uses it (``settings``
reads the names without importing any).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from ..errors import ProvisioningError

if TYPE_CHECKING:
    from .base import Provider

# name -> "module:class", in the order the names are shown (the first is the default)
PROVIDERS = {
    "dind": "dind:DindProvider",
    "uml": "uml:UmlProvider",
    "machine": "machine:MachineProvider",
    "attach": "attach:AttachProvider",
    "ssh": "ssh:SshProvider",
}
NAMES = tuple(PROVIDERS)


def provider_class(name: str) -> type[Provider]:
    """The class of the provider called ``name``.

    Raises:
        ProvisioningError: no provider has that name (e.g. a record a newer version wrote).
    """
    if name not in PROVIDERS:
        raise ProvisioningError(
            f"no provider is called {name!r} (known: {', '.join(NAMES)}); a run recorded with it "
            "was made by another version of pytest-swarm: remove it with that version"
        )
    module, _, cls = PROVIDERS[name].partition(":")
    kind: type[Provider] = getattr(importlib.import_module(f"{__package__}.{module}"), cls)
    return kind
