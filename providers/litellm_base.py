"""The transport every built-in provider shares: one litellm call per attempt.

litellm is imported on the first real call (``import modelwire`` stays fast) with
``LITELLM_LOCAL_MODEL_COST_MAP=True`` so the import does not reach the network. Every call
passes ``num_retries=0`` and ``max_retries=0``: retrying is modelwire's job, so the number of
upstream calls is exactly what the retry policy says. No litellm global setting is changed.
"""

from __future__ import annotations

import os
import sys
from collections.abc import AsyncIterator
from typing import Any, ClassVar

from modelwire.errors import (
    InvalidResponseError,
    MissingAPIKeyError,
    remember_secret,
)
from modelwire.log import logger
from modelwire.provider import CheckResult, Provider, StreamSettings
from modelwire.types import Chunk, Completion, Request, Usage

from .errors import map_exception

__all__ = ["LiteLLMProvider", "litellm"]

_NO_KEY = "sk-no-key-required"


def litellm() -> Any:
    """The litellm module, imported on first use without a network fetch of its cost map."""
    module = sys.modules.get("litellm")
    if module is None:
        os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
        import litellm as module
    return module


class LiteLLMProvider(Provider):
    """A provider reached through ``litellm.acompletion``.

    Subclasses set :attr:`prefix` (litellm's provider route), :attr:`default_key_env` and
    :attr:`key_required`.
    """

    prefix: ClassVar[str] = "openai"
    default_key_env: ClassVar[str | None] = "OPENAI_API_KEY"
    key_required: ClassVar[bool] = True

    @property
    def key_env(self) -> str | None:
        return self.config.api_key_env or self.default_key_env

    def api_key(self) -> str:
        """The key from the environment; :class:`MissingAPIKeyError` names the variable."""
        env = self.key_env
        key = os.environ.get(env) if env else None
        if key:
            remember_secret(key)
            return key
        if self.key_required or self.config.api_key_env:
            raise MissingAPIKeyError(
                f"provider '{self.name}' needs an API key: set the environment variable {env}",
                provider=self.name,
            )
        return _NO_KEY

    def prepare(self, request: Request) -> None:
        """Pre-flight checks that must fail before any network call."""
        self.api_key()
        if request.stream:
            StreamSettings.resolve(self.config, request.options)  # a bad options["stream"] fails here

    def call_args(self, request: Request) -> dict[str, Any]:
        args: dict[str, Any] = {**self.config.params, **request.params}
        args.update(
            model=f"{self.prefix}/{request.model}",
            messages=request.messages,
            api_key=self.api_key(),
            timeout=args.get("timeout", self.config.timeout),
            num_retries=0,
            max_retries=0,
        )
        if self.config.api_base:
            args["api_base"] = self.config.api_base
        if self.config.api_version:
            args["api_version"] = self.config.api_version
        return args

    async def acomplete(self, request: Request) -> Completion:
        args = self.call_args(request)
        try:
            response = await litellm().acompletion(**args)
        except Exception as exc:
            error = map_exception(exc, provider=self.name, model=request.model)
            error.attempts = request.attempt  # the retry middleware, when enabled, keeps it current
            raise error from None
        return self._completion(response, request)

    def _completion(self, response: Any, request: Request) -> Completion:
        choices = getattr(response, "choices", None)
        if not choices:
            raise InvalidResponseError(
                "the provider answered 200 without any choices",
                provider=self.name,
                model=request.model,
                status=200,
                body=_excerpt(response),
                attempts=request.attempt,
            )
        message = choices[0].message
        tool_calls = [tc.model_dump() for tc in (message.tool_calls or [])]
        usage = getattr(response, "usage", None)
        if usage is not None and usage.prompt_tokens:
            _warn_if_truncated(self.name, request, int(usage.prompt_tokens))
        return Completion(
            text=message.content or "",
            finish_reason=choices[0].finish_reason,
            model=request.model,
            provider=self.name,
            usage=_usage(usage) if usage else None,
            tool_calls=tool_calls,
            raw=response,
        )

    def astream(self, request: Request) -> AsyncIterator[Chunk]:
        """Stream through litellm; faults, timeouts and cleanup: :mod:`modelwire.providers.litellm_stream`."""
        from .litellm_stream import stream_chunks

        return stream_chunks(self, request)

    def check(self) -> CheckResult:
        try:
            headers = self.auth_headers()
        except MissingAPIKeyError as exc:
            return CheckResult(self.name, False, exc.message)
        return check_models(self.name, self.models_url(), headers, self.models_query())

    def models_query(self) -> dict[str, str]:
        return {}

    def models_url(self) -> str:
        return (self.config.api_base or "https://api.openai.com/v1").rstrip("/") + "/models"

    def auth_headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key()}"}


