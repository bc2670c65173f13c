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
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .errors import ConfigurationError

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


def validate_section(model: type[BaseModel], data: dict[str, Any], prefix: str) -> Any:
    """Validate ``data`` with ``model``; errors name the full key (``cache.ttl``) and the problem."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            key = ".".join(str(p) for p in (prefix, *err["loc"]) if p != "")
            if err["type"] == "extra_forbidden":
                allowed = ", ".join(sorted(model.model_fields))
                problems.append(f"unknown config key '{key}' (allowed here: {allowed})")
            else:
                problems.append(f"config key '{key}': {err['msg']} (got {err.get('input')!r})")
        raise ConfigurationError("; ".join(problems)) from None


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as f:
            data: dict[str, Any] = tomllib.load(f)
            return data
    except FileNotFoundError:
        raise ConfigurationError(f"config file not found: {path}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigurationError(f"config file {path} is not valid TOML: {exc}") from None
