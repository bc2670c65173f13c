"""The ``budget`` middleware: a cap on USD or tokens per calendar period, off by default.

Enable it by listing it after the cache (hits cost nothing) and before retry (every attempt's
spend is settled)::

    middleware = ["cache", "budget", "retry", "ratelimit"]
    [budget]
    backend = "sqlite"                      # memory | sqlite | redis, as in [ratelimit]
    path = "/var/tmp/modelwire-budget.sqlite"
    limits = [{ match = "openai/*", usd = 50.0, period = "day" }]

Over a cap the request fails with :class:`~modelwire.BudgetExceededError` before any network
call; ``modelwire budget`` shows what is spent. See docs/budget.md.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from modelwire.hookspecs import hookimpl
from modelwire.lazy import lazy_attributes
from modelwire.types import Request

if TYPE_CHECKING:
    from modelwire.middleware import Middleware

    from .config import BudgetConfig, BudgetLimit, BudgetOptions
    from .middleware import BudgetMiddleware

__all__ = ["BudgetConfig", "BudgetLimit", "BudgetMiddleware", "BudgetOptions", "budget_of"]

# The middleware and its config import pydantic and the rate limiter's config (pyrate-limiter):
# loaded when a client registers the middleware, not when ``modelwire --help`` loads the plugin.
__getattr__ = lazy_attributes(__name__, {
    "BudgetConfig": ".config", "BudgetLimit": ".config", "BudgetOptions": ".config",
    "BudgetMiddleware": ".middleware",
})


def budget_of(client: Any) -> BudgetMiddleware | None:
    """The client's budget middleware, None when ``budget`` is not in its ``middleware`` list."""
    from .middleware import BudgetMiddleware

    return next((mw for mw in client.middleware if isinstance(mw, BudgetMiddleware)), None)


@hookimpl
def modelwire_register_middleware(register: Callable[[str, type[Middleware]], None]) -> None:
    from .middleware import BudgetMiddleware

    register("budget", BudgetMiddleware)


@hookimpl
def modelwire_client_created(client: Any) -> None:
    budget = budget_of(client)
    section = client.config.sections.get("budget")
    if budget is None and isinstance(section, dict) and section.get("limits"):
        from modelwire.log import logger

        # Leaving "budget" out of the list is how it is turned off, so this is no error; but caps
        # that look configured and do not apply must not go unnoticed.
        logger.warning("budget.not_enabled", limits=len(section["limits"]),
                       hint='[budget] limits are configured but "budget" is not in the middleware list')
    if budget is not None:
        from modelwire.plugins.cost import CostObserver

        # The same prices as Completion.cost ([prices], then litellm's map), whether or not the
        # cost plugin is enabled; an instance of its own, since the cost plugin's may register later.
        budget.bind_prices(CostObserver(client))


@hookimpl
def modelwire_request_failed(request: Request, error: BaseException) -> None:
    # already imported by modelwire_register_middleware when the client's registry was built
    from .middleware import FAILED, maybe_billed

    failed = request.state.get(FAILED)
    if failed is not None and maybe_billed(error):
        request.state[FAILED] = failed + 1


@hookimpl
def modelwire_register_commands(register: Callable[..., None]) -> None:
    from .cli import run_command, setup_command

    register("budget", "what each budget limit has spent this period and when it resets", setup_command, run_command)
