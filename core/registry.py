"""The plugin manager: built-ins and third-party plugins registered through one path.

Built-ins are listed in :data:`DEFAULT_PLUGINS` (module names) and loaded exactly like
third-party plugins, which come from the ``modelwire`` entry-point group (set
``MODELWIRE_DISABLE_ENTRYPOINTS=1`` to skip those). A plugin that fails to import or register,
or that implements a hook no spec declares (a misspelt hook would otherwise never be called),
is recorded with its name and error and logged; the others still load, so ``modelwire plugins``
can list everything. Building a :class:`~modelwire.Client` then fails naming every broken
plugin (:meth:`Registry.raise_failures`): running without a plugin is a choice the config makes
explicitly, with ``disable_plugins``.
"""

from __future__ import annotations

import difflib
import functools
import importlib
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from functools import lru_cache
from importlib.metadata import EntryPoint, entry_points
from operator import itemgetter
from typing import Any

import pluggy

from . import hookspecs
from .errors import ConfigurationError, PluginError

__all__ = [
    "COMMAND_PLUGINS", "DEFAULT_PLUGINS", "ENTRYPOINT_GROUP", "FastHook", "HookRelay", "PluginManager", "Registry",
    "build_registry",
]

ENTRYPOINT_GROUP = "modelwire"

DEFAULT_PLUGINS: list[str] = [
    "modelwire.providers.openai",
    "modelwire.providers.azure",
    "modelwire.providers.openai_compatible",
    "modelwire.plugins.logging",
    "modelwire.plugins.cost",
    "modelwire.plugins.stats",
    "modelwire.plugins.streaming",
    "modelwire.plugins.ratelimit",
    "modelwire.plugins.retry",
    "modelwire.plugins.fallback",
    "modelwire.plugins.circuit",
    "modelwire.plugins.cache",
    "modelwire.plugins.budget",
    "modelwire.plugins.otel",
    "modelwire.plugins.prometheus",
]

#: The built-ins that add ``modelwire`` subcommands: the CLI builds its parser from these and the
#: entry-point plugins only (``build_registry(builtins=COMMAND_PLUGINS, commands_only=True)``), so
#: ``modelwire --help`` does not import the providers (httpx, pydantic models: most of its time).
#: A test keeps this list equal to what the built-ins register.
COMMAND_PLUGINS: list[str] = [
    "modelwire.plugins.stats",
    "modelwire.plugins.ratelimit",
    "modelwire.plugins.cache",
    "modelwire.plugins.budget",
]


class PluginManager(pluggy.PluginManager):
    """pluggy's manager, counting every change to what is registered (``generation``), so that
    :class:`FastHook` resolves a hook's implementations once per change instead of per call."""

    generation = 0
    #: call monitors in place (``add_hookcall_monitoring``, ``enable_tracing``)
    monitors = 0

    def register(self, plugin: object, name: str | None = None) -> str | None:
        try:
            return super().register(plugin, name)
        finally:
            self.generation += 1

    def unregister(self, plugin: object | None = None, name: str | None = None) -> Any:
        try:
            return super().unregister(plugin, name)
        finally:
            self.generation += 1

    def add_hookcall_monitoring(self, before: Any, after: Any) -> Callable[[], None]:
        undo = super().add_hookcall_monitoring(before, after)
        self.monitors += 1  # a monitor wraps pluggy's call: FastHook must go through it
        self.generation += 1

        def undo_and_count() -> None:
            undo()
            self.monitors -= 1
            self.generation += 1

        return undo_and_count


