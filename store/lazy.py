"""Names a package exports but imports only when first asked for (PEP 562's module ``__getattr__``).

``confledger``, ``confledger.store`` and ``confledger.store.sources`` each promise names whose modules
are heavy (FastAPI, SQLAlchemy, the parsers): importing the package must not load them, so the command
line and the event models start without them.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["lazy_exports"]


def lazy_exports(package: str, homes: Mapping[str, str]) -> Callable[[str], Any]:
    """The module ``__getattr__`` for ``package``: each name in ``homes`` is imported from the module
    named beside it on first use, then kept as a plain attribute of the package."""
    namespace = sys.modules[package].__dict__

    def __getattr__(name: str) -> Any:
        home = homes.get(name)
        if home is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(home), name)
        namespace[name] = value  # later lookups never come back here
        return value

    return __getattr__