def _excerpt(response: Any) -> str:
    dump = getattr(response, "model_dump_json", None)
    try:
        return str(dump() if dump is not None else response)[:300]
    except Exception:  # an excerpt must never hide the real error
        return type(response).__name__


#: Below this many estimated prompt tokens the estimate is too rough to judge truncation.
_TRUNCATION_MIN_ESTIMATE = 512


def _warn_if_truncated(provider: str, request: Request, prompt_tokens: int) -> None:
    """Warn when the provider counted far fewer prompt tokens than the prompt can hold.

    Ollama's OpenAI endpoint silently cuts prompts longer than its context (2048/4096) and answers
    200. Roughly 4 characters make a token in English; a count under a third of that estimate is
    not tokenizer variance. Skipped for small prompts and for 0 (Ollama reports 0 when cached).
    """
    chars = 0
    for message in request.messages:
        content = message.get("content")
        if isinstance(content, str):
            chars += len(content)
        elif isinstance(content, list):
            chars += sum(len(str(part.get("text", ""))) for part in content if isinstance(part, dict))
    estimate = chars // 4
    if estimate >= _TRUNCATION_MIN_ESTIMATE and prompt_tokens * 3 < estimate:
        logger.warning(
            "llm.prompt_truncated_suspected",
            provider=provider,
            model=request.model,
            prompt_tokens=prompt_tokens,
            estimated_prompt_tokens=estimate,
            hint="the server may have cut the prompt to its context size (Ollama does this with 200 OK)",
        )


def check_models(name: str, url: str, headers: dict[str, str], query: dict[str, str]) -> CheckResult:
    """GET a model listing and turn the outcome into a sentence a person can act on."""
    import httpx

    try:
        response = httpx.get(url, headers=headers, params=query, timeout=10.0)
    except httpx.ConnectError:
        return CheckResult(name, False, f"cannot reach {url}: connection refused or host unknown")
    except httpx.TimeoutException:
        return CheckResult(name, False, f"{url} did not answer within 10 s")
    except httpx.HTTPError as exc:
        return CheckResult(name, False, f"request to {url} failed: {type(exc).__name__}")
    status = response.status_code
    if status == 401:
        return CheckResult(name, False, "the API key was rejected (401): check the key's environment variable")
    if status == 403:
        return CheckResult(name, False, "the API key may not list models here (403)")
    if status == 404:
        return CheckResult(name, False, f"{url} answered 404: check api_base (and api_version on Azure)")
    if status >= 400:
        return CheckResult(name, False, f"{url} answered HTTP {status}")
    try:
        models = [str(m.get("id")) for m in response.json().get("data", [])]
    except (ValueError, AttributeError):
        return CheckResult(name, False, f"{url} answered 200 but not with a JSON model list")
    shown = ", ".join(models[:5]) + (" ..." if len(models) > 5 else "")
    return CheckResult(name, True, f"ok: {len(models)} models available ({shown})", models)
def _usage(usage: Any) -> Usage:
    """litellm's Usage object, with the cached and reasoning details when the provider sent them."""
    prompt_details = getattr(usage, "prompt_tokens_details", None)
    completion_details = getattr(usage, "completion_tokens_details", None)
    cached = getattr(prompt_details, "cached_tokens", None)
    reasoning = getattr(completion_details, "reasoning_tokens", None)
    return Usage(
        usage.prompt_tokens,
        usage.completion_tokens,
        usage.total_tokens,
        int(cached) if cached is not None else None,
        int(reasoning) if reasoning is not None else None,
    )


