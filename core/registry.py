"""The plugin manager: built-ins and third-party plugins registered through one path.

Built-ins are listed in :data:`DEFAULT_PLUGINS` (module names) and loaded exactly like
third-party plugins, which come from the ``modelwire`` entry-point group (set
``MODELWIRE_DISABLE_ENTRYPOINTS=1`` to skip those). A plugin that fails to import or register is
recorded with its name and error and logged; the others carry on.
"""

from __future__ import annotations

import functools
import importlib
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from functools import lru_cache
from importlib.metadata import EntryPoint, entry_points
from typing import Any

import pluggy

from . import hookspecs
from .errors import PluginError
from .log import logger

__all__ = ["DEFAULT_PLUGINS", "ENTRYPOINT_GROUP", "Registry", "build_registry"]

ENTRYPOINT_GROUP = "modelwire"

DEFAULT_PLUGINS: list[str] = [
    "modelwire.providers.openai",
    "modelwire.providers.azure",
    "modelwire.providers.openai_compatible",
    "modelwire.plugins.logging",
    "modelwire.plugins.streaming",
    "modelwire.plugins.ratelimit",
    "modelwire.plugins.retry",
    "modelwire.plugins.fallback",
    "modelwire.plugins.circuit",
    "modelwire.plugins.cache",
    "modelwire.plugins.otel",
]


@dataclass
class Registry:
    """What the plugins registered, and which plugin registered what."""

    pm: pluggy.PluginManager
    providers: dict[str, type[Any]] = field(default_factory=dict)
    middleware: dict[str, type[Any]] = field(default_factory=dict)
    demo_steps: dict[str, Callable[..., Any]] = field(default_factory=dict)
    commands: dict[str, tuple[str, Callable[..., Any], Callable[..., Any]]] = field(default_factory=dict)
    origin: dict[str, str] = field(default_factory=dict)
    failures: dict[str, str] = field(default_factory=dict)

    def failure_hint(self) -> str:
        """A sentence naming plugins that failed to load, for errors about missing names."""
        if not self.failures:
            return ""
        return " Plugins that failed to load: " + "; ".join(f"{n}: {e}" for n, e in self.failures.items())


@lru_cache(maxsize=1)
def _entry_points() -> tuple[EntryPoint, ...]:
    return tuple(entry_points(group=ENTRYPOINT_GROUP))


def build_registry(extra: Iterable[object] = (), disable: Iterable[str] = ()) -> Registry:
    """Register the default plugins, entry-point plugins and ``extra`` plugin objects.

    :param extra: plugin objects or module names registered after the others.
    :param disable: plugin names (module name or entry-point name) not to register.
    """
    pm = pluggy.PluginManager("modelwire")
    pm.add_hookspecs(hookspecs)
    reg = Registry(pm)
    blocked = set(disable)
    for name in blocked:
        pm.set_blocked(name)
    for module in DEFAULT_PLUGINS:
        if module not in blocked:
            _register(reg, module, functools.partial(importlib.import_module, module))
    if os.environ.get("MODELWIRE_DISABLE_ENTRYPOINTS", "") in ("", "0"):
        for ep in _entry_points():
            if ep.name not in blocked:
                _register(reg, ep.name, ep.load)
    for plugin in extra:
        if isinstance(plugin, str):
            _register(reg, plugin, functools.partial(importlib.import_module, plugin))
        else:
            _register(reg, getattr(plugin, "__name__", None) or repr(plugin), functools.partial(_same, plugin))
    _collect(reg, "modelwire_register_providers", reg.providers)
    _collect(reg, "modelwire_register_middleware", reg.middleware)
    _collect(reg, "modelwire_register_demo_steps", reg.demo_steps)
    _collect(reg, "modelwire_register_commands", reg.commands)
    return reg


def _same(plugin: object) -> object:
    return plugin


def _register(reg: Registry, name: str, load: Callable[[], object]) -> None:
    try:
        plugin = load()
        if reg.pm.get_plugin(name) is None and not reg.pm.is_registered(plugin):
            reg.pm.register(plugin, name=name)
    except Exception as exc:  # a broken plugin must not take the others down
        reg.failures[name] = f"{type(exc).__name__}: {exc}"
        logger.warning("plugin_failed", plugin=name, error=reg.failures[name])


def _collect(reg: Registry, hook_name: str, into: dict[str, Any]) -> None:
    """Call one registration hook plugin by plugin, so each name is traced to its plugin."""
    for impl in reversed(getattr(reg.pm.hook, hook_name).get_hookimpls()):
        def register(name: str, *value: Any, _plugin: str = impl.plugin_name) -> None:
            key = f"{hook_name}:{name}"
            if name in into:
                raise PluginError(f"'{name}' registered twice: by {reg.origin[key]} and by {_plugin}")
            into[name] = value[0] if len(value) == 1 else value
            reg.origin[key] = _plugin

        try:
            impl.function(*[register for _ in impl.argnames])
        except PluginError:
            raise
        except Exception as exc:
            reg.failures[impl.plugin_name] = f"{type(exc).__name__} in {hook_name}: {exc}"
            logger.warning("plugin_failed", plugin=impl.plugin_name, error=reg.failures[impl.plugin_name])
