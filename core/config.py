"""Configuration: one TOML file or a dict of the same shape, validated with pydantic.

Where it comes from, first match wins: the ``config`` argument (dict or path), the file named by
``MODELWIRE_CONFIG``, ``./modelwire.toml``, or the defaults. Secrets never live here: a provider
names the environment variable holding its key (``api_key_env``).

Sections other than the core keys belong to plugins: ``[cache]`` is validated by the middleware
registered as ``cache``; a section no plugin claims is an error naming the key.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from types import UnionType
from typing import Any, Union, get_args, get_origin

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .errors import ConfigurationError, ModelwireError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

__all__ = ["CORE_KEYS", "Config", "DEFAULT_MIDDLEWARE", "load_config", "validate_section"]

#: Middleware enabled when the config does not say; first = outermost.
DEFAULT_MIDDLEWARE: list[str] = ["cache", "retry", "ratelimit"]


class Config(BaseModel):
    """The core keys; plugin sections are kept in ``sections`` and validated by their plugin."""

    model_config = ConfigDict(extra="forbid")

    middleware: list[str] = Field(default_factory=lambda: list(DEFAULT_MIDDLEWARE))
    default_model: str | None = None
    providers: dict[str, dict[str, Any]] = Field(default_factory=dict)
    disable_plugins: list[str] = Field(default_factory=list)
    #: Requests whose JSON payload is larger are refused before any network call.
    max_request_bytes: int = Field(8 * 1024 * 1024, gt=0)
    #: ``[prices."provider/model"]`` tables, validated by the ``cost`` plugin (docs/observability.md).
    prices: dict[str, dict[str, Any]] = Field(default_factory=dict)
    #: ``[stats]``, validated by the ``stats`` plugin (docs/observability.md).
    stats: dict[str, Any] = Field(default_factory=dict)
    #: Start the warm-up (``Client.warmup()``: litellm and what the first call needs) in a
    #: background thread as the Client is built, so a script's first call does not wait for it.
    preload: bool = False
    sections: dict[str, Any] = Field(default_factory=dict)
    source: str = "defaults"


CORE_KEYS = set(Config.model_fields) - {"sections", "source"}


def load_config(config: dict[str, Any] | str | os.PathLike[str] | None = None) -> Config:
    """Load and validate the core of a configuration (plugin sections are checked later).

    >>> load_config({"middleware": []}).middleware
    []
    """
    source = "dict"
    if config is None:
        path = os.environ.get("MODELWIRE_CONFIG") or ("modelwire.toml" if Path("modelwire.toml").is_file() else None)
        config, source = ({}, "defaults") if path is None else (_read_toml(Path(path)), str(path))
    elif not isinstance(config, dict):
        source = str(config)
        config = _read_toml(Path(config))
    if not isinstance(config, dict):
        raise ConfigurationError(f"configuration must be a table/dict, got {type(config).__name__}")
    core = {k: v for k, v in config.items() if k in CORE_KEYS}
    sections = {k: v for k, v in config.items() if k not in CORE_KEYS}
    if not isinstance(core.get("providers", {}), dict) or not all(
        isinstance(v, dict) for v in core.get("providers", {}).values()
    ):
        raise ConfigurationError("config key 'providers': expected a table of tables ([providers.<name>])")
    if "MODELWIRE_MODEL" in os.environ and "default_model" not in core:
        core["default_model"] = os.environ["MODELWIRE_MODEL"]
    result: Config = validate_section(Config, {**core, "sections": sections, "source": source}, "")
    return result


def validate_section(
    model: type[BaseModel],
    data: dict[str, Any],
    prefix: str,
    error: type[ModelwireError] = ConfigurationError,
    what: str = "config key",
) -> Any:
    """Validate ``data`` with ``model``; errors name the full key (``cache.ttl``) and the problem.

    Unknown keys are refused at every depth whatever ``model_config`` the model's author wrote
    (pydantic's default silently drops them, which turns a typo into a setting that never
    applies). ``error`` and ``what`` let per-call options reuse this with their own error type.
    """
    try:
        return model.model_validate(data, extra="forbid")
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            key = ".".join(str(p) for p in (prefix, *err["loc"]) if p != "")
            if err["type"] == "extra_forbidden":
                here = _model_at(model, err["loc"][:-1])
                allowed = ", ".join(sorted(here.model_fields)) if here is not None else "?"
                problems.append(f"unknown {what} '{key}' (allowed here: {allowed or 'none'})")
            else:
                problems.append(f"{what} '{key}': {err['msg']} (got {err.get('input')!r})")
        raise error("; ".join(problems)) from None


def _model_at(model: type[BaseModel], loc: tuple[int | str, ...]) -> type[BaseModel] | None:
    """The pydantic model that validates the value at ``loc`` (``limits.2`` -> the limit entry's
    model), so an unknown key is answered with the keys allowed at its own level."""
    current: Any = model
    for part in loc:
        if isinstance(current, type) and issubclass(current, BaseModel):
            field = current.model_fields.get(str(part))
            if field is None:
                return None
            current = _inner(field.annotation)
        else:  # a list index or dict key: step into the container's item type
            args = [a for a in get_args(current) if a is not type(None)]
            current = _inner(args[-1]) if args else None
    return current if isinstance(current, type) and issubclass(current, BaseModel) else None


def _inner(annotation: Any) -> Any:
    """``X | None`` -> X; containers are kept (their item type is taken at the next step)."""
    while get_origin(annotation) in (Union, UnionType):
        args = [a for a in get_args(annotation) if a is not type(None)]
        annotation = args[0] if args else None
    return annotation


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as f:
            data: dict[str, Any] = tomllib.load(f)
            return data
    except FileNotFoundError:
        raise ConfigurationError(f"config file not found: {path}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigurationError(f"config file {path} is not valid TOML: {exc}") from None
