"""The HTTP requests of the direct route, built the way litellm's openai and azure routes build them.

Body: the model, the messages and every parameter the caller or the provider's ``params`` set
(``temperature``, ``tools``, ``response_format``, ``stream_options``...), ``None`` values left
out, ``extra_body`` merged in. Transport settings never reach the body: ``extra_headers`` and
``headers`` become headers, ``extra_query`` the query string (litellm 1.110 sends it inside the
JSON body, which no server reads), ``timeout`` the request's timeout.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import httpx

from modelwire.errors import ModelwireError
from modelwire.types import Request

from ..errors import unbuildable
from ..transport import ATTEMPT_HEADER

if TYPE_CHECKING:
    from ..litellm_base import LiteLLMProvider

__all__ = ["Endpoint"]

# Arguments that configure the call, not the completion (litellm's own ones included, so a
# ``params`` table written for the litellm route sends the same body here).
_NOT_BODY = frozenset({
    "timeout", "extra_headers", "headers", "extra_query", "extra_body", "api_key", "api_base", "api_version",
    "num_retries", "max_retries", "logger_fn", "client", "drop_params", "stream", "model", "messages",
})
#: Configured ``params`` that also apply to embeddings requests (the rest are chat settings).
_TRANSPORT_PARAMS = ("extra_headers", "headers", "extra_query")


class Endpoint:
    """Where one provider instance's requests go and how they authenticate."""

    def __init__(self, provider: LiteLLMProvider) -> None:
        config = provider.config
        self.provider = provider
        self.azure = provider.prefix == "azure"
        if self.azure:
            self.base = f"{str(config.api_base).rstrip('/')}/openai/deployments/"
            self.query: dict[str, str] = {"api-version": str(config.api_version)}
        else:
            self.base = (config.api_base or "https://api.openai.com/v1").rstrip("/") + "/"
            self.query = {}

    def url(self, model: str, path: str) -> str:
        if self.azure:
            return f"{self.base}{quote(model, safe='')}/{path}"
        return self.base + path

    def chat(
        self, http: httpx.AsyncClient, request: Request, *, stream: bool, token: str | None = None
    ) -> httpx.Request:
        """The ``/chat/completions`` request; an unsendable value fails here, before the network."""
        provider = self.provider
        args: dict[str, Any] = {**provider.config.params, **request.params}
        _check_shapes(request, args)
        body: dict[str, Any] = {"model": request.model, "messages": request.messages}
        for key, value in args.items():
            if value is not None and key not in _NOT_BODY:
                body[key] = value
        if stream:
            body["stream"] = True
            if provider.config.stream_usage and body.get("stream_options") is None:
                body["stream_options"] = {"include_usage": True}
        return self._build(http, request, args, body, "chat/completions", token)

    def embeddings(self, http: httpx.AsyncClient, request: Request) -> httpx.Request:
        """The ``/embeddings`` request for ``request.params["input"]``."""
        config = self.provider.config
        args: dict[str, Any] = {k: v for k, v in config.params.items() if k in _TRANSPORT_PARAMS}
        args.update(request.params)
        body = {"model": request.model}
        body.update((k, v) for k, v in args.items() if v is not None and k not in _NOT_BODY)
        return self._build(http, request, args, body, "embeddings", None)

    def _build(
        self, http: httpx.AsyncClient, request: Request, args: dict[str, Any], body: dict[str, Any], path: str,
        token: str | None,
    ) -> httpx.Request:
        extra = args.get("extra_body")
        if isinstance(extra, dict):
            body.update(extra)
        key = self.provider.api_key()
        headers = {"content-type": "application/json", "accept": "application/json"}
        if self.azure:
            headers["api-key"] = key
        else:
            headers["authorization"] = f"Bearer {key}"
        for name in ("headers", "extra_headers"):
            more = args.get(name)
            if isinstance(more, dict):
                headers.update((str(k), str(v)) for k, v in more.items())
        if token is not None:
            headers[ATTEMPT_HEADER] = token
        query = self.query
        extra_query = args.get("extra_query")
        if isinstance(extra_query, dict):
            query = {**query, **{str(k): str(v) for k, v in extra_query.items()}}
        try:
            content = json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()
        except (TypeError, ValueError) as exc:
            error: ModelwireError = unbuildable(
                f"{type(exc).__name__}: {exc}", provider=self.provider.name, model=request.model
            )
        else:
            timeout = args.get("timeout", self.provider.config.timeout)
            return http.build_request(
                "POST", self.url(request.model, path), params=query or None, headers=headers, content=content,
                timeout=timeout if isinstance(timeout, httpx.Timeout) else float(timeout),
            )
        raise error


def _check_shapes(request: Request, args: dict[str, Any]) -> None:
    """Refuse what litellm cannot turn into a request either (validation runs before the
    plugins' ``request_prepare`` hooks, which may still change the request)."""
    problem = None
    for i, message in enumerate(request.messages):
        content = message.get("content") if isinstance(message, dict) else None
        if not isinstance(message, dict):
            problem = f"messages[{i}] is a {type(message).__name__}, not a dict"
        elif isinstance(content, list):
            bad = next((j for j, part in enumerate(content) if not isinstance(part, dict)), None)
            if bad is not None:
                problem = f"messages[{i}].content[{bad}] is a {type(content[bad]).__name__}, not a dict"
        if problem:
            break
    response_format = args.get("response_format")
    if problem is None and response_format is not None and not isinstance(response_format, dict):
        problem = f"response_format is a {type(response_format).__name__}, not a dict"
    if problem is not None:
        raise unbuildable(problem, provider=request.provider, model=request.model)
