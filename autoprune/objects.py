"""``"package.module:attribute"``: how a config names a user's model factory, data, or reward."""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["load_object"]


def load_object(spec: str, *, what: str = "object") -> Any:
    """Import ``spec`` (``"package.module:attribute"``).

    Raises:
        ValueError: one line naming ``what`` was asked for, the module or attribute missing, and the fix.
    """
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise ValueError(f"{what} {spec!r}: expected 'package.module:attribute'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise ValueError(f"{what} {spec!r}: cannot import module {module_name!r} ({e}); check it is installed or on "
                         "PYTHONPATH") from None
    try:
        return getattr(module, attr)
    except AttributeError:
        raise ValueError(f"{what} {spec!r}: module {module_name!r} has no attribute {attr!r}") from None
