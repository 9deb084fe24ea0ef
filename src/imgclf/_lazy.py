"""Lazy public names for packages whose implementations pull in heavy dependencies."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any


def lazy_exports(package: str, names: Mapping[str, str]) -> Callable[[str], Any]:
    """A PEP 562 module ``__getattr__``: each public name is imported from its module on first use.

    Args:
        package: The package's ``__name__`` (for the error message).
        names: Public name -> module that defines it.
    """

    def getattr_(name: str) -> Any:
        module = names.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module(module), name)

    return getattr_
