"""The one structlog logger modelwire writes to.

modelwire never configures logging: the host application's structlog (or stdlib logging, when
structlog is set up to forward to it) decides where events go and which levels are kept.
"""

from __future__ import annotations

from typing import Any

import structlog

__all__ = ["logger"]

logger: Any = structlog.get_logger("modelwire")
