"""The ``modelwire`` command line.

``--help`` stays fast: litellm is imported only by commands that send requests.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from typing import Any

__all__ = ["main"]


def main(argv: list[str] | None = None) -> int:
    from .errors import ModelwireError
    from .registry import COMMAND_PLUGINS, build_registry

    parser = argparse.ArgumentParser(
        prog="modelwire", description="One call to OpenAI, Azure OpenAI and local LLM servers."
    )
    parser.add_argument("--config", help="path to a modelwire.toml (default: $MODELWIRE_CONFIG or ./modelwire.toml)")
    parser.add_argument("-v", "--verbose", action="store_true", help="print modelwire's log events (info and up)")
    parser.add_argument(
        "--log-format", choices=["console", "json"], default="console", help="how log events are printed on stderr"
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("complete", help="complete a prompt and print the answer")
    p.add_argument("prompt")
    p.add_argument("--model", "-m", help="provider/model, e.g. openai/gpt-4o (default: default_model)")
    p.add_argument("--stream", action="store_true", help="print the answer as it arrives")
    p.add_argument("--system", help="a system message")
    p.add_argument("--max-tokens", type=int)
    p.add_argument("--temperature", type=float)
    p.set_defaults(run=_complete)

    p = sub.add_parser("check", help="check that providers are reachable and their keys work")
    p.add_argument("providers", nargs="*", help="provider names (default: all configured)")
    p.set_defaults(run=_check)

    sub.add_parser("plugins", help="installed plugins, provider kinds, middleware and their order").set_defaults(
        run=_plugins
    )
    sub.add_parser("config", help="the effective configuration, secrets masked").set_defaults(run=_config)
    sub.add_parser("demo", help="a tour against the bundled loopback server (no key needed)").set_defaults(run=_demo)

    # the Client builds the whole registry; the parser needs only the commands
    commands = build_registry(builtins=COMMAND_PLUGINS, commands_only=True).commands
    for name, (help_text, setup, run) in commands.items():
        p = sub.add_parser(name, help=help_text)
        setup(p)
        p.set_defaults(run=run)

    args = parser.parse_args(argv)
    _configure_output(args.verbose, args.log_format)
    try:
        from .client import Client

        client = None if args.run is _demo else Client(config=args.config)
        try:
            code: int = args.run(client, args)
        finally:
            if client is not None:
                client.close()  # writes what middleware keep for other processes (file cache counters)
        return code
    except ModelwireError as exc:
        print(f"error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


def _configure_output(verbose: bool, log_format: str = "console") -> None:
    """The CLI is an application, so it may configure logging for its own process (the library
    never does): modelwire's events go to stderr, errors only unless ``-v``."""
    import structlog

    renderer: Any = (
        structlog.processors.JSONRenderer() if log_format == "json" else structlog.dev.ConsoleRenderer(colors=False)
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
            foreign_pre_chain=[structlog.stdlib.add_log_level],
        )
    )
    handler.set_name("modelwire-cli")
    std = logging.getLogger("modelwire")
    for old in [h for h in std.handlers if h.get_name() == "modelwire-cli"]:  # main() run twice in one process
        std.removeHandler(old)
    std.addHandler(handler)
    std.setLevel(logging.INFO if verbose else logging.ERROR)
    std.propagate = False


def _complete(client: Any, args: argparse.Namespace) -> int:
    messages: list[dict[str, Any]] = [{"role": "user", "content": args.prompt}]
    if args.system:
        messages.insert(0, {"role": "system", "content": args.system})
    params = {k: v for k, v in (("max_tokens", args.max_tokens), ("temperature", args.temperature)) if v is not None}
    # client.complete/stream validate everything that needs no network (model address, provider,
    # key variable, parameters) before litellm, seconds to import, is loaded by the call itself.
    if args.stream:
        with client.stream(messages, model=args.model, **params) as stream:
            for chunk in stream:
                print(chunk.text, end="", flush=True)
        print()
    else:
        print(client.complete(messages, model=args.model, **params).text)
    return 0


def _check(client: Any, args: argparse.Namespace) -> int:
    names = args.providers or list(client.providers) or ["openai"]
    failed = 0
    for name in names:
        result = client.check(name)
        failed += not result.ok
        print(f"{'ok  ' if result.ok else 'FAIL'} {name}: {result.message}")
    return 1 if failed else 0


def _plugins(client: Any, args: argparse.Namespace) -> int:
    from .middleware import operations

    reg = client.registry
    print("plugins:")
    for name, plugin in reg.pm.list_name_plugin():
        print(f"  {name}" + ("  (disabled by config)" if plugin is None else ""))
    for name, error in reg.failures.items():
        print(f"  {name}  FAILED: {error}")
    print("provider kinds:")
    for kind in sorted(reg.providers):
        print(f"  {kind:<20} from {reg.origin[f'modelwire_register_providers:{kind}']}")
    print("middleware (registered):")
    for name in sorted(reg.middleware):
        state = (
            f"enabled, position {client.config.middleware.index(name) + 1}"
            if name in client.config.middleware
            else "disabled"
        )
        ops = ", ".join(operations(reg.middleware[name]))  # a chat-only one is passed by for embeddings
        origin = reg.origin[f"modelwire_register_middleware:{name}"]
        print(f"  {name:<20} {state:<22} operations: {ops:<17} from {origin}")
    print("middleware order (outermost first): " + (" -> ".join([*client.config.middleware, "provider"])))
    for mw, name in zip(client.middleware, client.config.middleware, strict=True):
        state = mw.describe()
        if state:
            print(f"  {name}: {json.dumps(state, default=str)}")
    return 0


def _config(client: Any, args: argparse.Namespace) -> int:
    from .errors import redact, redact_mapping

    cfg = client.config
    shown: dict[str, Any] = {"source": cfg.source, "middleware": cfg.middleware, "default_model": cfg.default_model}
    providers = {}
    for name, provider in client.providers.items():
        data = provider.config.model_dump(exclude_defaults=False)
        env = getattr(provider, "key_env", None)
        if env:
            data["api_key_env"] = env
            data["api_key"] = "***set***" if os.environ.get(env) else "(unset)"
        providers[name] = data
    shown["providers"] = providers
    for mw, name in zip(client.middleware, cfg.middleware, strict=True):
        if mw.config is not None:
            shown[name] = mw.config.model_dump()
    # credential headers in params, passwords in URLs (an unescaped "@" included), configured keys
    print(redact(json.dumps(redact_mapping(shown), indent=2, default=str)))
    return 0


def _demo(client: Any, args: argparse.Namespace) -> int:
    from .demo import run_demo

    return run_demo()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
