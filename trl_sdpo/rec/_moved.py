"""The module-level `__getattr__` of an import path that moved (PEP 562): one place for the deprecated shims."""

from __future__ import annotations

import importlib
import warnings

REMOVED_IN = "0.4.0"


def moved(old: str, *new: str):
    """
    Warn that module `old` moved to the modules `new` (full names) and return a `__getattr__` that looks each name up
    in them, in order.

    Args:
        old (`str`): The deprecated module's `__name__`.
        *new (`str`): Where its names live now.
    """
    places = ", ".join(new)
    warnings.warn(
        f"`{old}` is deprecated and will be removed in {REMOVED_IN}; import from {places} instead.",
        DeprecationWarning,
        stacklevel=3,
    )
    modules = [importlib.import_module(name) for name in new]

    def __getattr__(name: str):
        for module in modules:
            if hasattr(module, name):
                return getattr(module, name)
        raise AttributeError(f"module {old!r} has no attribute {name!r}")

    return __getattr__
