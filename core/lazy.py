"""Public names a package imports only when first used (PEP 562).

``import modelwire`` and ``modelwire --help`` must stay cheap, while the names users import
(``modelwire.Client``, ``modelwire.plugins.cache.CacheConfig``) live in modules that pull
pydantic, dogpile.cache or litellm. A package lists where each name lives and sets the module
``__getattr__``; ``from package import Name`` then works as before::

    __getattr__ = lazy_attributes(__name__, {"CacheConfig": ".config"})

Declare the same names under ``if TYPE_CHECKING:`` so type checkers see their real types.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["lazy_attributes"]


def lazy_attributes(package: str, where: Mapping[str, str]) -> Callable[[str], Any]:
    """A module ``__getattr__`` that imports ``name`` from the module ``where[name]`` names
    (relative to ``package``) on first access and keeps it on the package.

    :param package: the package's ``__name__``.
    :param where: public name -> module holding it, e.g. ``{"CacheConfig": ".config"}``.
    """

    def __getattr__(name: str) -> Any:
        module = where.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module, package), name)
        setattr(sys.modules[package], name, value)  # later lookups find it without this function
        return value

    return __getattr__