class FastHook:
    """Calls one hook's implementations as pluggy would (reverse registration order, tryfirst and
    trylast honoured, None results dropped, ``firstresult`` stops at the first answer, exceptions
    propagate), without pluggy's per-call machinery: a request calls three hooks, each worth
    several microseconds of a cache hit. The plan is rebuilt when the manager's ``generation``
    changes; wrappers, optional arguments and call monitoring go through pluggy itself.

    Other attributes (``get_hookimpls``, ``call_historic``...) are pluggy's ``HookCaller``'s.
    """

    __slots__ = ("_firstresult", "_generation", "_hook", "_plan", "_pm", "name")

    def __init__(self, pm: PluginManager, name: str) -> None:
        self.name = name
        self._pm = pm
        self._hook: Any = getattr(pm.hook, name)
        self._firstresult = False
        self._generation = -1
        self._plan: tuple[_Step, ...] | None = None

    def _resolve(self) -> None:
        spec = self._hook.spec
        self._firstresult = bool(spec is not None and spec.opts.get("firstresult"))
        impls = self._hook.get_hookimpls()
        plain = not self._pm.monitors and not any(
            i.wrapper or i.hookwrapper or i.kwargnames for i in impls
        )
        self._plan = tuple(_step(i.function, tuple(i.argnames)) for i in reversed(impls)) if plain else None
        self._generation = self._pm.generation

    def __call__(self, **kwargs: Any) -> Any:
        if self._generation != self._pm.generation:
            self._resolve()
        plan = self._plan
        if plan is None:
            return self._hook(**kwargs)
        try:
            if self._firstresult:
                for function, arguments, _ in plan:
                    result = function(*arguments(kwargs))
                    if result is not None:
                        return result
                return None
            results = []
            for function, arguments, _ in plan:
                result = function(*arguments(kwargs))
                if result is not None:
                    results.append(result)
            return results
        except KeyError as exc:
            missing = _missing(plan, kwargs)
            if missing is None:
                raise  # raised by an implementation, not by the call
            raise pluggy.HookCallError(f"hook call must provide argument {missing!r} ({self.name})") from exc

    def __getattr__(self, name: str) -> Any:
        return getattr(self._hook, name)


#: One implementation of a plan: the function, what picks its arguments out of the call's keyword
#: arguments (a tuple, in its order), and their names.
_Step = tuple[Callable[..., Any], Callable[[dict[str, Any]], tuple[Any, ...]], tuple[str, ...]]


def _step(function: Callable[..., Any], argnames: tuple[str, ...]) -> _Step:
    # itemgetter picks in C what a list comprehension picked per call (one or more names; an
    # implementation taking none gets an empty tuple)
    if not argnames:
        return function, lambda _kwargs: (), argnames
    if len(argnames) == 1:
        pick = itemgetter(argnames[0])
        return function, lambda kwargs: (pick(kwargs),), argnames
    return function, itemgetter(*argnames), argnames


def _missing(plan: tuple[_Step, ...], kwargs: dict[str, Any]) -> str | None:
    """The first argument an implementation takes that the call did not give, if any."""
    return next((name for _, _, argnames in plan for name in argnames if name not in kwargs), None)


class HookRelay:
    """``pm.hook`` with :class:`FastHook` callers: ``relay.modelwire_cache_key(request=...)``."""

    def __init__(self, pm: PluginManager) -> None:
        self._pm = pm

    def __getattr__(self, name: str) -> Any:
        if not name.startswith("modelwire_"):
            return getattr(self._pm.hook, name)
        caller = FastHook(self._pm, name) if hasattr(self._pm.hook, name) else getattr(self._pm.hook, name)
        setattr(self, name, caller)  # later lookups find the attribute without __getattr__
        return caller


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
    #: ``pm.hook`` for callers: a :class:`HookRelay` of fast callers when ``pm`` counts changes.
    hook: Any = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.hook = HookRelay(self.pm) if isinstance(self.pm, PluginManager) else self.pm.hook

    def failure_hint(self) -> str:
        """A sentence naming plugins that failed to load, for errors about missing names."""
        if not self.failures:
            return ""
        return " Plugins that failed to load: " + "; ".join(f"{n}: {e}" for n, e in self.failures.items())

    def raise_failures(self) -> None:
        """Raise :class:`PluginError` naming every plugin that failed to load or register.

        A client must not run silently without a plugin someone installed or passed (a redactor,
        an audit log): the fix is to repair it or to list it in ``disable_plugins``.
        """
        if self.failures:
            names = ", ".join(repr(n) for n in self.failures)
            raise PluginError(
                f"{len(self.failures)} plugin(s) failed to load: "
                + "; ".join(f"plugin {n!r}: {e}" for n, e in self.failures.items())
                + f". Fix them, or run without them: disable_plugins = [{names}]"
            )


@lru_cache(maxsize=1)
def _entry_points() -> tuple[EntryPoint, ...]:
    return tuple(entry_points(group=ENTRYPOINT_GROUP))


def build_registry(
    extra: Iterable[object] = (),
    disable: Iterable[str] = (),
    builtins: Iterable[str] = DEFAULT_PLUGINS,
    commands_only: bool = False,
) -> Registry:
    """Register the built-in plugins, entry-point plugins and ``extra`` plugin objects.

    :param extra: plugin objects or module names registered after the others.
    :param disable: plugin names (module name or entry-point name) not to register.
    :param builtins: the built-in plugin modules to load (all of them but for the CLI's parser).
    :param commands_only: call only ``modelwire_register_commands`` (the CLI's parser): the other
        registration hooks import the providers' and middleware's modules (pydantic, dogpile,
        pyrate-limiter), which ``modelwire --help`` must not pay for.
    """
    pm = PluginManager("modelwire")
    pm.add_hookspecs(hookspecs)
    reg = Registry(pm)
    blocked = set(disable)
    for name in blocked:
        pm.set_blocked(name)
    for module in builtins:
        if module not in blocked:
            _register(reg, module, functools.partial(importlib.import_module, module))
    if os.environ.get("MODELWIRE_DISABLE_ENTRYPOINTS", "") in ("", "0"):
        for ep in _entry_points():
            if ep.name not in blocked:
                _register(reg, ep.name, ep.load)
    extra_names = []
    for plugin in extra:
        name = plugin if isinstance(plugin, str) else _name_of(reg.pm, plugin)
        extra_names.append(name)
        if name not in blocked:
            load: Callable[[Any], object] = importlib.import_module if isinstance(plugin, str) else _same
            _register(reg, name, functools.partial(load, plugin))
    if blocked:
        _check_disabled(blocked, [*DEFAULT_PLUGINS, *(ep.name for ep in _entry_points()), *extra_names])
    if not commands_only:
        _collect(reg, "modelwire_register_providers", reg.providers)
        _collect(reg, "modelwire_register_middleware", reg.middleware)
        _collect(reg, "modelwire_register_demo_steps", reg.demo_steps)
    _collect(reg, "modelwire_register_commands", reg.commands)
    return reg


def _same(plugin: object) -> object:
    return plugin


def _name_of(pm: pluggy.PluginManager, plugin: object) -> str:
    """A readable name for a plugin object (module name, or module.Class of an instance) that
    errors and ``modelwire plugins`` can show; made unique when two instances share a class."""
    name = getattr(plugin, "__name__", None) or f"{type(plugin).__module__}.{type(plugin).__qualname__}"
    other = pm.get_plugin(name)
    return name if other is None or other is plugin else f"{name}@{id(plugin):x}"


def _check_disabled(blocked: set[str], known: list[str]) -> None:
    """A name in ``disable_plugins`` that matches no plugin is a typo that disables nothing."""
    for name in sorted(blocked - set(known)):
        close = difflib.get_close_matches(name, known, n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise ConfigurationError(
            f"config key 'disable_plugins': {name!r} matches no installed plugin ({hint}plugin names: "
            f"{', '.join(sorted(set(known)))})"
        )


_SPECS = sorted(n for n in dir(hookspecs) if n.startswith("modelwire_"))


def _register(reg: Registry, name: str, load: Callable[[], object]) -> None:
    try:
        plugin = load()
        if reg.pm.get_plugin(name) is None and not reg.pm.is_registered(plugin):
            reg.pm.register(plugin, name=name)
            _check_hook_names(reg.pm, plugin, name)
    except Exception as exc:  # a broken plugin must not stop the others from loading
        reg.failures[name] = f"{type(exc).__name__}: {exc}"
        _log_failure(name, reg.failures[name])


def _check_hook_names(pm: pluggy.PluginManager, plugin: object, name: str) -> None:
    """Refuse hook implementations whose name no spec declares (what ``pm.check_pending()``
    finds), per plugin, naming the closest spec; the plugin is unregistered whole."""
    unknown = [
        caller.name
        for caller in pm.get_hookcallers(plugin) or []
        if caller.spec is None
        and any(impl.plugin is plugin and not impl.optionalhook for impl in caller.get_hookimpls())
    ]
    if not unknown:
        return
    pm.unregister(plugin)
    problems = []
    for hook in unknown:
        close = difflib.get_close_matches(hook, _SPECS, n=1, cutoff=0.5)
        problems.append(f"{hook!r} matches no modelwire hook" + (f" (did you mean {close[0]!r}?)" if close else ""))
    raise PluginError(f"plugin {name!r}: " + "; ".join(problems))


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
            _log_failure(impl.plugin_name, reg.failures[impl.plugin_name])


def _log_failure(plugin: str, error: str) -> None:
    # Imported here: structlog (behind modelwire.log) is a fifth of ``modelwire --help``'s time,
    # and only a broken plugin needs it on that path.
    from .log import logger

    logger.error("plugin_failed", plugin=plugin, error=error)
